"""`train --model-type nlu`: fit the joint model (:mod:`.fit`) on the prepared intent, sentiment and entity
splits and publish ONE version in which the intent classifier, the entity extractor and the sentiment
classifier are that model's three heads:

- ``model/``, ``data/``, ``metrics.json``, ``training_history.json``, ``report/``: the intent classifier's usual
  files (its model is the joint one: classifier.json lists the other heads; the ONNX graphs have the three
  outputs; the runtime is chosen with every task's score, not only the intents');
- ``entities/`` and ``sentiment/``: ``joint.json`` (the head's labels and which output of the classifier's
  model it reads), the task's data split, ``metrics.json`` and ``training_history.json``, so validate,
  deploy's gates and the report read them as they read the separate models';
- ``metadata["nlu"]``: how the tasks were mixed and weighted, the per-task scores, the data fingerprints.

The other components (knowledge base, generator) are carried over from the source version.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence, cast

from ..._io import atomic_write_json
from ...data import read_prepared
from ...data import fingerprint as fingerprint_examples
from ...errors import DataError
from ...evaluation import classification_metrics
from ...training.events import TrainingEvent, emitter
from ...training.loop import training_summary
from ...training.monitor import SystemMonitor
from ...training.oos_detector import check_mode, choose_for_fit
from ...training.tracking import MlflowTracker
from ..base import ComponentResult, SplitComponent, TrainRequest, default_data_dir, refuse_repeat
from ..base import get as get_component
from ..compose import COMPONENT_HISTORY_FILE, COMPONENT_METRICS_FILE, publish_version
from ..entities.tagger import (
    DATA_SUBDIR as ENTITY_DATA,
    ENTITIES_DIR,
    SCALARS as ENTITY_SCALARS,
    bio_tags,
    entity_metrics,
    load_entity_data,
    write_prepared_entities,
)
from ..intents.train import ClassifierBuild, _merge_with_parent, classifier_result, write_classifier
from ..sentiment.classifier import (
    DATA_SUBDIR as SENTIMENT_DATA,
    SCALARS as SENTIMENT_SCALARS,
    SENTIMENT_DIR,
    load_sentiment_data,
    write_prepared_sentiment,
)
from .fit import DEFAULT_TASK_WEIGHTS, MIXING, SCORE, TaskData, fit_joint
from .runtime import JOINT_FILE, JointRunner

log = logging.getLogger("hotelbot.training")

COMPONENT = "nlu"
KIND = "nlu-model"
EXPERIMENT = "hotelbot-nlu"
JOINT_FORMAT = "hotelbot-joint-head/1"


def _load_task(settings: Any, name: str, loader: Any) -> Any:
    """The head ``name``'s prepared split, found where that component's own training finds it."""
    component = cast(SplitComponent, get_component(name))  # entities or sentiment
    path = component.prepared_data(settings)
    if path is None:
        raise DataError(
            f"the joint NLU model needs the prepared {name} split; {default_data_dir(settings, name)} has none",
            hint=f"run `hotelbot prepare --{name} datasets/{component.sample}.jsonl`",
        )
    return loader(path, settings.data)


def task_checks(
    entities_validation: Sequence[Any], sentiment_validation: Sequence[Any], entity_labels: Sequence[str], metric: str
) -> Any:
    """export_onnx's per-task gate: a predictor's sentiment ``metric`` and entity micro-F1 on their validation
    splits, answered by a :class:`JointRunner` on that predictor (raw texts, raw offsets, as served)."""

    def check(predictor: Any) -> dict[str, float]:
        runner = JointRunner(predictor)
        sentiment = [a.sentiment["label"] for a in runner.run([e.text for e in sentiment_validation])]
        found = runner.run([e.text for e in entities_validation])
        entities = entity_metrics(
            [e.gold() for e in entities_validation],
            [{(x["type"], x["start"], x["end"]) for x in a.entities} for a in found],
            entity_labels,
        )
        return {
            f"sentiment_{metric}": classification_metrics(
                [e.intent for e in sentiment_validation], sentiment, runner.sentiment_labels, metric
            )[metric],
            "entities_micro_f1": entities["micro_f1"],
        }

    return check


def train_nlu(request: TrainRequest) -> ComponentResult:
    """Train and publish the joint model (module docstring). ``request.data``: the prepared intent split
    (default: settings.paths.data); the entity and sentiment splits are the prepared ones (data/entities,
    data/sentiment). Options: ``incremental_from`` (start from that version's classifier, joint or not)."""
    settings, registry = request.settings, request.registry
    emit = emitter(request.listener)
    prepared = read_prepared(Path(request.data) if request.data else settings.paths.data)
    entities = _load_task(settings, "entities", load_entity_data)
    sentiment = _load_task(settings, "sentiment", load_sentiment_data)
    cfg, metric = settings.training, settings.validation.metric
    parent = None
    train, validation = prepared.train, prepared.validation
    intents_fingerprint = prepared.fingerprint
    incremental = request.options.get("incremental_from")
    if incremental is not None:
        parent = registry.require_intact(registry.resolve(incremental or None).name)
        train, validation = _merge_with_parent(prepared, parent)
        intents_fingerprint = fingerprint_examples(train, validation)
    labels = sorted({e.intent for e in train + validation})
    fingerprints = {
        "intents": intents_fingerprint,
        "sentiment": sentiment.fingerprint,
        "entities": entities.fingerprint,
    }
    fingerprint = hashlib.sha256("\n".join(f"{k}={v}" for k, v in sorted(fingerprints.items())).encode()).hexdigest()
    weights = dict(DEFAULT_TASK_WEIGHTS)
    config_record = {
        "training_config": cfg.to_dict(),
        "validation_metric": metric,
        "parent": parent.name if parent else None,
        "task_weights": weights,
        "mixing": MIXING,
    }
    refuse_repeat(registry, COMPONENT, fingerprint, config_record, request.force)
    check_mode(cfg.oos_detector, validation, joint=True, calibrate=cfg.calibrate_oos_threshold)
    data = TaskData(
        train,
        validation,
        labels,
        sentiment.train,
        sentiment.validation,
        sentiment.labels,
        entities.train,
        entities.validation,
        entities.labels,
    )
    monitor = SystemMonitor()
    tracker = MlflowTracker(settings.paths.tracking_uri, experiment=EXPERIMENT)
    reporter = request.options.get("reporter")
    report_box: dict[str, Any] = {}
    try:
        with tracker.run(run_name=f"nlu-{fingerprint[:8]}", tags={"hotelbot.component": COMPONENT}):
            tracker.log_params(
                {
                    **cfg.to_dict(),
                    "component": COMPONENT,
                    "num_labels": len(labels),
                    "intents_train_size": len(train),
                    "sentiment_train_size": len(sentiment.train),
                    "entities_train_size": len(entities.train),
                    "dataset_fingerprint": fingerprint,
                    "parent": parent.name if parent else "",
                    **{f"task_weight_{k}": v for k, v in weights.items()},
                }
            )
            tracker.log_dataset(
                "nlu",
                fingerprint,
                Path(request.data or settings.paths.data),
                {
                    "intents_train": len(train),
                    "sentiment_train": len(sentiment.train),
                    "entities_train": len(entities.train),
                },
            )
            fit = fit_joint(
                cfg,
                metric,
                data,
                settings.paths.models_dir,
                task_weights=weights,
                listener=request.listener,
                tracker=tracker,
                monitor=monitor,
                parent_dir=parent.path / "model" if parent else None,
            )
            scores = {"intents": fit.metrics, "sentiment": fit.sentiment_metrics, "entities": fit.entity_metrics}
            tracker.log_metrics(
                {
                    **{f"final_{k}": fit.metrics[k] for k in SENTIMENT_SCALARS},
                    **{f"final_sentiment_{k}": fit.sentiment_metrics[k] for k in SENTIMENT_SCALARS},
                    **{f"final_entities_{k}": fit.entity_metrics[k] for k in ENTITY_SCALARS},
                },
                step=fit.steps,
            )
            history = {"epochs": fit.history, "log": fit.log_history}
            summary = _nlu_summary(fit, fingerprint, fingerprints, config_record, weights, tracker.run_id, metric)
            head_summary = {
                "joint": True,
                "runs_on": "classifier",
                "dataset_fingerprint": None,
                "base_model": fit.resolved,
                "max_length": cfg.max_length,
                "mlflow_run_id": tracker.run_id,
                "training": training_summary(fit),
                "config": {"joint": config_record},
            }

            def build(staged: Path, carried: dict[str, Any]) -> dict[str, Any]:
                entity_dir, sentiment_dir = staged / ENTITIES_DIR, staged / SENTIMENT_DIR
                _write_head(
                    entity_dir,
                    "token_logits",
                    {"labels": list(entities.labels), "tags": bio_tags(entities.labels)},
                    {**fit.entity_metrics, "data_source": f"{ENTITIES_DIR}/{ENTITY_DATA}/validation.jsonl"},
                    history,
                )
                write_prepared_entities(entities, entity_dir / ENTITY_DATA)
                _write_head(
                    sentiment_dir,
                    "sentiment_logits",
                    {"labels": list(sentiment.labels)},
                    {**fit.sentiment_metrics, "data_source": f"{SENTIMENT_DIR}/{SENTIMENT_DATA}/validation.jsonl"},
                    history,
                )
                write_prepared_sentiment(sentiment, sentiment_dir / SENTIMENT_DATA)
                extra = {
                    "nlu": summary,
                    "entities": {
                        **head_summary,
                        "dataset_fingerprint": entities.fingerprint,
                        "labels": list(entities.labels),
                        "tags": bio_tags(entities.labels),
                        "metrics": {
                            **{k: fit.entity_metrics[k] for k in ENTITY_SCALARS},
                            "overall_score": fit.entity_metrics["overall_score"],
                            "metric": fit.entity_metrics["metric"],
                        },
                        "dataset": {
                            "source": entities.summary.get("source"),
                            "train_size": len(entities.train),
                            "validation_size": len(entities.validation),
                        },
                    },
                    "sentiment": {
                        **head_summary,
                        "dataset_fingerprint": sentiment.fingerprint,
                        "labels": list(sentiment.labels),
                        "metrics": {
                            **{k: fit.sentiment_metrics[k] for k in SENTIMENT_SCALARS},
                            "overall_score": fit.sentiment_metrics["overall_score"],
                            "metric": fit.sentiment_metrics["metric"],
                        },
                        "dataset": {
                            "source": sentiment.summary.get("source"),
                            "train_size": len(sentiment.train),
                            "validation_size": len(sentiment.validation),
                        },
                    },
                }
                return write_classifier(
                    staged,
                    carried,
                    ClassifierBuild(
                        fit=fit,
                        train=train,
                        validation=validation,
                        prepared=prepared,
                        fingerprint=intents_fingerprint,
                        config_record=config_record,
                        hpo_summary=None,
                        parent=parent.name if parent else None,
                        cfg=cfg,
                        settings=settings,
                        tracker=tracker,
                        monitor=monitor,
                        kind=KIND,
                        task_checks=task_checks(entities.validation, sentiment.validation, entities.labels, metric),
                        extra_metadata=extra,
                        detector=choose_for_fit(fit, cfg, train, validation, metric, joint=True),
                    ),
                    registry,
                    reporter,
                    report_box,
                    emit,
                )

            info, carried = publish_version(
                registry, COMPONENT, source=request.source, build=build, tracker=tracker, listener=request.listener
            )
            if reporter is not None and report_box.get("report") is not None:
                reporter.published(registry, info.name, report_box["report"])
            mlflow_model = tracker.register_version(registry, info)  # the joint model answers intents too
    finally:
        monitor.close()
    log.info("trained nlu %s: %s %.4f in %.1fs", info.name, SCORE, summary[SCORE], fit.duration)
    emit(
        TrainingEvent(
            "end",
            fit.steps,
            fit.steps,
            fit.epochs_run,
            cfg.epochs,
            metrics={"macro_f1": fit.metrics["macro_f1"]},
            message=info.name,
        )
    )
    result = classifier_result(info, fit.metrics, fit.duration, tracker.run_id, fit.history, mlflow_model)
    result.component = COMPONENT
    result.document = {
        **result.document,
        "component": COMPONENT,
        SCORE: summary[SCORE],
        "tasks": {
            task: {k: v for k, v in m.items() if isinstance(v, (int, float, str)) or v is None}
            for task, m in scores.items()
        },
        "components": info.metadata.get("components"),
    }
    result.lines.append(
        f"  joint NLU: sentiment {metric} {fit.sentiment_metrics[metric]:.4f}, entities micro-F1 "
        f"{fit.entity_metrics['micro_f1']:.4f} ({SCORE} {summary[SCORE]:.4f}); one encoder for the three"
    )
    result.score = (f"{COMPONENT}_{SCORE}", float(summary[SCORE]))
    result.detail = fit
    return result


def _write_head(
    target: Path, output: str, labels: dict[str, Any], metrics: dict[str, Any], history: dict[str, Any]
) -> None:
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        target / JOINT_FILE,
        {
            "format": JOINT_FORMAT,
            "model": "model",
            "output": output,
            **labels,
            "input": "query_prefix + clean_text(text); offsets mapped back to the raw text",
        },
    )
    atomic_write_json(target / COMPONENT_METRICS_FILE, metrics)
    atomic_write_json(target / COMPONENT_HISTORY_FILE, history)


def _nlu_summary(
    fit: Any,
    fingerprint: str,
    fingerprints: dict[str, str],
    config_record: dict[str, Any],
    weights: dict[str, float],
    run_id: str | None,
    metric: str,
) -> dict[str, Any]:
    task_scores = {
        "intents": {
            "metric": metric,
            "score": fit.metrics[metric],
            "in_scope_accuracy": fit.metrics.get("in_scope_accuracy"),
            "out_of_scope_recall": fit.metrics.get("out_of_scope_recall"),
        },
        "sentiment": {"metric": metric, "score": fit.sentiment_metrics[metric]},
        "entities": {"metric": "micro_f1", "score": fit.entity_metrics["micro_f1"]},
    }
    return {
        "dataset_fingerprint": fingerprint,
        "task_fingerprints": fingerprints,
        "config": config_record,
        "task_weights": weights,
        "mixing": MIXING,
        "tasks": task_scores,
        SCORE: sum(t["score"] for t in task_scores.values()) / 3,
        "best_epoch": fit.best_epoch,
        "training": training_summary(fit, truncated_entities=fit.truncated_entities, dropped_spans=fit.dropped_spans),
        "mlflow_run_id": run_id,
    }


__all__ = ["COMPONENT", "EXPERIMENT", "KIND", "task_checks", "train_nlu"]
