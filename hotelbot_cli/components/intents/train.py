"""Train the intent classifier and publish it: prepared data + settings in, a new immutable registry
version out (optionally incremental from a parent version, optionally with an HPO search first).

It reports progress through ``listener(TrainingEvent)``; nothing here prints.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ..._io import atomic_write_json
from ...config import Settings
from ...data import (
    TRAIN_FILE,
    VALIDATION_FILE,
    Example,
    PreparedData,
    read_jsonl_examples,
    read_prepared,
    write_prepared,
)
from ...data import fingerprint as fingerprint_examples
from ...errors import ConfigError, DataError, HotelbotError
from ...export import DEFAULT_RECHECK_MARGIN, drop_export, export_onnx
from ...registry import ModelRegistry, VersionInfo
from ...runtime import describe_choice
from ...runtime.detector import KNN, MEMORY_FILE, SOFTMAX
from ...runtime.detector import describe as describe_detector
from ...training.classify import SCALAR_METRICS, FitResult, fit_classifier
from ...training.distributed import is_distributed
from ...training.loop import check_precision, training_summary
from ...training.events import Listener, TrainingEvent, emitter
from ...training.hpo import HpoRequest, run_hpo, study_name
from ...training.oos_detector import DetectorChoice, check_mode, choose_for_fit
from ...training.monitor import SystemMonitor, hardware, library_versions
from ...training.tracking import MlflowTracker
from ..base import ComponentResult, TrainRequest, refuse_repeat
from ..compose import publish_version

log = logging.getLogger("hotelbot.training")


class Reporter(Protocol):
    """Writes the training report: into the staged version (returns the report, or None when it failed) and,
    once the version is published, under reports/."""

    def staged(self, staged: Path, metadata: dict[str, Any], registry: ModelRegistry) -> Any: ...

    def published(self, registry: ModelRegistry, name: str, report: Any) -> None: ...


COMPONENT = "classifier"
KIND = "intent-classifier"
EXPERIMENT = "hotelbot-classifier"


def _merge_with_parent(prepared: PreparedData, parent: VersionInfo) -> tuple[list[Example], list[Example]]:
    """New data added to the parent's: union by text; a text may not change its intent."""
    parent_train = read_jsonl_examples(parent.path / "data" / TRAIN_FILE)
    parent_val = read_jsonl_examples(parent.path / "data" / VALIDATION_FILE)
    known = {e.text: e.intent for e in parent_train + parent_val}
    for e in prepared.train + prepared.validation:
        if e.text in known and known[e.text] != e.intent:
            raise DataError(
                f"text {e.text!r} is {e.intent!r} in the new data but {known[e.text]!r} in "
                f"{parent.name}'s data; fix one of them"
            )
    seen = set(known)
    train = parent_train + [e for e in prepared.train if e.text not in seen]
    seen |= {e.text for e in prepared.train}
    validation = parent_val + [e for e in prepared.validation if e.text not in seen]
    return train, validation


def export_inference(
    fit: FitResult,
    model_dir: Path,
    validation: list[Example],
    tolerance_points: float,
    recheck_margin: float | None = None,
    *,
    task_checks: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """ONNX fp32 + int8 export of the staged model and the runtime choice (export.export_onnx; ``options``
    go to it: quantize_embeddings, keep_unchosen).

    The PyTorch weights stay the source of truth: an export failure is logged and the version runs on torch.
    """
    margin = DEFAULT_RECHECK_MARGIN if recheck_margin is None else recheck_margin
    try:
        return export_onnx(
            fit.model,
            fit.tokenizer,
            model_dir,
            validation,
            tolerance_points,
            recheck_margin=margin,
            task_checks=task_checks,
            **options,
        )
    except (HotelbotError, ImportError) as exc:
        log.warning("ONNX export failed (%s); the version runs on torch", exc)
        drop_export(model_dir)  # graphs written before the failure were never measured: none stays
        return {"runtime": "torch", "error": str(exc)}


@dataclass
class ClassifierBuild:
    """What :func:`write_classifier` writes: a fitted classifier (intent-only or joint) and its training's facts."""

    fit: Any  # FitResult (or the joint model's JointFitResult)
    train: list[Example]
    validation: list[Example]
    prepared: PreparedData
    fingerprint: str
    config_record: dict[str, Any]
    hpo_summary: dict[str, Any] | None
    parent: str | None
    cfg: Any  # the TrainingConfig used
    settings: Settings
    tracker: Any
    monitor: Any
    kind: str = KIND
    task_checks: Any = None  # export_onnx's per-task gate (the joint model's sentiment and entities)
    extra_metadata: dict[str, Any] | None = None
    detector: DetectorChoice | None = None  # the out-of-scope detector chosen on validation (None: softmax)


def write_classifier(
    staged: Path,
    carried: dict[str, Any],
    b: ClassifierBuild,
    registry: ModelRegistry,
    reporter: Reporter | None,
    report_box: dict[str, Any],
    emit: Any,
) -> dict[str, Any]:
    """The classifier's files in a staged version (model/ with its ONNX export and runtime choice, data/,
    metrics.json, training_history.json, the training report) and the version's metadata."""
    from ...modeling import save_classifier  # modeling imports torch

    fit, metrics, cfg, settings = b.fit, b.fit.metrics, b.cfg, b.settings
    save_classifier(fit.model, fit.tokenizer, staged / "model")  # the .pt: `hotelbot export --format pt`
    if b.detector is not None and b.detector.memory is not None:  # before the export, whose gate uses it
        import numpy as np  # with torch loaded anyway

        with open(staged / "model" / MEMORY_FILE, "wb") as handle:
            np.save(handle, b.detector.memory, allow_pickle=False)
    split = PreparedData(
        b.train,
        b.validation,
        fit.labels,
        b.fingerprint,
        {
            **b.prepared.summary,
            "train_size": len(b.train),
            "validation_size": len(b.validation),
            "examples": len(b.train) + len(b.validation),
        },
        b.prepared.warnings,
    )
    write_prepared(split, staged / "data")
    atomic_write_json(
        staged / "metrics.json",
        {
            **metrics,
            "argmax": {
                k: fit.argmax_metrics[k]
                for k in SCALAR_METRICS + ("in_scope_accuracy", "out_of_scope_recall")
                if k in fit.argmax_metrics
            },
        },
    )
    atomic_write_json(
        staged / "training_history.json", {"epochs": fit.history, "log": fit.log_history, "hpo": b.hpo_summary}
    )
    emit(TrainingEvent("status", message="exporting ONNX (fp32 + int8) and choosing the runtime"))
    inference = export_inference(
        fit,
        staged / "model",
        b.validation,
        settings.validation.runtime_tolerance_points,
        settings.validation.runtime_recheck_margin,
        task_checks=b.task_checks,
    )
    if "runtimes" in inference:
        emit(TrainingEvent("status", message=describe_choice(inference)))
    metadata = {
        "kind": b.kind,
        "components": carried["components"],
        "carried_over": carried["carried_over"],
        **{k: v for k, v in carried.items() if k not in ("components", "carried_over", "parent")},
        "parent": b.parent,
        "base_model": fit.resolved,
        "labels": fit.labels,
        "out_of_scope_threshold": fit.threshold,
        "out_of_scope_detector": b.detector.record
        if b.detector is not None
        else {"method": SOFTMAX, "threshold": fit.threshold},
        "dataset_fingerprint": b.fingerprint,
        "dataset": {
            "source": b.prepared.summary.get("source"),
            "train_size": len(b.train),
            "validation_size": len(b.validation),
            "num_labels": len(fit.labels),
        },
        "config": b.config_record,
        "metrics": {
            **{k: metrics[k] for k in SCALAR_METRICS},
            "overall_score": metrics["overall_score"],
            "metric": metrics["metric"],
            "best_epoch": fit.best_epoch,
            **{k: metrics[k] for k in ("in_scope_accuracy", "out_of_scope_recall") if k in metrics},
        },
        "training": training_summary(fit, class_weights=cfg.class_weights, hpo=b.hpo_summary),
        "inference": inference,
        "mlflow_run_id": b.tracker.run_id,
        "mlflow_tracking_uri": settings.paths.tracking_uri,
        "library_versions": library_versions(),
        "hardware": hardware(b.monitor),
        **(b.extra_metadata or {}),
    }
    if reporter is not None:
        emit(TrainingEvent("status", message="writing the training report"))
        report_box["report"] = reporter.staged(staged, metadata, registry)
    return metadata


def best_config_path(settings: Settings, fingerprint: str) -> Path:
    base = settings.training.base_model.replace("/", "_").replace(":", "_")
    return settings.paths.home / "hpo" / f"best-{fingerprint[:16]}-{base}.json"


def hpo_request(
    settings: Settings, cfg: Any, trials: int, fingerprint: str, parent: VersionInfo | None, parent_dir: Path | None
) -> HpoRequest:
    """The shared study a classifier search on this data and config works on (training.hpo)."""
    return HpoRequest(
        cfg,
        settings.validation.metric,
        settings.paths.models_dir,
        trials,
        settings.paths.hpo_storage_url,
        study_name(fingerprint, cfg, settings.validation.metric, parent.name if parent else None),
        parent_dir,
    )


def hpo_worker(
    settings: Settings,
    data_dir: Path,
    trials: int,
    listener: Listener | None = None,
    incremental_from: str | None = None,
) -> dict[str, Any]:
    """`train --hpo --hpo-worker`: run trials of the shared study of this data (and parent) until it holds
    ``trials`` finished ones; publish nothing (the process without --hpo-worker publishes the best trial).
    Returns the study's summary (training.hpo.summarize)."""
    if is_distributed():
        raise ConfigError("--hpo-worker is not run under torchrun/accelerate launch: start plain processes")
    check_precision(settings.training)
    prepared = read_prepared(data_dir)
    registry_parent = None
    train, validation, fingerprint = prepared.train, prepared.validation, prepared.fingerprint
    if incremental_from is not None:
        registry = ModelRegistry(settings.paths.registry)
        registry_parent = registry.require_intact(registry.resolve(incremental_from or None).name)
        train, validation = _merge_with_parent(prepared, registry_parent)
        fingerprint = fingerprint_examples(train, validation)
    labels = sorted({e.intent for e in train + validation})
    cfg = settings.training
    parent_dir = registry_parent.path / "model" if registry_parent else None
    monitor = SystemMonitor()
    tracker = MlflowTracker(settings.paths.tracking_uri, experiment=EXPERIMENT)
    try:
        with tracker.run(run_name=f"hpo-worker-{fingerprint[:8]}", tags={"hotelbot.component": COMPONENT}):
            search = hpo_request(settings, cfg, trials, fingerprint, registry_parent, parent_dir)
            _, _, summary = run_hpo(
                search, train, validation, labels, listener=listener, tracker=tracker, monitor=monitor, publish=False
            )
    finally:
        monitor.close()
    return {**summary, "mlflow_run_id": tracker.run_id}


def train_classifier(
    settings: Settings,
    data_dir: Path,
    registry: ModelRegistry,
    listener: Listener | None = None,
    *,
    force: bool = False,
    incremental_from: str | None = None,
    hpo_trials: int = 0,
    use_best_config: bool = True,
    reporter: Reporter | None = None,
    drop_joint_heads: bool = False,
) -> ComponentResult:
    """Fine-tune on the prepared data (optionally from a parent version, optionally with HPO) and publish.

    ``reporter`` writes the training report into the staged version before it is published and under
    reports/ after (the pipeline passes :class:`hotelbot_cli.pipeline.train.TrainingReporter`; the report
    reads every component's section, so the component cannot import it itself). ``drop_joint_heads``: leave out
    the source's joint-model heads (entities, sentiment) instead of refusing (`all` retrains them next)."""
    if hpo_trials and is_distributed():
        raise ConfigError(
            "--hpo is not run under torchrun/accelerate launch: each trial trains in one process",
            hint="start several `hotelbot train --hpo --hpo-storage URL` processes on one study instead",
        )
    emit = emitter(listener)
    prepared = read_prepared(data_dir)
    cfg = settings.training
    parent = None
    train, validation, fingerprint = prepared.train, prepared.validation, prepared.fingerprint
    if incremental_from is not None:
        parent = registry.require_intact(registry.resolve(incremental_from or None).name)
        train, validation = _merge_with_parent(prepared, parent)
        fingerprint = fingerprint_examples(train, validation)
    labels = sorted({e.intent for e in train + validation})
    check_mode(cfg.oos_detector, validation, calibrate=cfg.calibrate_oos_threshold)

    best_file = best_config_path(settings, fingerprint)
    if use_best_config and not hpo_trials and best_file.exists():
        best = json.loads(best_file.read_text("utf-8"))
        cfg = replace(cfg, **{k: v for k, v in best["params"].items() if k in cfg.to_dict()})
        emit(TrainingEvent("status", message=f"using the HPO best config from {best_file}"))

    config_record = {
        "training_config": cfg.to_dict(),
        "validation_metric": settings.validation.metric,
        "parent": parent.name if parent else None,
        "hpo_trials": hpo_trials,
    }
    refuse_repeat(registry, COMPONENT, fingerprint, config_record, force)

    metric = settings.validation.metric
    monitor = SystemMonitor()
    tracker = MlflowTracker(settings.paths.tracking_uri, experiment=EXPERIMENT)
    parent_dir = parent.path / "model" if parent else None
    hpo_summary = None
    report_box: dict[str, Any] = {}
    with tracker.run(run_name=f"classifier-{fingerprint[:8]}", tags={"hotelbot.component": COMPONENT}):
        tracker.log_params(
            {
                **cfg.to_dict(),
                "num_labels": len(labels),
                "train_size": len(train),
                "validation_size": len(validation),
                "dataset_fingerprint": fingerprint,
                "parent": parent.name if parent else "",
                "hpo_trials": hpo_trials,
            }
        )
        tracker.log_dataset(
            "hotel_intents", fingerprint, data_dir, {"train": len(train), "validation": len(validation)}
        )
        if hpo_trials:
            search = hpo_request(settings, cfg, hpo_trials, fingerprint, parent, parent_dir)
            fit, cfg, hpo_summary = run_hpo(
                search, train, validation, labels, listener=listener, tracker=tracker, monitor=monitor
            )
            atomic_write_json(
                best_file,
                {
                    "fingerprint": fingerprint,
                    "base_model": cfg.base_model,
                    "params": hpo_summary["best_params"],
                    "score": hpo_summary["best_score"],
                    "metric": metric,
                },
            )
            hpo_summary["saved_to"] = str(best_file)
            config_record["training_config"] = cfg.to_dict()
        else:
            fit = fit_classifier(
                cfg,
                metric,
                train,
                validation,
                labels,
                settings.paths.models_dir,
                listener=listener,
                tracker=tracker,
                monitor=monitor,
                parent_dir=parent_dir,
            )
        emit(TrainingEvent("status", message="choosing the out-of-scope detector on the validation split"))
        detector = choose_for_fit(fit, cfg, train, validation, metric)
        if detector.spec is not None:  # kNN: classifier.json names it; the softmax threshold is not applied
            fit.model.classifier_config.oos_detector = detector.spec
            fit.model.classifier_config.oos_threshold = None
            fit.metrics, fit.threshold = detector.metrics, None
        metrics = fit.metrics
        tracker.log_metrics({f"final_{k}": metrics[k] for k in SCALAR_METRICS}, step=fit.steps)
        if fit.threshold is not None:
            tracker.log_metrics({"out_of_scope_threshold": fit.threshold}, step=fit.steps)

        def build(staged: Path, carried: dict[str, Any]) -> dict[str, Any]:
            return write_classifier(
                staged,
                carried,
                ClassifierBuild(
                    fit=fit,
                    train=train,
                    validation=validation,
                    prepared=prepared,
                    fingerprint=fingerprint,
                    config_record=config_record,
                    hpo_summary=hpo_summary,
                    parent=parent.name if parent else None,
                    cfg=cfg,
                    settings=settings,
                    tracker=tracker,
                    monitor=monitor,
                    detector=detector,
                ),
                registry,
                reporter,
                report_box,
                emit,
            )

        info, _ = publish_version(
            registry,
            COMPONENT,
            source=None,
            build=build,
            tracker=tracker,
            listener=listener,
            drop_orphans=drop_joint_heads,
        )
        if reporter is not None and report_box.get("report") is not None:
            reporter.published(registry, info.name, report_box["report"])
        mlflow_model = tracker.register_version(registry, info)  # the MLflow Model Registry (training.mlflow_hub)
    monitor.close()
    log.info("trained %s: %s=%.4f in %.1fs", info.name, metrics["metric"], metrics["overall_score"], fit.duration)
    emit(
        TrainingEvent(
            "end",
            fit.steps,
            fit.steps,
            fit.epochs_run,
            cfg.epochs,
            metrics={k: metrics[k] for k in SCALAR_METRICS},
            message=info.name,
        )
    )
    return classifier_result(info, metrics, fit.duration, tracker.run_id, fit.history, mlflow_model)


def classifier_result(
    info: VersionInfo,
    metrics: dict[str, Any],
    duration: float,
    run_id: str | None,
    history: list[dict[str, Any]],
    mlflow_model: dict[str, Any] | None = None,
) -> ComponentResult:
    """The classifier's training as the one result type: its JSON document (the shape `train --json` has
    always printed) and the lines the CLI shows."""
    meta = info.metadata
    document = {
        "version": info.name,
        "skipped": False,
        "duration_seconds": round(duration, 2),
        "mlflow_run_id": run_id,
        "overall_score": metrics["overall_score"],
        "metrics": {
            k: metrics[k]
            for k in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "weighted_f1", "overall_score")
        },
        "history": history,
        "parent": meta.get("parent"),
        "out_of_scope_threshold": meta.get("out_of_scope_threshold"),
        "out_of_scope_detector": meta.get("out_of_scope_detector"),
        "hpo": (meta.get("training") or {}).get("hpo"),
        "mlflow_model": mlflow_model,
    }
    lines = [
        f"trained {info.name} in {duration:.1f}s: accuracy {metrics['accuracy']:.4f}, "
        f"macro-F1 {metrics['macro_f1']:.4f} on {metrics['num_examples']} validation texts"
    ]
    if meta.get("parent"):
        lines.append(f"incremental: started from {meta['parent']}")
    if meta.get("out_of_scope_threshold") is not None:
        lines.append(
            f"out-of-scope threshold {meta['out_of_scope_threshold']:.3f}: in-scope accuracy "
            f"{metrics.get('in_scope_accuracy') or 0:.4f}, out-of-scope recall "
            f"{metrics.get('out_of_scope_recall') or 0:.4f}"
        )
    detector = meta.get("out_of_scope_detector") or {}
    if detector.get("method") == KNN:
        lines.append(
            f"out-of-scope detector: {describe_detector(detector)}; in-scope accuracy "
            f"{metrics.get('in_scope_accuracy') or 0:.4f}, out-of-scope recall "
            f"{metrics.get('out_of_scope_recall') or 0:.4f}"
        )
    carried = info.manifest.carried_over
    notes = [f"saved to {info.path}; MLflow run {run_id}"]
    if mlflow_model and mlflow_model.get("error"):
        notes.append(f"warning: MLflow model not registered: {mlflow_model['error']}")
    elif mlflow_model:
        notes.append(f"MLflow model {mlflow_model['uri']}")
    return ComponentResult(
        COMPONENT,
        info,
        metrics,
        duration,
        run_id,
        history,
        document,
        lines,
        notes=notes,
        score=(f"{COMPONENT}_overall_score", float(metrics["overall_score"])),
        carried_from=carried.source,
        carried_components=list(carried.components),
    )


def train(request: TrainRequest) -> ComponentResult:
    """The component interface's entry: the classifier trains on the prepared intent split."""
    options = request.options
    return train_classifier(
        request.settings,
        Path(request.data) if request.data else request.settings.paths.data,
        request.registry,
        listener=request.listener,
        force=request.force,
        incremental_from=options.get("incremental_from"),
        hpo_trials=int(options.get("hpo_trials") or 0),
        use_best_config=bool(options.get("use_best_config", True)),
        reporter=options.get("reporter"),
        drop_joint_heads=bool(options.get("drop_joint_heads")),
    )


__all__ = [
    "COMPONENT",
    "EXPERIMENT",
    "best_config_path",
    "classifier_result",
    "export_inference",
    "train",
    "train_classifier",
]
