"""Building a :class:`~hotelbot_cli.reporting.report.Report`: read a version's files, run its model on
the validation split (predictions, confidences, latency), compute every section, the recommendations
and the figures."""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path
from typing import Any

from ..data import read_jsonl_examples
from ..errors import HotelbotError, ReportError
from ..evaluation import classification_metrics
from ..registry import ModelRegistry, VersionInfo
from ..runtime import TorchPredictor
from .advice import recommendations
from .figures import make_figures
from .other_components import component_report
from .report import METRIC_DIGITS, Report
from .sections import (
    _comparison_section,
    _confidence_section,
    _confusion_section,
    _data_section,
    _headline,
    _per_intent_section,
    _performance_section,
    _resources_section,
    _training_section,
)


def build_report(
    registry: ModelRegistry,
    version: str | None = None,
    *,
    previous_n: int = 3,
    measure_latency: bool = True,
    figures: bool = True,
    verify: bool = True,
    min_score: float = 0.8,
) -> Report:
    """The report of a published version (default: the deployed one, else the newest).

    ``verify`` checks the version's checksums first (a corrupt model is refused, as ``predict`` does).
    """
    info = registry.resolve(version, verify=verify)
    return build_report_from_dir(
        info.path,
        info.metadata,
        registry,
        version_name=info.name,
        previous_n=previous_n,
        measure_latency=measure_latency,
        figures=figures,
        min_score=min_score,
    )


def build_report_from_dir(
    path: Path,
    metadata: dict[str, Any],
    registry: ModelRegistry | None = None,
    *,
    version_name: str | None = None,
    previous_n: int = 3,
    measure_latency: bool = True,
    figures: bool = True,
    min_score: float = 0.8,
    latency_texts: int = 50,
    train_sample: int = 256,
) -> Report:
    """The report of the version files in ``path`` (published or still in staging) with ``metadata``.

    ``version_name`` names it (default: ``metadata["version"]``, else "staged"). ``registry`` supplies the
    deployed and previous versions to compare with (None: no comparison). ``latency_texts`` single-text
    predictions are timed; ``train_sample`` training texts are re-scored for the train/validation gap.
    """
    path = Path(path)
    name = version_name or metadata.get("version") or "staged"
    notes: list[str] = []
    if not (path / "data" / "validation.jsonl").is_file() and component_report(path, metadata):
        raise ReportError(
            f"{name} has no intent classifier (components: {', '.join(metadata.get('components', []))}); "
            "the report covers classifier versions: see `hotelbot validate --json` for its components"
        )
    metrics = _read_json(path / "metrics.json")
    history = _read_json(path / "training_history.json") or {}
    dataset = _read_json(path / "data" / "dataset.json") or {}
    val_path = path / "data" / "validation.jsonl"
    if not val_path.is_file():
        raise ReportError(f"{path}: data/validation.jsonl is missing; cannot report on this version")
    validation = read_jsonl_examples(val_path)
    train_path = path / "data" / "train.jsonl"
    train = read_jsonl_examples(train_path) if train_path.is_file() else []
    if not validation:
        raise ReportError(f"{path}: data/validation.jsonl is empty; cannot report on this version")

    run = _run_model(
        path,
        name,
        validation,
        train,
        measure_latency=measure_latency,
        latency_texts=latency_texts,
        train_sample=train_sample,
    )
    labels = list(run["labels"])
    if metrics is None:
        metrics = classification_metrics(
            [e.intent for e in validation],
            run["predicted"],
            labels,
            (metadata.get("metrics") or {}).get("metric", "macro_f1"),
        )
        notes.append("metrics.json is missing: the metrics were recomputed from the model's predictions")
    else:
        rerun_acc = run["rerun_accuracy"]
        if abs(rerun_acc - float(metrics.get("accuracy", rerun_acc))) > 1e-9:
            notes.append(
                f"re-running the model gives accuracy {rerun_acc:.{METRIC_DIGITS}f}, metrics.json says "
                f"{metrics['accuracy']:.{METRIC_DIGITS}f}; the tables show metrics.json, the examples and "
                "confidences come from the re-run"
            )

    deployed, deployed_note = _deployed_name(registry)
    if deployed_note:
        notes.append(deployed_note)
    threshold = metadata.get("out_of_scope_threshold")
    threshold = float(threshold) if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) else None

    data_sec = _data_section(dataset, train, validation, labels, metadata)
    training_sec = _training_section(history, metadata, metrics, run)
    confusion_sec = _confusion_section(metrics)
    per_intent = _per_intent_section(metrics, validation, run, data_sec)
    confidence_sec = _confidence_section(validation, run, labels, threshold)
    resources_sec = _resources_section(metadata)
    performance_sec = _performance_section(path, metadata, run)
    comparison_sec = _comparison_section(registry, name, metrics, metadata, deployed, previous_n)
    headline = _headline(name, metadata, metrics, deployed, threshold, path)
    report = Report(
        version=name,
        generated_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        source=str(path),
        headline=headline,
        data=data_sec,
        training=training_sec,
        confusion=confusion_sec,
        per_intent=per_intent,
        confidence=confidence_sec,
        resources=resources_sec,
        performance=performance_sec,
        comparison=comparison_sec,
        recommendations=[],
        notes=notes,
        mlflow={"tracking_uri": metadata.get("mlflow_tracking_uri"), "run_id": metadata.get("mlflow_run_id")},
        components=component_report(path, metadata),
    )
    report.recommendations = recommendations(report, min_score=min_score)
    if figures:
        report.figures = make_figures(report, resources_sec.pop("_series", {}))
    resources_sec.pop("_series", None)
    return report


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is unreadable: {exc}") from None


def _deployed_name(registry: ModelRegistry | None) -> tuple[str | None, str | None]:
    if registry is None:
        return None, None
    try:
        return registry.current_name(), None
    except HotelbotError as exc:
        return None, f"the deployed state could not be read: {exc}"


def _run_model(
    path: Path, name: str, validation, train, *, measure_latency: bool, latency_texts: int, train_sample: int
) -> dict[str, Any]:
    """Predictions + confidences on the validation split, a train sample, latency of single texts."""
    predictor = TorchPredictor.from_version(VersionInfo(name, path, {}))
    labels = predictor.labels
    texts = [e.text for e in validation]
    start = time.perf_counter()
    probs = predictor.probabilities(texts)
    batch_seconds = time.perf_counter() - start
    conf, idx = probs.max(dim=-1)
    predicted = [labels[i] for i in idx.tolist()]
    confidences = [float(c) for c in conf.tolist()]
    truth = [e.intent for e in validation]
    out: dict[str, Any] = {
        "labels": labels,
        "predicted": predicted,
        "confidences": confidences,
        "rerun_accuracy": sum(t == p for t, p in zip(truth, predicted)) / len(truth),
        "batch_seconds": batch_seconds,
        "batch_texts": len(texts),
    }
    if train and train_sample:
        step = max(1, len(train) // train_sample)
        sample = train[::step][:train_sample]
        train_pred = predictor.predict_labels([e.text for e in sample])
        out["train_sample_size"] = len(sample)
        out["train_sample_accuracy"] = sum(e.intent == p for e, p in zip(sample, train_pred)) / len(sample)
    if measure_latency:
        chosen = texts[:latency_texts]
        for text in chosen[:2]:  # warm-up: first calls allocate and are not representative
            predictor.predict([text])
        timings = []
        for text in chosen:
            t0 = time.perf_counter()
            predictor.predict([text])
            timings.append((time.perf_counter() - t0) * 1000.0)
        out["latency_ms"] = timings
    return out
