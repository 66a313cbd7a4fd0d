"""Training and validation reports people read: report data, plots, HTML / Markdown / JSON.

A :class:`Report` is plain data built from one version's files (``metrics.json``,
``training_history.json``, ``data/``, ``metadata.json``, the model itself for predictions and latency)
plus its MLflow run and the other versions of the registry. Renderers turn it into:

* one self-contained HTML file (plots are PNG ``data:`` URIs, inline CSS, nothing fetched),
* Markdown (plots written next to it in ``<stem>_figures/``),
* JSON (the same numbers; figure names instead of images).

Two ways in: :func:`build_report` for a published version and :func:`build_report_from_dir` for a
version still being built in the registry's staging directory (so the report can become part of the
immutable version). Nothing here prints; heavy libraries (torch, matplotlib, mlflow, scipy) are
imported inside the functions that need them. Metrics are always taken from ``metrics.json`` (the
version's own record); the model is run on the version's validation split only for what the record
does not hold: example misclassifications, confidences and latency.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import html
import io
import json
import logging
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ._atomic import atomic_write_bytes
from .data import OUT_OF_SCOPE, read_jsonl_examples
from .errors import HotelbotError
from .registry import ModelRegistry, VersionInfo

log = logging.getLogger("hotelbot.reporting")

SCHEMA_VERSION = 1
TRAINING_REPORTS_DIR = "training_reports"
VALIDATION_REPORTS_DIR = "validation_reports"
REPORT_STEM = "report"
FORMATS = ("html", "md", "json")
EXTENSIONS = {"html": "html", "md": "md", "json": "json"}

# (id used in HTML anchors and Markdown, title). The JSON key is the id with "-" -> "_".
SECTIONS: tuple[tuple[str, str], ...] = (
    ("data", "Data"),
    ("training", "Training curves"),
    ("confusion", "Confusion matrix"),
    ("per-intent", "Per-intent results"),
    ("confidence", "Confidence"),
    ("resources", "Resource usage"),
    ("performance", "Training time, latency and size"),
    ("comparison", "Comparison with other versions"),
    ("recommendations", "Recommendations"),
)
SECTION_KEYS = tuple(sid.replace("-", "_") for sid, _ in SECTIONS)

METRIC_DIGITS = 4  # every metric is rendered with this many decimals in HTML and Markdown
OVERALL_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "overall_score",
                "in_scope_accuracy", "out_of_scope_recall")
SYSTEM_SERIES = {
    "system/cpu_percent": "CPU %",
    "system/ram_used_mb": "RAM used (MB)",
    "system/ram_percent": "RAM %",
    "system/process_rss_mb": "process RSS (MB)",
}

# Recommendation thresholds (the numbers a rule fires at are part of the message it writes).
LOW_RECALL = 0.8
LOW_PRECISION = 0.8
FEW_EXAMPLES = 10
FEW_VALIDATION_TEXTS = 5
IMBALANCE_RATIO = 3.0
TRAIN_VAL_GAP = 0.10
UNDERFIT_TRAIN_ACCURACY = 0.90
STILL_IMPROVING = 0.005
REGRESSION_OVERALL = 0.01
REGRESSION_INTENT = 0.05
DELTA_SHOWN = 0.02
LOW_OOS_RECALL = 0.7
SLOW_P95_MS = 100.0
MAX_RIGHT_LOST = 0.05  # a suggested out-of-scope threshold may turn at most this share of right answers away
MAX_INTENT_RECOMMENDATIONS = 8
SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}


class ReportError(HotelbotError):
    """A report cannot be built or written (missing version files, bad format, unwritable output)."""


# ---------------------------------------------------------------- the report


@dataclass
class Report:
    """Everything a report shows; ``to_dict`` is the JSON document (figures by name only)."""

    version: str
    generated_at: str
    source: str
    headline: dict[str, Any]
    data: dict[str, Any]
    training: dict[str, Any]
    confusion: dict[str, Any]
    per_intent: list[dict[str, Any]]
    confidence: dict[str, Any]
    resources: dict[str, Any]
    performance: dict[str, Any]
    comparison: dict[str, Any]
    recommendations: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    mlflow: dict[str, Any] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)  # entities / sentiment (analysis.component_report)
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)

    def section(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "version": self.version,
            "generated_at": self.generated_at,
            "source": self.source,
            "headline": self.headline,
        }
        for key in SECTION_KEYS:
            doc[key] = self.section(key)
        doc["components"] = self.components
        doc["notes"] = list(self.notes)
        doc["mlflow"] = self.mlflow
        doc["figures"] = sorted(self.figures)
        return _jsonable(doc)


def _jsonable(value: Any) -> Any:
    """Plain JSON types only: numpy scalars -> Python, NaN/inf -> None, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalar
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return str(value)


# ---------------------------------------------------------------- building


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
    return build_report_from_dir(info.path, info.metadata, registry, version_name=info.name,
                                 previous_n=previous_n, measure_latency=measure_latency, figures=figures,
                                 min_score=min_score)


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
    from .analysis import component_report

    path = Path(path)
    name = version_name or metadata.get("version") or "staged"
    notes: list[str] = []
    if not (path / "data" / "validation.jsonl").is_file() and component_report(path, metadata):
        raise ReportError(f"{name} has no intent classifier (components: {', '.join(metadata.get('components', []))}); "
                          "the report covers classifier versions: see `hotelbot validate --json` for its components")
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

    run = _run_model(path, name, validation, train, measure_latency=measure_latency, latency_texts=latency_texts,
                     train_sample=train_sample)
    labels = list(run["labels"])
    if metrics is None:
        from .evaluation import classification_metrics

        metrics = classification_metrics([e.intent for e in validation], run["predicted"], labels,
                                         (metadata.get("metrics") or {}).get("metric", "macro_f1"))
        notes.append("metrics.json is missing: the metrics were recomputed from the model's predictions")
    else:
        rerun_acc = run["rerun_accuracy"]
        if abs(rerun_acc - float(metrics.get("accuracy", rerun_acc))) > 1e-9:
            notes.append(f"re-running the model gives accuracy {rerun_acc:.{METRIC_DIGITS}f}, metrics.json says "
                         f"{metrics['accuracy']:.{METRIC_DIGITS}f}; the tables show metrics.json, the examples and "
                         "confidences come from the re-run")

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
        generated_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
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


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default) without numpy."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _run_model(path: Path, name: str, validation, train, *, measure_latency: bool, latency_texts: int,
               train_sample: int) -> dict[str, Any]:
    """Predictions + confidences on the validation split, a train sample, latency of single texts."""
    from .inference import Predictor

    predictor = Predictor.from_version(VersionInfo(name, path, {}))
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


def _headline(name: str, metadata: dict[str, Any], metrics: dict[str, Any], deployed: str | None,
              threshold: float | None, path: Path) -> dict[str, Any]:
    base = metadata.get("base_model") or {}
    return {
        "version": name,
        "created_at": metadata.get("created_at"),
        "base_model": base.get("spec") if isinstance(base, dict) else base,
        "metric": metrics.get("metric", "macro_f1"),
        **{k: metrics.get(k) for k in OVERALL_KEYS if metrics.get(k) is not None},
        "num_examples": metrics.get("num_examples"),
        "num_labels": len(metrics.get("per_intent") or {}),
        "deployed_version": deployed,
        "is_deployed": deployed is not None and deployed == name,
        "out_of_scope_threshold": threshold,
        "dataset_fingerprint": metadata.get("dataset_fingerprint"),
        "mlflow_run_id": metadata.get("mlflow_run_id"),
        "path": str(path),
    }


# ---------------------------------------------------------------- sections


def _data_section(dataset: dict[str, Any], train, validation, labels: list[str],
                  metadata: dict[str, Any]) -> dict[str, Any]:
    train_counts = Counter(e.intent for e in train)
    val_counts = Counter(e.intent for e in validation)
    all_labels = sorted(set(labels) | set(train_counts) | set(val_counts))
    per_intent = {label: {"train": train_counts.get(label, 0), "validation": val_counts.get(label, 0),
                          "total": train_counts.get(label, 0) + val_counts.get(label, 0)} for label in all_labels}
    totals = [v["total"] for v in per_intent.values() if v["total"]]
    ratio = (max(totals) / min(totals)) if totals else None
    return {
        "source": dataset.get("source") or (metadata.get("dataset") or {}).get("source"),
        "fingerprint": dataset.get("fingerprint") or metadata.get("dataset_fingerprint"),
        "train_size": len(train) if train else dataset.get("train_size"),
        "validation_size": len(validation),
        "num_labels": len(labels),
        "examples_per_intent": per_intent,
        "examples_per_intent_prepared": dataset.get("examples_per_intent"),
        "imbalance_ratio": ratio,
        "warnings": list(dataset.get("warnings") or []),
    }


def _training_section(history: dict[str, Any], metadata: dict[str, Any], metrics: dict[str, Any],
                      run: dict[str, Any]) -> dict[str, Any]:
    epochs = [
        {k: e.get(k) for k in ("epoch", "step", "loss", "accuracy", "macro_f1", "macro_precision", "macro_recall",
                                "weighted_f1") if k in e}
        for e in history.get("epochs") or []
    ]
    train_loss = [{"step": r.get("step"), "epoch": r.get("epoch"), "loss": r["loss"],
                   "learning_rate": r.get("learning_rate")}
                  for r in history.get("log") or [] if isinstance(r.get("loss"), (int, float))]
    training = metadata.get("training") or {}
    config = ((metadata.get("config") or {}).get("training_config") or {})
    configured = config.get("epochs")
    epochs_run = training.get("epochs_run", epochs[-1]["epoch"] if epochs else None)
    patience = config.get("early_stopping_patience")
    early_stopped = (configured is not None and epochs_run is not None and float(epochs_run) < float(configured) - 1e-6)
    best_epoch = (metadata.get("metrics") or {}).get("best_epoch")
    if best_epoch is None and epochs:
        best_epoch = max(epochs, key=lambda e: e.get("macro_f1") or 0).get("epoch")
    last_gain = None
    if len(epochs) >= 2 and epochs[-1].get("macro_f1") is not None and epochs[-2].get("macro_f1") is not None:
        last_gain = epochs[-1]["macro_f1"] - epochs[-2]["macro_f1"]
    final_val_loss = epochs[-1].get("loss") if epochs else None
    best_val_loss = min((e["loss"] for e in epochs if e.get("loss") is not None), default=None)
    tail = train_loss[-3:]
    final_train_loss = statistics.fmean(r["loss"] for r in tail) if tail else None
    train_acc = run.get("train_sample_accuracy")
    val_acc = metrics.get("accuracy")
    return {
        "epochs": epochs,
        "train_loss": train_loss,
        "configured_epochs": configured,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "early_stopping_patience": patience,
        "early_stopped": bool(early_stopped),
        "last_epoch_macro_f1_gain": last_gain,
        "final_train_loss": final_train_loss,
        "final_validation_loss": final_val_loss,
        "best_validation_loss": best_val_loss,
        "train_sample_size": run.get("train_sample_size"),
        "train_sample_accuracy": train_acc,
        "validation_accuracy": val_acc,
        "train_validation_gap": (train_acc - val_acc) if train_acc is not None and val_acc is not None else None,
        "duration_seconds": training.get("duration_seconds"),
        "steps": training.get("steps"),
        "config": config,
    }


def _matrix(metrics: dict[str, Any]) -> tuple[list[str], list[list[int]]]:
    cm = metrics.get("confusion_matrix") or {}
    return list(cm.get("labels") or []), [list(map(int, row)) for row in cm.get("matrix") or []]


def confusion_order(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> list[int]:
    """Row/column order that puts intents confused with each other next to each other.

    Hierarchical clustering (average linkage, optimal leaf ordering) on 1 - the symmetric row-normalised
    confusion; alphabetical when scipy is missing or there is nothing to cluster.
    """
    n = len(labels)
    alphabetical = sorted(range(n), key=lambda i: labels[i])
    if n < 3:
        return alphabetical
    rates = []
    for row in matrix:
        total = sum(row)
        rates.append([v / total if total else 0.0 for v in row])
    sym = [[(rates[i][j] + rates[j][i]) / 2 for j in range(n)] for i in range(n)]
    if not any(sym[i][j] for i in range(n) for j in range(n) if i != j):
        return alphabetical
    try:
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import squareform
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return alphabetical
    # Alphabetical input order makes ties (most pairs are never confused) resolve by name.
    dist = [[0.0 if i == j else 1.0 - sym[a][b] for j, b in enumerate(alphabetical)]
            for i, a in enumerate(alphabetical)]
    tree = linkage(squareform(dist, checks=False), method="average", optimal_ordering=True)
    return [alphabetical[i] for i in leaves_list(tree).tolist()]


def _confusion_section(metrics: dict[str, Any]) -> dict[str, Any]:
    labels, matrix = _matrix(metrics)
    order = confusion_order(labels, matrix) if labels else []
    pairs = []
    for i, true in enumerate(labels):
        total = sum(matrix[i]) if i < len(matrix) else 0
        for j, pred in enumerate(labels):
            if i != j and matrix[i][j]:
                pairs.append({"true": true, "predicted": pred, "count": matrix[i][j],
                              "share_of_true": matrix[i][j] / total if total else None})
    pairs.sort(key=lambda p: (-p["count"], p["true"], p["predicted"]))
    return {
        "labels": labels,
        "matrix": matrix,
        "order": [labels[i] for i in order],
        "normalized": "by row (share of each true intent)",
        "sorted_by": "clusters of intents confused with each other",
        "top_confusions": pairs[:15],
        "total_errors": sum(p["count"] for p in pairs),
    }


def _per_intent_section(metrics: dict[str, Any], validation, run: dict[str, Any],
                        data_sec: dict[str, Any]) -> list[dict[str, Any]]:
    labels, matrix = _matrix(metrics)
    index = {label: i for i, label in enumerate(labels)}
    wrong: dict[str, list[dict[str, Any]]] = {}
    for example, pred, conf in zip(validation, run["predicted"], run["confidences"]):
        if pred != example.intent:
            wrong.setdefault(example.intent, []).append({"text": example.text, "predicted": pred,
                                                         "confidence": conf})
    rows = []
    for label, stats in (metrics.get("per_intent") or {}).items():
        i = index.get(label)
        confused_with, mistaken_for_it = [], []
        if i is not None:
            confused_with = sorted(({"intent": labels[j], "count": matrix[i][j]} for j in range(len(labels))
                                    if j != i and matrix[i][j]), key=lambda d: (-d["count"], d["intent"]))
            mistaken_for_it = sorted(({"intent": labels[j], "count": matrix[j][i]} for j in range(len(labels))
                                      if j != i and matrix[j][i]), key=lambda d: (-d["count"], d["intent"]))
        examples = sorted(wrong.get(label, []), key=lambda d: -d["confidence"])[:3]
        counts = data_sec["examples_per_intent"].get(label, {})
        rows.append({
            "intent": label,
            "precision": stats.get("precision"),
            "recall": stats.get("recall"),
            "f1": stats.get("f1"),
            "support": stats.get("support"),
            "train_examples": counts.get("train"),
            "confused_with": confused_with[:3],
            "mistaken_for_it": mistaken_for_it[:3],
            "misclassified_examples": examples,
        })
    rows.sort(key=lambda r: (r["f1"] if r["f1"] is not None else 0.0, r["recall"] or 0.0, r["intent"]))
    return rows


def _confidence_stats(values: Sequence[float]) -> dict[str, Any]:
    return {"count": len(values),
            "mean": statistics.fmean(values) if values else None,
            "median": _percentile(values, 50),
            "p5": _percentile(values, 5),
            "p95": _percentile(values, 95)}


def _threshold_effect(truth, predicted, confidences, threshold: float) -> dict[str, Any]:
    right = [c for t, p, c in zip(truth, predicted, confidences) if t == p]
    wrong = [c for t, p, c in zip(truth, predicted, confidences) if t != p]
    adjusted = [OUT_OF_SCOPE if c < threshold else p for p, c in zip(predicted, confidences)]
    return {
        "threshold": threshold,
        "correct_rejected": sum(c < threshold for c in right),
        "wrong_rejected": sum(c < threshold for c in wrong),
        "correct_total": len(right),
        "wrong_total": len(wrong),
        "rejected_share": sum(c < threshold for c in confidences) / len(confidences) if confidences else None,
        "accuracy_with_threshold": sum(t == a for t, a in zip(truth, adjusted)) / len(truth) if truth else None,
    }


def _confidence_section(validation, run: dict[str, Any], labels: list[str], threshold: float | None) -> dict[str, Any]:
    truth = [e.intent for e in validation]
    predicted, confidences = run["predicted"], run["confidences"]
    right = [c for t, p, c in zip(truth, predicted, confidences) if t == p]
    wrong = [c for t, p, c in zip(truth, predicted, confidences) if t != p]
    # Suggested threshold: of those losing at most MAX_RIGHT_LOST of the right answers, the one that turns
    # the most wrong answers into fallbacks net of right ones lost.
    best = None
    for k in range(1, 20):
        t = k / 20
        eff = _threshold_effect(truth, predicted, confidences, t)
        gain = eff["wrong_rejected"] - eff["correct_rejected"]
        lost = eff["correct_rejected"] / eff["correct_total"] if eff["correct_total"] else 0.0
        if eff["wrong_rejected"] and gain > 0 and lost <= MAX_RIGHT_LOST and (best is None or gain > best[0]):
            best = (gain, eff)
    return {
        "correct": _confidence_stats(right),
        "wrong": _confidence_stats(wrong),
        "threshold": threshold,
        "at_threshold": _threshold_effect(truth, predicted, confidences, threshold) if threshold is not None else None,
        "suggested_threshold": best[1] if best else None,
        "has_out_of_scope_intent": OUT_OF_SCOPE in labels,
        "values": {"correct": [round(c, 4) for c in right], "wrong": [round(c, 4) for c in wrong]},
    }


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        return Path(rest.split("?", 1)[0])
    return None


def _resources_section(metadata: dict[str, Any]) -> dict[str, Any]:
    uri, run_id = metadata.get("mlflow_tracking_uri"), metadata.get("mlflow_run_id")
    out: dict[str, Any] = {"available": False, "tracking_uri": uri, "run_id": run_id, "series": {}, "note": None,
                           "hardware": metadata.get("hardware") or {}}
    if not uri or not run_id:
        out["note"] = "no MLflow run is recorded in this version's metadata, so no resource usage is available"
        return out
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        out["note"] = f"the MLflow store {db} is not available on this machine; resource usage is not shown"
        return out
    try:
        for name in ("mlflow", "alembic", "sqlalchemy"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        keys = set(client.get_run(run_id).data.metrics)
        wanted = [k for k in SYSTEM_SERIES if k in keys] + sorted(
            k for k in keys if k.startswith("system/gpu") and k.endswith(("_utilization_percent", "_memory_used_mb")))
        series = {}
        for key in wanted:
            points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))
            if points:
                series[key] = [(m.timestamp / 1000.0, float(m.value)) for m in points]
    except Exception as exc:  # noqa: BLE001 - mlflow raises many types; a report without this section is fine
        out["note"] = f"the MLflow run {run_id} could not be read from {uri}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return out
    if not series:
        out["note"] = f"the MLflow run {run_id} holds no system metrics"
        return out
    t0 = min(points[0][0] for points in series.values())
    out["available"] = True
    for key, points in series.items():
        values = [v for _, v in points]
        out["series"][key] = {"label": SYSTEM_SERIES.get(key, key.split("/", 1)[-1].replace("_", " ")),
                              "points": len(values), "min": min(values), "max": max(values),
                              "mean": statistics.fmean(values),
                              "duration_seconds": points[-1][0] - points[0][0]}
    out["_series"] = {key: [(t - t0, v) for t, v in points] for key, points in series.items()}
    return out


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _performance_section(path: Path, metadata: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    training = metadata.get("training") or {}
    duration, epochs_run = training.get("duration_seconds"), training.get("epochs_run")
    timings = run.get("latency_ms")
    latency = {"measured": timings is not None}
    if timings:
        latency.update({"texts": len(timings), "p50_ms": _percentile(timings, 50), "p95_ms": _percentile(timings, 95),
                        "mean_ms": statistics.fmean(timings), "max_ms": max(timings)})
    model_bytes = _tree_size(path / "model")
    pt_bytes = _tree_size(path / "intent_classifier.pt")
    return {
        "training_seconds": duration,
        "epochs_run": epochs_run,
        "steps": training.get("steps"),
        "seconds_per_epoch": (duration / epochs_run) if duration and epochs_run else None,
        "trainable_parameters": training.get("trainable_parameters"),
        "frozen_parameters": training.get("frozen_parameters"),
        "latency": latency,
        "batch_texts": run["batch_texts"],
        "batch_seconds": run["batch_seconds"],
        "batch_texts_per_second": run["batch_texts"] / run["batch_seconds"] if run["batch_seconds"] else None,
        "size_bytes": {"model_dir": model_bytes, "intent_classifier_pt": pt_bytes, "total": model_bytes + pt_bytes},
        "hardware": metadata.get("hardware") or {},
    }


def _version_metrics(info: VersionInfo) -> tuple[dict[str, Any], bool]:
    """metrics.json of a version (full, per intent) or its metadata metrics (overall only)."""
    try:
        full = json.loads((info.path / "metrics.json").read_text("utf-8"))
        if isinstance(full, dict):
            return full, True
    except (OSError, json.JSONDecodeError):
        pass
    return dict(info.metrics), False


def _comparison_section(registry: ModelRegistry | None, name: str, metrics: dict[str, Any],
                        metadata: dict[str, Any], deployed: str | None, previous_n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"references": [], "previous_n": previous_n, "deployed_version": deployed, "note": None}
    if registry is None:
        out["note"] = "no registry given: nothing to compare with"
        return out
    versions = [v for v in registry.list_versions() if not v.metadata.get("corrupt")]
    this_number = int(name[1:]) if name[:1] == "v" and name[1:].isdigit() else None
    older = [v for v in versions if v.name != name and (this_number is None or v.number < this_number)]
    picked: dict[str, list[str]] = {}
    if deployed and deployed != name:
        picked.setdefault(deployed, []).append("deployed")
    for v in older[-previous_n:] if previous_n > 0 else []:
        picked.setdefault(v.name, []).append("previous")
    by_name = {v.name: v for v in versions}
    for ref_name in sorted(picked, key=lambda n: (0 if "deployed" in picked[n] else 1, -int(n[1:]))):
        info = by_name.get(ref_name)
        if info is None:
            continue
        other, full = _version_metrics(info)
        overall = {}
        for key in OVERALL_KEYS:
            a, b = metrics.get(key), other.get(key)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                overall[key] = {"this": a, "other": b, "delta": a - b}
        deltas = {}
        if full:
            theirs = other.get("per_intent") or {}
            for label, stats in (metrics.get("per_intent") or {}).items():
                if label in theirs:
                    deltas[label] = stats["f1"] - theirs[label]["f1"]
        ordered = sorted(deltas.items(), key=lambda kv: (kv[1], kv[0]))
        out["references"].append({
            "version": ref_name,
            "roles": picked[ref_name],
            "created_at": info.metadata.get("created_at"),
            "same_data": info.metadata.get("dataset_fingerprint") == metadata.get("dataset_fingerprint"),
            "per_intent_available": full,
            "overall": overall,
            "per_intent_f1_deltas": dict(sorted(deltas.items())),
            "improved": [{"intent": k, "delta": v} for k, v in reversed(ordered) if v >= DELTA_SHOWN],
            "regressed": [{"intent": k, "delta": v} for k, v in ordered if v <= -DELTA_SHOWN],
            "new_intents": sorted(set(metrics.get("per_intent") or {}) - set(other.get("per_intent") or {})) if full else [],
            "removed_intents": sorted(set(other.get("per_intent") or {}) - set(metrics.get("per_intent") or {})) if full else [],
        })
    if not out["references"]:
        out["note"] = "no deployed or earlier version to compare with"
    return out


# ---------------------------------------------------------------- recommendations


def _f(value: Any, digits: int = METRIC_DIGITS) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _rec(severity: str, code: str, message: str, intent: str | None = None) -> dict[str, Any]:
    return {"severity": severity, "code": code, "message": message, "intent": intent}


def recommendations(report: Report, *, min_score: float = 0.8) -> list[dict[str, Any]]:
    """Concrete, number-backed advice from a built report (rules documented by their thresholds)."""
    recs: list[dict[str, Any]] = []
    h = report.headline
    metric, score = h.get("metric", "macro_f1"), h.get("overall_score")
    if isinstance(score, (int, float)) and score < min_score:
        recs.append(_rec("high", "below_gate", f"{metric} {_f(score)} is below the deployment gate {min_score:.2f}: "
                                               "this version would fail `hotelbot validate`"))

    # Regressions against the deployed version.
    for ref in report.comparison.get("references", []):
        if "deployed" not in ref["roles"]:
            continue
        d = ref["overall"].get("overall_score")
        caveat = "" if ref["same_data"] else " (measured on different validation data)"
        if d and d["delta"] < -REGRESSION_OVERALL:
            recs.append(_rec("high", "regression_vs_deployed",
                             f"{metric} {_f(d['this'])} is {_f(-d['delta'])} below the deployed {ref['version']} "
                             f"({_f(d['other'])}){caveat}: do not deploy this version as is"))
        bad = [r for r in ref["regressed"] if r["delta"] <= -REGRESSION_INTENT]
        if bad:
            detail = ", ".join(f"{r['intent']} {r['delta']:+.2f}" for r in bad[:5])
            recs.append(_rec("medium", "intent_regression_vs_deployed",
                             f"F1 dropped vs deployed {ref['version']}{caveat}: {detail}; look at what changed in "
                             "their examples"))

    # Per-intent problems, worst first.
    counts = report.data.get("examples_per_intent") or {}
    intent_recs: list[tuple[float, dict[str, Any]]] = []
    for row in report.per_intent:
        label, recall, precision = row["intent"], row["recall"], row["precision"]
        if recall is not None and recall < LOW_RECALL and row["support"]:
            top = row["confused_with"][0] if row["confused_with"] else None
            with_ = f", confused with {top['intent']} ({top['count']} of {row['support']})" if top else ""
            example = row["misclassified_examples"][0]["text"] if row["misclassified_examples"] else None
            eg = f"; e.g. \u201c{example}\u201d" if example else ""
            intent_recs.append((recall, _rec("high" if recall < 0.5 else "medium", "low_recall",
                                             f"add examples to {label}: recall {recall:.2f}{with_}{eg}", label)))
        if precision is not None and precision < LOW_PRECISION and row["mistaken_for_it"]:
            who = ", ".join(f"{m['intent']} ({m['count']})" for m in row["mistaken_for_it"][:3])
            intent_recs.append((precision, _rec("high" if precision < 0.5 else "medium", "low_precision",
                                                f"{label} absorbs other intents: precision {precision:.2f}, texts of "
                                                f"{who} were predicted as {label}; make its examples more distinctive "
                                                "or add contrasting examples to those intents", label)))
    intent_recs.sort(key=lambda t: (SEVERITY_ORDER[t[1]["severity"]], t[0], t[1]["intent"] or ""))
    recs.extend(r for _, r in intent_recs[:MAX_INTENT_RECOMMENDATIONS])
    if len(intent_recs) > MAX_INTENT_RECOMMENDATIONS:
        recs.append(_rec("low", "more_intents", f"{len(intent_recs) - MAX_INTENT_RECOMMENDATIONS} more weak intent(s) "
                                                "are listed in the per-intent table"))

    # Pairs confused both ways.
    pairs = {(p["true"], p["predicted"]): p["count"] for p in report.confusion.get("top_confusions", [])}
    seen = set()
    for (a, b), n in pairs.items():
        back = pairs.get((b, a))
        if back and (b, a) not in seen and n + back >= 3:
            seen.add((a, b))
            recs.append(_rec("medium", "confused_pair",
                             f"{a} and {b} are confused both ways ({n} + {back} validation texts): rewrite their "
                             "examples so they differ, or merge them if the bot answers both the same way", a))

    # Data.
    few = sorted((label, c["total"]) for label, c in counts.items() if c["total"] < FEW_EXAMPLES)
    if few:
        recs.append(_rec("medium", "few_examples", "add examples to intents with fewer than "
                         f"{FEW_EXAMPLES}: " + ", ".join(f"{label} ({n})" for label, n in few)))
    thin = sorted(label for label, c in counts.items() if 0 < c["validation"] < FEW_VALIDATION_TEXTS)
    if thin:
        recs.append(_rec("low", "small_validation",
                         f"{len(thin)} intent(s) have fewer than {FEW_VALIDATION_TEXTS} validation texts "
                         f"({', '.join(thin[:6])}{'...' if len(thin) > 6 else ''}): their scores move a lot with one "
                         "text; add data"))
    ratio = report.data.get("imbalance_ratio")
    codes = {w.get("code") for w in report.data.get("warnings", [])}
    if (ratio and ratio > IMBALANCE_RATIO) or "class_imbalance" in codes:
        largest = max(counts.items(), key=lambda kv: kv[1]["total"])[0] if counts else "?"
        smallest = min(counts.items(), key=lambda kv: kv[1]["total"])[0] if counts else "?"
        recs.append(_rec("medium", "class_imbalance",
                         f"class imbalance {ratio:.1f}:1 ({largest} vs {smallest}): add examples to the small intents"
                         if ratio else "class imbalance reported by prepare: add examples to the small intents"))
    if "near_duplicates_across_split" in codes:
        recs.append(_rec("low", "near_duplicates", "some validation texts nearly equal training texts: the validation "
                                                   "scores are optimistic; remove the near duplicates"))

    # Training dynamics.
    t = report.training
    gap = t.get("train_validation_gap")
    if gap is not None and gap > TRAIN_VAL_GAP:
        recs.append(_rec("medium", "overfitting",
                         f"large train/validation gap: accuracy {t['train_sample_accuracy']:.2f} on "
                         f"{t['train_sample_size']} training texts vs {t['validation_accuracy']:.2f} on validation; "
                         "add more varied examples, raise dropout/weight decay, or train fewer epochs"))
    train_acc = t.get("train_sample_accuracy")
    if train_acc is not None and train_acc < UNDERFIT_TRAIN_ACCURACY:
        fix = ("raise the learning rate or --patience (early stopping ended the run), or use a larger base model"
               if t.get("early_stopped") else "train more epochs, raise the learning rate, or use a larger base model")
        recs.append(_rec("medium", "underfitting",
                         f"the model fits only {train_acc:.2f} of its own training texts: {fix}"))
    gain = t.get("last_epoch_macro_f1_gain")
    if (not t.get("early_stopped") and gain is not None and gain > STILL_IMPROVING
            and t.get("best_epoch") is not None and t.get("epochs") and t["best_epoch"] == t["epochs"][-1].get("epoch")):
        more = int((t.get("configured_epochs") or len(t["epochs"])) * 1.5 + 0.5)
        recs.append(_rec("medium", "more_epochs",
                         f"early stopping never triggered and validation macro-F1 still rose {gain:+.3f} in the last "
                         f"epoch: train longer (e.g. --epochs {more})"))
    if (t.get("best_validation_loss") is not None and t.get("final_validation_loss") is not None
            and t["final_validation_loss"] > 1.25 * t["best_validation_loss"] + 0.02):
        recs.append(_rec("low", "validation_loss_rising",
                         f"validation loss rose from {t['best_validation_loss']:.3f} to {t['final_validation_loss']:.3f}"
                         ": the model grows over-confident; fewer epochs or more regularisation"))

    # Out of scope and confidence.
    oos = h.get("out_of_scope_recall")
    c = report.confidence
    suggestion = c.get("suggested_threshold")
    if isinstance(oos, (int, float)) and oos < LOW_OOS_RECALL:
        tip = ""
        if suggestion and c.get("threshold") is None:
            tip = (f", or set out_of_scope_threshold {suggestion['threshold']:.2f} (it turns "
                   f"{suggestion['wrong_rejected']} of {suggestion['wrong_total']} wrong answers into fallbacks and "
                   f"loses {suggestion['correct_rejected']} of {suggestion['correct_total']} right ones)")
        recs.append(_rec("high" if oos < 0.5 else "medium", "out_of_scope_recall",
                         f"out_of_scope recall {oos:.2f}: add more varied out-of-scope examples{tip}", OUT_OF_SCOPE))
    at = c.get("at_threshold")
    if at and at["correct_total"] and at["correct_rejected"] / at["correct_total"] > 0.10:
        recs.append(_rec("medium", "threshold_too_high",
                         f"out_of_scope_threshold {at['threshold']:.2f} rejects {at['correct_rejected']} of "
                         f"{at['correct_total']} right answers: lower it"))
    elif at and at["wrong_total"] and at["wrong_rejected"] / at["wrong_total"] < 0.25 and suggestion \
            and suggestion["threshold"] > at["threshold"]:
        recs.append(_rec("low", "threshold_too_low",
                         f"out_of_scope_threshold {at['threshold']:.2f} catches only {at['wrong_rejected']} of "
                         f"{at['wrong_total']} wrong answers; {suggestion['threshold']:.2f} would catch "
                         f"{suggestion['wrong_rejected']}"))

    p95 = (report.performance.get("latency") or {}).get("p95_ms")
    if p95 is not None and p95 > SLOW_P95_MS:
        recs.append(_rec("low", "slow_inference", f"p95 latency {p95:.0f} ms per text: consider a smaller base model "
                                                  "or a shorter max_length"))
    if not recs:
        recs.append(_rec("low", "nothing_stands_out", "no rule fired: the metrics, data and training curves look "
                                                      "healthy for this data set"))
    recs.sort(key=lambda r: SEVERITY_ORDER[r["severity"]])
    return recs


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def make_figures(report: Report, series: dict[str, list[tuple[float, float]]] | None = None) -> dict[str, bytes]:
    """PNG bytes by file name; a figure that fails is skipped with a note (a report without it is fine)."""
    builders = [
        ("examples_per_intent.png", _fig_examples),
        ("training_curves.png", _fig_training),
        ("confusion_matrix.png", _fig_confusion),
        ("confidence.png", _fig_confidence),
        ("resources.png", lambda r: _fig_resources(r, series or {})),
        ("f1_deltas.png", _fig_deltas),
    ]
    out = {}
    with _quiet_matplotlib():
        for name, builder in builders:
            try:
                png = builder(report)
            except Exception as exc:  # noqa: BLE001 - one broken plot must not lose the whole report
                log.warning("figure %s failed: %s", name, exc)
                report.notes.append(f"figure {name} could not be drawn: {exc}")
                continue
            if png:
                out[name] = png
    return out


@contextlib.contextmanager
def _quiet_matplotlib():
    level = logging.getLogger("matplotlib").level
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        yield
    finally:
        logging.getLogger("matplotlib").setLevel(level)


def _fig_examples(report: Report) -> bytes | None:
    counts = report.data.get("examples_per_intent") or {}
    if not counts:
        return None
    plt = _plt()
    items = sorted(counts.items(), key=lambda kv: (kv[1]["total"], kv[0]), reverse=True)
    names = [k for k, _ in items]
    train = [v["train"] for _, v in items]
    val = [v["validation"] for _, v in items]
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.26 * len(names) + 1.0)))
    y = list(range(len(names)))
    ax.barh(y, train, color="#4c78a8", label="train")
    ax.barh(y, val, left=train, color="#f58518", label="validation")
    ax.set_yticks(y, names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("examples")
    ax.axvline(FEW_EXAMPLES, color="#999", ls=":", lw=1)
    for i, (a, b) in enumerate(zip(train, val)):
        ax.text(a + b, i, f" {a + b}", va="center", fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    ax.set_title("Examples per intent (largest first)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def _fig_training(report: Report) -> bytes | None:
    t = report.training
    if not t["epochs"] and not t["train_loss"]:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    if t["train_loss"]:
        ax1.plot([r["epoch"] for r in t["train_loss"]], [r["loss"] for r in t["train_loss"]], color="#4c78a8",
                 lw=1.2, label="training loss (per logging step)")
    ep = [e for e in t["epochs"] if e.get("loss") is not None]
    if ep:
        ax1.plot([e["epoch"] for e in ep], [e["loss"] for e in ep], "o-", color="#e45756", label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("Loss")
    ax1.legend(fontsize=9)
    ax1.grid(alpha=0.3)
    for key, style, color in (("macro_f1", "o-", "#54a24b"), ("accuracy", "s--", "#b279a2")):
        pts = [e for e in t["epochs"] if e.get(key) is not None]
        if pts:
            ax2.plot([e["epoch"] for e in pts], [e[key] for e in pts], style, color=color,
                     label=f"validation {key.replace('_', '-')}")
    if t.get("best_epoch") is not None:
        ax2.axvline(t["best_epoch"], color="#999", ls=":", lw=1, label=f"kept epoch {t['best_epoch']:g}")
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_title("Validation metrics per epoch")
    ax2.legend(fontsize=9, loc="lower right")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _fig_confusion(report: Report) -> bytes | None:
    labels, matrix = report.confusion["labels"], report.confusion["matrix"]
    if not labels:
        return None
    import numpy as np

    plt = _plt()
    index = {label: i for i, label in enumerate(labels)}
    order = [index[label] for label in report.confusion["order"]]
    m = np.asarray(matrix, dtype=float)[np.ix_(order, order)]
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    names = [labels[i] for i in order]
    n = len(names)
    side = min(max(5.0, 0.42 * n + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(side, side))
    eye = np.eye(n, dtype=bool)
    diag = np.ma.masked_where(~eye, norm)
    off = np.ma.masked_where(eye | (norm == 0), norm)
    ax.imshow(diag, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    off_max = float(off.max()) if off.count() else 1.0
    ax.imshow(off, cmap="Reds", vmin=0, vmax=max(off_max, 0.05), interpolation="nearest")
    font = 9 if n > 20 else 10
    for i in range(n):
        for j in range(n):
            v = norm[i, j]
            if v > 0:
                dark = (v > 0.55) if i == j else (v > 0.6 * max(off_max, 0.05))
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=font,
                        color="white" if dark else "#222", fontweight="bold" if i != j else "normal")
    ax.set_xticks(range(n), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=font + 1)
    ax.set_yticks(range(n), names, fontsize=font + 1)
    ax.set_xlabel("predicted intent", fontsize=11)
    ax.set_ylabel("true intent", fontsize=11)
    ax.set_xticks(np.arange(-0.5, n), minor=True)
    ax.set_yticks(np.arange(-0.5, n), minor=True)
    ax.grid(which="minor", color="#eee", lw=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title("Confusion matrix: % of each true intent's texts (blue: right, red: errors)", fontsize=13)
    fig.tight_layout()
    return _png(fig)


def _fig_confidence(report: Report) -> bytes | None:
    values = report.confidence.get("values") or {}
    right, wrong = values.get("correct") or [], values.get("wrong") or []
    if not right and not wrong:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    bins = [i / 20 for i in range(21)]
    ax1.hist(right, bins=bins, color="#54a24b", edgecolor="white")
    ax1.set_ylabel("right")
    ax1.set_title(f"Top-1 confidence: {len(right)} right vs {len(wrong)} wrong predictions")
    ax2.hist(wrong, bins=bins, color="#e45756", edgecolor="white")
    ax2.set_ylabel("wrong")
    ax2.set_xlabel("confidence of the predicted intent")
    ax2.set_xlim(0, 1)
    threshold = report.confidence.get("threshold")
    suggestion = report.confidence.get("suggested_threshold")
    for ax in (ax1, ax2):
        ax.spines[["top", "right"]].set_visible(False)
        if threshold is not None:
            ax.axvline(threshold, color="#333", ls="--", lw=1.2, label=f"out_of_scope threshold {threshold:.2f}")
        if suggestion and (threshold is None or abs(suggestion["threshold"] - threshold) > 1e-9):
            ax.axvline(suggestion["threshold"], color="#888", ls=":", lw=1.4,
                       label=f"suggested threshold {suggestion['threshold']:.2f}")
    if threshold is not None or suggestion:
        ax1.legend(loc="upper left", fontsize=9, frameon=False)
    fig.tight_layout()
    return _png(fig)


def _fig_resources(report: Report, series: dict[str, list[tuple[float, float]]]) -> bytes | None:
    if not series:
        return None
    plt = _plt()
    groups = [("CPU (%)", [k for k in ("system/cpu_percent",) if k in series]),
              ("memory (MB)", [k for k in ("system/ram_used_mb", "system/process_rss_mb") if k in series]),
              ("GPU utilisation (%)", sorted(k for k in series if k.endswith("_utilization_percent"))),
              ("GPU memory (MB)", sorted(k for k in series if k.startswith("system/gpu") and k.endswith("_memory_used_mb")))]
    groups = [(title, keys) for title, keys in groups if keys]
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.3 * len(groups) + 0.6), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], groups):
        for key in keys:
            xs, ys = zip(*series[key])
            ax.plot(xs, ys, lw=1.3, label=SYSTEM_SERIES.get(key, key.split("/", 1)[-1]))
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8, loc="best")
        if "%" in title:
            ax.set_ylim(0, 105)  # a line at 100% must not hide under the frame
    axes[-1, 0].set_xlabel("seconds since the first sample")
    axes[0, 0].set_title("Resource usage during training (from the MLflow run)")
    fig.tight_layout()
    return _png(fig)


def _fig_deltas(report: Report) -> bytes | None:
    refs = [r for r in report.comparison.get("references", []) if r["per_intent_f1_deltas"]]
    if not refs:
        return None
    ref = refs[0]
    items = sorted(ref["per_intent_f1_deltas"].items(), key=lambda kv: (kv[1], kv[0]))
    if not any(abs(v) > 1e-12 for _, v in items):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.24 * len(items) + 1.0)))
    ax.barh(range(len(items)), [v for _, v in items],
            color=["#e45756" if v < 0 else "#54a24b" for _, v in items])
    ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=9)
    ax.axvline(0, color="#333", lw=0.8)
    ax.set_xlabel(f"F1 of {report.version} minus F1 of {ref['version']}")
    ax.set_title(f"Per-intent F1 change vs {ref['version']} ({', '.join(ref['roles'])})")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- rendering: shared bits


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _bytes(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _secs(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min ({value:.0f} s)"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.{METRIC_DIGITS}f}"


def _errors_phrase(n: int) -> str:
    return {0: "No validation text is misclassified", 1: "1 validation text is misclassified"}.get(
        n, f"{n} validation texts are misclassified")


def _pairs(items: Iterable[dict[str, Any]]) -> str:
    return ", ".join(f"{d['intent']} ({d['count']})" for d in items) or "-"


def _overall_rows(report: Report) -> list[tuple[str, str]]:
    h = report.headline
    rows = [(k, _f(h.get(k))) for k in OVERALL_KEYS if h.get(k) is not None]
    return rows


def _summary_lines(report: Report) -> list[str]:
    h = report.headline
    label = "staged build, not yet published" if report.version == "staged" else f"version {report.version}"
    lines = [label + (" (deployed)" if h["is_deployed"] else
                                           f" (deployed: {h['deployed_version']})" if h["deployed_version"] else
                                           " (nothing deployed)"),
             f"base model: {h.get('base_model') or '-'}",
             f"created: {h.get('created_at') or '-'}; report generated {report.generated_at}",
             f"validation: {h.get('num_examples') or '-'} texts, {h.get('num_labels')} intents; "
             f"overall_score = {h.get('metric')}"]
    if h.get("out_of_scope_threshold") is not None:
        lines.append(f"out_of_scope threshold: {h['out_of_scope_threshold']:.2f}")
    if h.get("mlflow_run_id"):
        lines.append(f"MLflow run: {h['mlflow_run_id']}")
    return lines


# ---------------------------------------------------------------- HTML

_CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 margin:0;background:#f5f6f8;color:#1d2330;line-height:1.45;font-size:15px}
header{background:#1d3557;color:#fff;padding:24px 40px 18px}
header h1{margin:0 0 6px;font-size:26px}
header p{margin:2px 0;color:#d6deea;font-size:14px}
nav{background:#fff;border-bottom:1px solid #dde1e7;padding:8px 40px;position:sticky;top:0;z-index:1}
nav a{margin-right:16px;color:#1d3557;text-decoration:none;font-size:14px;white-space:nowrap}
nav a:hover{text-decoration:underline}
main{max-width:1320px;margin:0 auto;padding:8px 40px 40px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:18px 24px;margin:20px 0}
h2{margin:0 0 12px;font-size:20px;color:#1d3557}
h3{font-size:16px;margin:18px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:14px}
.card{background:rgba(255,255,255,.12);border-radius:6px;padding:8px 14px;min-width:130px}
.card .v{font-size:22px;font-weight:600;color:#fff}
.card .k{font-size:12px;color:#c5d0e0;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;width:100%;margin:8px 0 12px;font-size:13.5px}
th,td{border-bottom:1px solid #e6e9ee;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600;position:relative}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafbfc}
table.kv{width:auto;min-width:420px}
table.compact{width:auto;min-width:480px}
details{margin:8px 0}
summary{cursor:pointer;color:#1d3557;font-weight:600;font-size:14px}
table.kv th{width:260px}
.bad{color:#b42318;font-weight:600}
.good{color:#067647}
.up{color:#067647;font-weight:600}
.down{color:#b42318;font-weight:600}
.muted{color:#667085}
.small{font-size:12.5px}
.ex{margin:0;padding-left:16px}
.ex li{margin:1px 0}
.note{background:#fff8e6;border-left:4px solid #f0b429;padding:8px 12px;margin:8px 0;font-size:14px}
.warn{background:#fef3f2;border-left:4px solid #d92d20;padding:8px 12px;margin:6px 0;font-size:14px}
figure{margin:10px 0;text-align:center}
figure img{max-width:100%;height:auto;border:1px solid #eef0f3}
figcaption{font-size:13px;color:#667085;margin-top:4px}
.sev{display:inline-block;min-width:64px;text-align:center;border-radius:10px;padding:1px 8px;font-size:12px;
 font-weight:600;margin-right:8px;text-transform:uppercase}
.sev-high{background:#fee4e2;color:#b42318}
.sev-medium{background:#fef0c7;color:#93370d}
.sev-low{background:#e0eaff;color:#2d31a6}
ul.recs{list-style:none;padding:0;margin:0}
ul.recs li{padding:8px 0;border-bottom:1px solid #eef0f3}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:20px}
@media (max-width:1000px){.grid2{grid-template-columns:1fr}}
footer{max-width:1320px;margin:0 auto;padding:0 40px 30px;color:#667085;font-size:13px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


class _Html:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = (),
              row_ids: Sequence[str | None] | None = None, cls: str = "") -> None:
        numeric = set(numeric)
        cls_attr = f' class="{cls}"' if cls else ""
        out = [f"<table{cls_attr}><thead><tr>"]
        out += [f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(header)]
        out.append("</tr></thead><tbody>")
        for r, row in enumerate(rows):
            rid = row_ids[r] if row_ids else None
            out.append(f'<tr id="{_e(rid)}">' if rid else "<tr>")
            for i, cell in enumerate(row):
                raw = cell if isinstance(cell, _Raw) else _e(cell)
                out.append(f'<td class="n">{raw}</td>' if i in numeric else f"<td>{raw}</td>")
            out.append("</tr>")
        out.append("</tbody></table>")
        self.add("".join(out))

    def kv(self, rows: Iterable[tuple[str, Any]]) -> None:
        self.add('<table class="kv"><tbody>' + "".join(
            f"<tr><th>{_e(k)}</th><td>{v if isinstance(v, _Raw) else _e(v)}</td></tr>" for k, v in rows)
            + "</tbody></table>")

    def figure(self, report: Report, name: str, caption: str) -> None:
        png = report.figures.get(name)
        if not png:
            return
        data = base64.b64encode(png).decode("ascii")
        self.add(f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}"/>'
                 f"<figcaption>{_e(caption)}</figcaption></figure>")

    def note(self, text: str | None, cls: str = "note") -> None:
        if text:
            self.add(f'<div class="{cls}">{_e(text)}</div>')


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _cls_metric(value: Any, low: float = LOW_RECALL) -> _Raw:
    text = _e(_f(value))
    if isinstance(value, (int, float)) and value < low:
        return _Raw(f'<span class="bad">{text}</span>')
    return _Raw(text)


def _cls_delta(value: float | None) -> _Raw:
    if value is None:
        return _Raw("-")
    cls = "up" if value >= DELTA_SHOWN else "down" if value <= -DELTA_SHOWN else "muted"
    return _Raw(f'<span class="{cls}">{_e(_delta(value))}</span>')


def _component_facts(c: dict[str, Any]) -> list[tuple[str, str]]:
    """Key facts of one component of the report (see analysis.component_report), for HTML and Markdown."""
    h, kind = c["headline"], c.get("kind", "labels")
    carried = ("carried over from", c["carried_from"] or "- (built for this version)")
    sizes = ("train / validation", f"{c['dataset'].get('train_size', '-')} / {c['dataset'].get('validation_size', '-')}")
    seconds = c["training"].get("duration_seconds")
    took = ("training time", f"{seconds} s" if seconds is not None else "-")
    if kind == "retrieval":
        return [("documents / chunks", f"{h.get('documents', '-')} / {h.get('chunks', '-')}"),
                ("embedding model", c["base_model"] or "-"), ("dimensions", str(h.get("dim", "-"))),
                ("build time", f"{seconds} s" if seconds is not None else "-"),
                ("embedded / reused chunks", f"{h.get('embedded_chunks', '-')} / {h.get('reused_chunks', '-')}"),
                ("retrieval quality", "hotelbot validate --kb-eval"), carried]
    if kind == "generation":
        grounding = c.get("grounding") or {}
        generation = c.get("generation") or {}
        decoding = ", ".join(f"{k} {v}" for k, v in generation.items() if v not in (None, False)) or "-"
        facts = [("overall", f"BLEU {_f(h.get('bleu'), 2)} vs {_f(c['baseline'].get('bleu'), 2)} for the "
                             f"retrieval-only baseline (same {c.get('num_examples', '-')} validation pairs)"),
                 ("architecture", c.get("architecture") or "-"), ("base model", c["base_model"] or "-"), sizes, took,
                 ("grounding", f"top {grounding.get('passages')} passages of {c.get('knowledge_version')}; the "
                               f"reference's document retrieved for {_pct(grounding.get('source_hit_rate'))} of "
                               "the pairs" if c.get("grounded") and grounding else "none (no knowledge base)"),
                 ("decoding", decoding), carried]
        if c.get("bleu_signature"):
            facts.append(("BLEU signature", c["bleu_signature"]))
        return facts
    return [("overall score", f"{_f(h.get('overall_score'))} ({h.get('metric')})"),
            ("base model", c["base_model"] or "-"), sizes, took, carried]


def _component_table(c: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]], tuple[int, ...]]:
    if c.get("kind") == "generation":
        return (["metric", "generator", "retrieval baseline"],
                [(row["metric"], _f(row["generator"]), _f(row["baseline"]) if row["baseline"] is not None else "-")
                 for row in c["rows"]], (1, 2))
    return (["label", "precision", "recall", "F1", "support"],
            [(row["label"], _f(row["precision"]), _f(row["recall"]), _f(row["f1"]), row["support"])
             for row in c["rows"]], (1, 2, 3, 4))


def render_html(report: Report) -> str:
    """One self-contained HTML document (inline CSS, PNG data URIs; well-formed XML as well)."""
    h = report.headline
    doc = _Html()
    doc.add('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
            f"<title>hotelbot report {_e(report.version)}</title><style>{_CSS}</style></head><body>")
    doc.add(f'<header><h1>hotelbot intent classifier: report for {_e(report.version)}</h1>')
    for line in _summary_lines(report):
        doc.add(f"<p>{_e(line)}</p>")
    doc.add('<div class="cards">')
    for key in ("overall_score", "accuracy", "macro_f1", "weighted_f1", "in_scope_accuracy", "out_of_scope_recall"):
        if h.get(key) is not None:
            label = f"overall ({h['metric']})" if key == "overall_score" else key.replace("_", " ")
            doc.add(f'<div class="card" id="card-{key}"><div class="k">{_e(label)}</div>'
                    f'<div class="v">{_e(_f(h[key]))}</div></div>')
    doc.add("</div></header><nav>")
    for sid, title in SECTIONS:
        doc.add(f'<a href="#{sid}">{_e(title)}</a>')
    doc.add("</nav><main>")
    for number, (sid, title) in enumerate(SECTIONS, 1):
        doc.add(f'<section id="{sid}"><h2>{number}. {_e(title)}</h2>')
        getattr(_HtmlSections, sid.replace("-", "_"))(doc, report)
        doc.add("</section>")
    if report.components:
        doc.add('<section id="components"><h2>Other components</h2>')
        for cname, c in report.components.items():
            doc.add(f"<h3>{_e(cname)}</h3>")
            doc.kv(_component_facts(c))
            header, rows, numeric = _component_table(c)
            if rows:
                doc.table(header, rows, numeric=numeric)
            if c.get("samples"):
                doc.add("<h4>Sample replies (validation)</h4>")
                doc.table(["message", "reference", "generated", "retrieval baseline"],
                          [(x["message"], x["reference"], x["generated"], x["baseline"]) for x in c["samples"]])
        doc.add("</section>")
    doc.add("</main><footer>")
    for note in report.notes:
        doc.add(f"<p>note: {_e(note)}</p>")
    doc.add(f"<p>Generated by hotelbot from {_e(report.source)} at {_e(report.generated_at)}. "
            f"Metrics are rendered with {METRIC_DIGITS} decimals from the version's metrics.json.</p>")
    doc.add("</footer></body></html>\n")
    return "".join(doc.parts)


class _HtmlSections:
    @staticmethod
    def data(doc: _Html, r: Report) -> None:
        d = r.data
        doc.kv([("train texts", d["train_size"]), ("validation texts", d["validation_size"]),
                ("intents", d["num_labels"]),
                ("largest / smallest intent", f"{d['imbalance_ratio']:.1f}:1" if d["imbalance_ratio"] else "-"),
                ("source", d["source"] or "-"), ("fingerprint", (d["fingerprint"] or "-")[:16])])
        if d["warnings"]:
            doc.add("<h3>Quality warnings from prepare</h3>")
            for w in d["warnings"]:
                doc.note(f"{w.get('code')}: {w.get('message')}", "warn")
        else:
            doc.add('<p class="muted">prepare reported no data-quality warnings.</p>')
        doc.figure(r, "examples_per_intent.png", "Examples per intent, train and validation split")
        rows = sorted(d["examples_per_intent"].items(), key=lambda kv: (kv[1]["total"], kv[0]))
        doc.add("<details><summary>Examples per intent as a table (smallest first)</summary>")
        doc.table(["intent", "train", "validation", "total"],
                  [(k, v["train"], v["validation"],
                    _Raw(f'<span class="bad">{v["total"]}</span>') if v["total"] < FEW_EXAMPLES else v["total"])
                   for k, v in rows], numeric=(1, 2, 3), cls="compact")
        doc.add("</details>")

    @staticmethod
    def training(doc: _Html, r: Report) -> None:
        t = r.training
        doc.kv([("epochs run / configured", f"{_num(t['epochs_run'])} / {_num(t['configured_epochs'])}"),
                ("kept (best) epoch", _num(t["best_epoch"])),
                ("early stopping", ("stopped early" if t["early_stopped"] else "never triggered")
                 + (f" (patience {t['early_stopping_patience']})" if t["early_stopping_patience"] else " (disabled)")),
                ("training time", _secs(t["duration_seconds"])),
                ("final training loss (last logs)", _f(t["final_train_loss"], 3)),
                ("final / best validation loss", f"{_f(t['final_validation_loss'], 3)} / {_f(t['best_validation_loss'], 3)}"),
                ("accuracy on a training sample", f"{_f(t['train_sample_accuracy'])} ({t['train_sample_size'] or 0} texts)"
                 if t["train_sample_accuracy"] is not None else "-"),
                ("validation accuracy", _f(t["validation_accuracy"])),
                ("train - validation gap", _delta(t["train_validation_gap"]))])
        doc.figure(r, "training_curves.png", "Training loss per logging step, validation loss and metrics per epoch")
        if t["epochs"]:
            doc.table(["epoch", "step", "validation loss", "accuracy", "macro-F1"],
                      [(_num(e.get("epoch")), e.get("step"), _f(e.get("loss"), 3), _f(e.get("accuracy")),
                        _f(e.get("macro_f1"))) for e in t["epochs"]], numeric=(0, 1, 2, 3, 4))
        else:
            doc.note("training_history.json holds no per-epoch evaluations")

    @staticmethod
    def confusion(doc: _Html, r: Report) -> None:
        c = r.confusion
        doc.add(f'<p>Rows are true intents, columns predictions, each row normalised to 100%; intents are ordered '
                f'so that those confused with each other sit together. {_errors_phrase(c["total_errors"])}.</p>')
        doc.figure(r, "confusion_matrix.png", "Row-normalised confusion matrix (percent of each true intent)")
        if c["top_confusions"]:
            doc.add("<h3>Most frequent confusions</h3>")
            doc.table(["true intent", "predicted as", "texts", "share of true intent"],
                      [(p["true"], p["predicted"], p["count"], _pct(p["share_of_true"])) for p in c["top_confusions"]],
                      numeric=(2, 3))

    @staticmethod
    def per_intent(doc: _Html, r: Report) -> None:
        doc.add(f'<p>Worst F1 first. Values below {LOW_RECALL:.2f} are red. Examples are misclassified validation '
                'texts (highest confidence first).</p>')
        rows, ids = [], []
        for row in r.per_intent:
            examples = "".join(f"<li>\u201c{_e(x['text'])}\u201d \u2192 {_e(x['predicted'])} "
                               f'<span class="muted">({x["confidence"]:.2f})</span></li>'
                               for x in row["misclassified_examples"])
            rows.append((row["intent"], _cls_metric(row["precision"]), _cls_metric(row["recall"]),
                         _cls_metric(row["f1"]), row["support"], _num(row["train_examples"]),
                         _pairs(row["confused_with"]), _pairs(row["mistaken_for_it"]),
                         _Raw(f'<ul class="ex small">{examples}</ul>' if examples else '<span class="muted">-</span>')))
            ids.append(f"intent-{row['intent']}")
        doc.table(["intent", "precision", "recall", "F1", "support", "train ex.", "predicted as (recall errors)",
                   "mistaken for it (precision errors)", "misclassified examples"], rows, numeric=(1, 2, 3, 4, 5),
                  row_ids=ids)

    @staticmethod
    def confidence(doc: _Html, r: Report) -> None:
        c = r.confidence
        doc.kv([("right predictions: median / 5th pct confidence",
                 f"{_f(c['correct']['median'], 3)} / {_f(c['correct']['p5'], 3)} ({c['correct']['count']} texts)"),
                ("wrong predictions: median / 95th pct confidence",
                 f"{_f(c['wrong']['median'], 3)} / {_f(c['wrong']['p95'], 3)} ({c['wrong']['count']} texts)"),
                ("out_of_scope threshold", f"{c['threshold']:.2f}" if c["threshold"] is not None else
                 "not set (metadata key out_of_scope_threshold)")])
        at = c.get("at_threshold")
        if at:
            doc.add(f"<p>At the threshold {at['threshold']:.2f}: {at['wrong_rejected']} of {at['wrong_total']} wrong "
                    f"answers become out_of_scope fallbacks, {at['correct_rejected']} of {at['correct_total']} right "
                    f"answers are lost; {_pct(at['rejected_share'])} of texts are rejected; accuracy with the "
                    f"threshold applied {_f(at['accuracy_with_threshold'])}.</p>")
        s = c.get("suggested_threshold")
        if s:
            doc.add(f'<p class="muted">A threshold of {s["threshold"]:.2f} would turn {s["wrong_rejected"]} of '
                    f'{s["wrong_total"]} wrong answers into fallbacks while losing {s["correct_rejected"]} of '
                    f'{s["correct_total"]} right ones (the best net gain on this validation split among thresholds losing at '
                    f'most {MAX_RIGHT_LOST:.0%} of right answers).</p>')
        doc.figure(r, "confidence.png", "Confidence of the predicted intent for right and wrong predictions")

    @staticmethod
    def resources(doc: _Html, r: Report) -> None:
        res = r.resources
        hw = res.get("hardware") or {}
        if hw:
            doc.kv([("device", hw.get("device", "-")), ("CPU cores / torch threads",
                                                        f"{hw.get('cpu_count', '-')} / {hw.get('torch_threads', '-')}"),
                    ("RAM", f"{hw.get('ram_gb', '-')} GB"), ("GPUs", ", ".join(hw.get("gpus") or []) or "none"),
                    ("platform", hw.get("platform", "-"))])
        if not res["available"]:
            doc.note(res["note"])
            return
        doc.table(["series", "samples", "min", "mean", "max"],
                  [(s["label"], s["points"], f"{s['min']:.1f}", f"{s['mean']:.1f}", f"{s['max']:.1f}")
                   for s in res["series"].values()], numeric=(1, 2, 3, 4))
        doc.add(f'<p class="muted small">MLflow run {_e(res["run_id"])} in {_e(res["tracking_uri"])}</p>')
        doc.figure(r, "resources.png", "CPU, memory (and GPU) during training")

    @staticmethod
    def performance(doc: _Html, r: Report) -> None:
        p = r.performance
        lat = p["latency"]
        doc.kv([("training time", _secs(p["training_seconds"])),
                ("epochs / steps", f"{_num(p['epochs_run'])} / {_num(p['steps'])}"),
                ("time per epoch", _secs(p["seconds_per_epoch"])),
                ("inference latency p50 / p95 (one text)",
                 f"{_ms(lat.get('p50_ms'))} / {_ms(lat.get('p95_ms'))} over {lat['texts']} texts" if lat["measured"]
                 else "not measured"),
                ("batch throughput (validation split)", f"{p['batch_texts_per_second']:.0f} texts/s"
                 if p["batch_texts_per_second"] else "-"),
                ("model/ size", _bytes(p["size_bytes"]["model_dir"])),
                ("intent_classifier.pt size", _bytes(p["size_bytes"]["intent_classifier_pt"])),
                ("parameters trainable / frozen", f"{_num(p['trainable_parameters'])} / {_num(p['frozen_parameters'])}")])

    @staticmethod
    def comparison(doc: _Html, r: Report) -> None:
        c = r.comparison
        if not c["references"]:
            doc.note(c["note"] or "nothing to compare with")
            return
        keys = [k for k in OVERALL_KEYS if any(k in ref["overall"] for ref in c["references"])]
        header = ["metric", r.version] + [f"{ref['version']} ({', '.join(ref['roles'])})" for ref in c["references"]]
        rows = []
        for key in keys:
            this = next((ref["overall"][key]["this"] for ref in c["references"] if key in ref["overall"]), None)
            cells: list[Any] = [key, _f(this)]
            for ref in c["references"]:
                d = ref["overall"].get(key)
                cells.append(_Raw(f"{_e(_f(d['other']))} ({_cls_delta(d['delta'])})") if d else "-")
            rows.append(cells)
        doc.add("<p>Each cell: the other version's value and (this version minus it).</p>")
        doc.table(header, rows, numeric=tuple(range(1, len(header))))
        for ref in c["references"]:
            doc.add(f"<h3>vs {_e(ref['version'])} ({_e(', '.join(ref['roles']))})</h3>")
            if not ref["same_data"]:
                doc.note("trained and validated on different data: deltas are indicative only")
            if not ref["per_intent_available"]:
                doc.note(f"{ref['version']} has no metrics.json: overall metrics only")
                continue
            improved = ", ".join(f"{d['intent']} {d['delta']:+.3f}" for d in ref["improved"]) or "none"
            regressed = ", ".join(f"{d['intent']} {d['delta']:+.3f}" for d in ref["regressed"]) or "none"
            doc.add(f'<p><span class="up">improved F1</span> (\u2265 {DELTA_SHOWN}): {_e(improved)}<br/>'
                    f'<span class="down">regressed F1</span>: {_e(regressed)}</p>')
            if ref["new_intents"] or ref["removed_intents"]:
                doc.add(f"<p>new intents: {_e(', '.join(ref['new_intents']) or 'none')}; removed: "
                        f"{_e(', '.join(ref['removed_intents']) or 'none')}</p>")
        doc.figure(r, "f1_deltas.png", "Per-intent F1 change against the first version listed above")

    @staticmethod
    def recommendations(doc: _Html, r: Report) -> None:
        doc.add('<ul class="recs">')
        for rec in r.recommendations:
            doc.add(f'<li><span class="sev sev-{_e(rec["severity"])}">{_e(rec["severity"])}</span>'
                    f'{_e(rec["message"])} <span class="muted small">[{_e(rec["code"])}]</span></li>')
        doc.add("</ul>")


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ---------------------------------------------------------------- Markdown


def _md(value: Any) -> str:
    return str("-" if value is None else value).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> list[str]:
    numeric = set(numeric)
    lines = ["| " + " | ".join(_md(h) for h in header) + " |",
             "|" + "|".join("---:" if i in numeric else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(report: Report, figures_dir: str | None = None) -> str:
    """The same content as Markdown; images link to ``figures_dir/NAME`` (omitted when None)."""
    r = report
    out: list[str] = [f"# hotelbot intent classifier: report for {r.version}", ""]
    out += [f"- {line}" for line in _summary_lines(r)] + [""]
    out += _md_table(["metric", "value"], _overall_rows(r), numeric=(1,))
    out += ["Sections: " + " · ".join(f"[{title}](#{sid})" for sid, title in SECTIONS), ""]

    def fig(name: str, caption: str) -> None:
        if figures_dir is not None and name in r.figures:
            out.extend([f"![{caption}]({figures_dir}/{name})", ""])

    def section(number: int, sid: str, title: str) -> None:
        out.extend([f'<a id="{sid}"></a>', "", f"## {number}. {title}", ""])

    titles = dict(SECTIONS)
    d = r.data
    section(1, "data", titles["data"])
    ratio = f"{d['imbalance_ratio']:.1f}:1" if d["imbalance_ratio"] else "-"
    out += [f"- train texts: {d['train_size']}, validation texts: {d['validation_size']}, intents: {d['num_labels']}",
            f"- largest / smallest intent: {ratio}",
            f"- source: {d['source'] or '-'}", ""]
    if d["warnings"]:
        out += ["Quality warnings from prepare:", ""] + [f"- **{w.get('code')}**: {w.get('message')}"
                                                         for w in d["warnings"]] + [""]
    else:
        out += ["prepare reported no data-quality warnings.", ""]
    fig("examples_per_intent.png", "Examples per intent")
    rows = sorted(d["examples_per_intent"].items(), key=lambda kv: (kv[1]["total"], kv[0]))
    out += _md_table(["intent", "train", "validation", "total"],
                     [(k, v["train"], v["validation"], v["total"]) for k, v in rows], numeric=(1, 2, 3))

    t = r.training
    section(2, "training", titles["training"])
    out += [f"- epochs run / configured: {_num(t['epochs_run'])} / {_num(t['configured_epochs'])}; kept epoch "
            f"{_num(t['best_epoch'])}; early stopping "
            f"{'stopped early' if t['early_stopped'] else 'never triggered'}",
            f"- training time: {_secs(t['duration_seconds'])}",
            f"- final training loss {_f(t['final_train_loss'], 3)}, final / best validation loss "
            f"{_f(t['final_validation_loss'], 3)} / {_f(t['best_validation_loss'], 3)}",
            f"- accuracy on {t['train_sample_size'] or 0} training texts {_f(t['train_sample_accuracy'])} vs validation "
            f"{_f(t['validation_accuracy'])} (gap {_delta(t['train_validation_gap'])})", ""]
    fig("training_curves.png", "Training curves")
    if t["epochs"]:
        out += _md_table(["epoch", "step", "validation loss", "accuracy", "macro-F1"],
                         [(_num(e.get("epoch")), e.get("step"), _f(e.get("loss"), 3), _f(e.get("accuracy")),
                           _f(e.get("macro_f1"))) for e in t["epochs"]], numeric=(0, 1, 2, 3, 4))

    c = r.confusion
    section(3, "confusion", titles["confusion"])
    out += [f"Rows are true intents, normalised to 100%, ordered so that confused intents sit together. "
            f"{_errors_phrase(c['total_errors'])}.", ""]
    fig("confusion_matrix.png", "Confusion matrix")
    if c["top_confusions"]:
        out += _md_table(["true intent", "predicted as", "texts", "share of true intent"],
                         [(p["true"], p["predicted"], p["count"], _pct(p["share_of_true"]))
                          for p in c["top_confusions"]], numeric=(2, 3))

    section(4, "per-intent", titles["per-intent"])
    out += ["Worst F1 first.", ""]
    out += _md_table(["intent", "precision", "recall", "F1", "support", "train ex.", "predicted as", "mistaken for it",
                      "misclassified examples"],
                     [(row["intent"], _f(row["precision"]), _f(row["recall"]), _f(row["f1"]), row["support"],
                       _num(row["train_examples"]), _pairs(row["confused_with"]), _pairs(row["mistaken_for_it"]),
                       "; ".join(f"\u201c{x['text']}\u201d \u2192 {x['predicted']} ({x['confidence']:.2f})"
                                 for x in row["misclassified_examples"]) or "-")
                      for row in r.per_intent], numeric=(1, 2, 3, 4, 5))

    cf = r.confidence
    section(5, "confidence", titles["confidence"])
    out += [f"- right predictions: median confidence {_f(cf['correct']['median'], 3)}, 5th percentile "
            f"{_f(cf['correct']['p5'], 3)} ({cf['correct']['count']} texts)",
            f"- wrong predictions: median confidence {_f(cf['wrong']['median'], 3)}, 95th percentile "
            f"{_f(cf['wrong']['p95'], 3)} ({cf['wrong']['count']} texts)",
            "- out_of_scope threshold: " + (f"{cf['threshold']:.2f}" if cf["threshold"] is not None else "not set")]
    at = cf.get("at_threshold")
    if at:
        out.append(f"- at the threshold: {at['wrong_rejected']} of {at['wrong_total']} wrong answers become fallbacks, "
                   f"{at['correct_rejected']} of {at['correct_total']} right answers are lost; accuracy with the "
                   f"threshold {_f(at['accuracy_with_threshold'])}")
    s = cf.get("suggested_threshold")
    if s:
        out.append(f"- suggested threshold {s['threshold']:.2f}: catches {s['wrong_rejected']} of {s['wrong_total']} "
                   f"wrong answers, loses {s['correct_rejected']} of {s['correct_total']} right ones")
    out.append("")
    fig("confidence.png", "Confidence histogram")

    res = r.resources
    section(6, "resources", titles["resources"])
    hw = res.get("hardware") or {}
    if hw:
        out += [f"- device {hw.get('device', '-')}, {hw.get('cpu_count', '-')} CPU cores, {hw.get('ram_gb', '-')} GB RAM, "
                f"GPUs: {', '.join(hw.get('gpus') or []) or 'none'}", ""]
    if res["available"]:
        out += _md_table(["series", "samples", "min", "mean", "max"],
                         [(s["label"], s["points"], f"{s['min']:.1f}", f"{s['mean']:.1f}", f"{s['max']:.1f}")
                          for s in res["series"].values()], numeric=(1, 2, 3, 4))
        fig("resources.png", "Resource usage")
    else:
        out += [f"> note: {res['note']}", ""]

    p = r.performance
    lat = p["latency"]
    section(7, "performance", titles["performance"])
    out += [f"- training time: {_secs(p['training_seconds'])} ({_num(p['epochs_run'])} epochs, {_num(p['steps'])} steps, "
            f"{_secs(p['seconds_per_epoch'])} per epoch)",
            ("- inference latency per text: p50 " + _ms(lat.get("p50_ms")) + ", p95 " + _ms(lat.get("p95_ms"))
             + f" over {lat['texts']} texts") if lat["measured"] else "- inference latency: not measured",
            f"- batch throughput: {p['batch_texts_per_second']:.0f} texts/s" if p["batch_texts_per_second"]
            else "- batch throughput: -",
            f"- model size: model/ {_bytes(p['size_bytes']['model_dir'])}, intent_classifier.pt "
            f"{_bytes(p['size_bytes']['intent_classifier_pt'])}",
            f"- parameters trainable / frozen: {_num(p['trainable_parameters'])} / {_num(p['frozen_parameters'])}", ""]

    cmp_ = r.comparison
    section(8, "comparison", titles["comparison"])
    if not cmp_["references"]:
        out += [f"> note: {cmp_['note'] or 'nothing to compare with'}", ""]
    else:
        keys = [k for k in OVERALL_KEYS if any(k in ref["overall"] for ref in cmp_["references"])]
        header = ["metric", r.version] + [f"{ref['version']} ({', '.join(ref['roles'])})" for ref in cmp_["references"]]
        rows = []
        for key in keys:
            this = next((ref["overall"][key]["this"] for ref in cmp_["references"] if key in ref["overall"]), None)
            cells = [key, _f(this)]
            for ref in cmp_["references"]:
                dd = ref["overall"].get(key)
                cells.append(f"{_f(dd['other'])} ({_delta(dd['delta'])})" if dd else "-")
            rows.append(cells)
        out += ["Each cell: the other version's value and (this version minus it).", ""]
        out += _md_table(header, rows, numeric=tuple(range(1, len(header))))
        for ref in cmp_["references"]:
            out.append(f"**vs {ref['version']} ({', '.join(ref['roles'])})**"
                       + ("" if ref["same_data"] else " (different data: indicative only)"))
            out.append("")
            if ref["per_intent_available"]:
                out.append("- improved F1: " + (", ".join(f"{d_['intent']} {d_['delta']:+.3f}" for d_ in ref["improved"])
                                                or "none"))
                out.append("- regressed F1: " + (", ".join(f"{d_['intent']} {d_['delta']:+.3f}" for d_ in ref["regressed"])
                                                 or "none"))
            else:
                out.append("- no metrics.json: overall metrics only")
            out.append("")
        fig("f1_deltas.png", "Per-intent F1 change")

    section(9, "recommendations", titles["recommendations"])
    out += [f"- **{rec['severity']}** {rec['message']} `[{rec['code']}]`" for rec in r.recommendations] + [""]
    if r.components:
        out += ['<a id="components"></a>', "", "## Other components", ""]
        for cname, c in r.components.items():
            out += [f"### {cname}", ""] + [f"- {key}: {value}" for key, value in _component_facts(c)] + [""]
            header, rows, numeric = _component_table(c)
            if rows:
                out += _md_table(header, rows, numeric=numeric)
            if c.get("samples"):
                out += ["Sample replies (validation):", ""]
                out += _md_table(["message", "reference", "generated", "retrieval baseline"],
                                 [(x["message"], x["reference"], x["generated"], x["baseline"]) for x in c["samples"]])
    if r.notes:
        out += ["---", ""] + [f"- note: {n}" for n in r.notes] + [""]
    out += [f"_Generated by hotelbot from {r.source} at {r.generated_at}._", ""]
    return "\n".join(out)


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), ensure_ascii=False, indent=2, allow_nan=False) + "\n"


# ---------------------------------------------------------------- writing


def render(report: Report, fmt: str, figures_dir: str | None = None) -> str:
    if fmt == "html":
        return render_html(report)
    if fmt == "md":
        return render_markdown(report, figures_dir)
    if fmt == "json":
        return render_json(report)
    raise ReportError(f"unknown report format {fmt!r}: choose one of {', '.join(FORMATS)}")


def figures_dir_for(markdown_path: Path) -> Path:
    """Where the PNGs of a Markdown report live: ``<stem>_figures/`` next to it."""
    return markdown_path.with_name(f"{markdown_path.stem}_figures")


def write_report(report: Report, fmt: str, path: Path) -> list[Path]:
    """Write one format to ``path`` (atomically); Markdown also writes its PNGs. Returns the paths written."""
    path = Path(path)
    written = []
    try:
        if fmt == "md":
            fig_dir = figures_dir_for(path)
            for name, png in sorted(report.figures.items()):
                atomic_write_bytes(fig_dir / name, png)
                written.append(fig_dir / name)
            text = render_markdown(report, fig_dir.name if report.figures else None)
        else:
            text = render(report, fmt)
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot write the report to {path}: {exc.strerror or exc}") from None
    return [path, *written]


def write_report_files(report: Report, out_dir: Path) -> dict[str, Path]:
    """``report.html``, ``report.md`` (+ ``report_figures/*.png``) and ``report.json`` in ``out_dir``.

    Safe to call on a registry staging directory before publishing: only files below ``out_dir`` are
    written, so they become part of the version and its checksums.
    """
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for fmt in FORMATS:
        target = out_dir / f"{REPORT_STEM}.{EXTENSIONS[fmt]}"
        write_report(report, fmt, target)
        paths[fmt] = target
    if report.figures:
        paths["figures"] = figures_dir_for(out_dir / f"{REPORT_STEM}.md")
    return paths


def training_report_dir(reports_dir: Path, version: str) -> Path:
    from .registry import check_version_name

    return Path(reports_dir) / TRAINING_REPORTS_DIR / check_version_name(version)


def log_report_artifacts(report: Report, paths: dict[str, Path], artifact_path: str = "report") -> str | None:
    """Attach the written files to the version's MLflow run. Returns None, or why it could not (non-fatal)."""
    uri, run_id = report.mlflow.get("tracking_uri"), report.mlflow.get("run_id")
    if not uri or not run_id:
        return "no MLflow run recorded for this version; the report was not logged as an artifact"
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        return f"the MLflow store {db} does not exist; the report was not logged as an artifact"
    try:
        for name in ("mlflow", "alembic", "sqlalchemy"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        for key, path in paths.items():
            if path.is_dir():
                client.log_artifacts(run_id, str(path), f"{artifact_path}/{path.name}")
            elif path.is_file():
                client.log_artifact(run_id, str(path), artifact_path)
    except Exception as exc:  # noqa: BLE001 - a report that is written but not attached is still a report
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"could not log the report to MLflow run {run_id}: {first}"
    return None


def write_training_report(
    registry: ModelRegistry,
    version: str | None,
    reports_dir: Path,
    *,
    report: Report | None = None,
    log_artifact: bool = True,
    **build_options: Any,
) -> dict[str, Path]:
    """Build (unless ``report`` is given) and write ``reports_dir/training_reports/<version>/report.*``.

    The files are also logged as artifacts of the version's MLflow run; a failure there is logged and
    appended to ``report.notes``, never raised.
    """
    if report is None:
        report = build_report(registry, version, **build_options)
    elif version is not None and report.version != version:
        report.version = version  # a report built from a staged directory, now published under this name
        report.headline["version"] = version
    paths = write_report_files(report, training_report_dir(reports_dir, report.version))
    if log_artifact:
        problem = log_report_artifacts(report, paths)
        if problem:
            log.warning("%s", problem)
            report.notes.append(problem)
    return paths


__all__ = [
    "FORMATS", "SECTIONS", "SECTION_KEYS", "METRIC_DIGITS", "Report", "ReportError", "build_report",
    "build_report_from_dir", "render_html", "render_markdown", "render_json", "render", "write_report",
    "write_report_files", "write_training_report", "training_report_dir", "log_report_artifacts", "recommendations",
    "confusion_order", "figures_dir_for",
]
