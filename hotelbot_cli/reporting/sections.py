"""The data of each report section, computed from a version's files and one run of its model.

Each ``_*_section`` takes plain data (``metrics.json``, ``training_history.json``, ``metadata.json``, the
validation examples, the model run of :mod:`.build`) and returns the dict the report stores; nothing here
loads a model or renders anything.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ..data import OUT_OF_SCOPE
from ..registry import ModelRegistry, VersionInfo
from ..runtime import apply_fallback_labels
from ..runtime.detector import describe as describe_detector
from .report import OVERALL_KEYS, SYSTEM_SERIES
from .tracking import _sqlite_path, _system_series

DELTA_SHOWN = 0.02  # per-intent F1 changes at least this large are listed as improved / regressed
MAX_RIGHT_LOST = 0.05  # a suggested out-of-scope threshold may turn at most this share of right answers away


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default) without numpy."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _headline(
    name: str,
    metadata: dict[str, Any],
    metrics: dict[str, Any],
    deployed: str | None,
    threshold: float | None,
    path: Path,
) -> dict[str, Any]:
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
        "out_of_scope_detector": describe_detector(metadata.get("out_of_scope_detector")),
        "dataset_fingerprint": metadata.get("dataset_fingerprint"),
        "mlflow_run_id": metadata.get("mlflow_run_id"),
        "path": str(path),
    }


def _data_section(
    dataset: dict[str, Any], train, validation, labels: list[str], metadata: dict[str, Any]
) -> dict[str, Any]:
    train_counts = Counter(e.intent for e in train)
    val_counts = Counter(e.intent for e in validation)
    all_labels = sorted(set(labels) | set(train_counts) | set(val_counts))
    per_intent = {
        label: {
            "train": train_counts.get(label, 0),
            "validation": val_counts.get(label, 0),
            "total": train_counts.get(label, 0) + val_counts.get(label, 0),
        }
        for label in all_labels
    }
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


def _training_section(
    history: dict[str, Any], metadata: dict[str, Any], metrics: dict[str, Any], run: dict[str, Any]
) -> dict[str, Any]:
    epochs = [
        {
            k: e.get(k)
            for k in ("epoch", "step", "loss", "accuracy", "macro_f1", "macro_precision", "macro_recall", "weighted_f1")
            if k in e
        }
        for e in history.get("epochs") or []
    ]
    train_loss = [
        {"step": r.get("step"), "epoch": r.get("epoch"), "loss": r["loss"], "learning_rate": r.get("learning_rate")}
        for r in history.get("log") or []
        if isinstance(r.get("loss"), (int, float))
    ]
    training = metadata.get("training") or {}
    config = (metadata.get("config") or {}).get("training_config") or {}
    configured = config.get("epochs")
    epochs_run = training.get("epochs_run", epochs[-1]["epoch"] if epochs else None)
    patience = config.get("early_stopping_patience")
    early_stopped = configured is not None and epochs_run is not None and float(epochs_run) < float(configured) - 1e-6
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
    try:  # scipy (heavy) only when there is something to cluster
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import squareform
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return alphabetical
    # Alphabetical input order makes ties (most pairs are never confused) resolve by name.
    dist = [
        [0.0 if i == j else 1.0 - sym[a][b] for j, b in enumerate(alphabetical)] for i, a in enumerate(alphabetical)
    ]
    tree = linkage(squareform(dist, checks=False), method="average", optimal_ordering=True)
    return [alphabetical[i] for i in leaves_list(tree).tolist()]


def _confusion_section(metrics: dict[str, Any]) -> dict[str, Any]:
    labels, matrix = _matrix(metrics)
    order = confusion_order(labels, matrix) if labels else []
    pairs: list[dict[str, Any]] = []
    for i, true in enumerate(labels):
        total = sum(matrix[i]) if i < len(matrix) else 0
        for j, pred in enumerate(labels):
            if i != j and matrix[i][j]:
                pairs.append(
                    {
                        "true": true,
                        "predicted": pred,
                        "count": matrix[i][j],
                        "share_of_true": matrix[i][j] / total if total else None,
                    }
                )
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


def _per_intent_section(
    metrics: dict[str, Any], validation, run: dict[str, Any], data_sec: dict[str, Any]
) -> list[dict[str, Any]]:
    labels, matrix = _matrix(metrics)
    index = {label: i for i, label in enumerate(labels)}
    wrong: dict[str, list[dict[str, Any]]] = {}
    for example, pred, conf in zip(validation, run["predicted"], run["confidences"]):
        if pred != example.intent:
            wrong.setdefault(example.intent, []).append({"text": example.text, "predicted": pred, "confidence": conf})
    rows = []
    for label, stats in (metrics.get("per_intent") or {}).items():
        i = index.get(label)
        confused_with: list[dict[str, Any]]
        mistaken_for_it: list[dict[str, Any]]
        confused_with, mistaken_for_it = [], []
        if i is not None:
            confused_with = sorted(
                ({"intent": labels[j], "count": matrix[i][j]} for j in range(len(labels)) if j != i and matrix[i][j]),
                key=lambda d: (-d["count"], d["intent"]),
            )
            mistaken_for_it = sorted(
                ({"intent": labels[j], "count": matrix[j][i]} for j in range(len(labels)) if j != i and matrix[j][i]),
                key=lambda d: (-d["count"], d["intent"]),
            )
        examples = sorted(wrong.get(label, []), key=lambda d: -d["confidence"])[:3]
        counts = data_sec["examples_per_intent"].get(label, {})
        rows.append(
            {
                "intent": label,
                "precision": stats.get("precision"),
                "recall": stats.get("recall"),
                "f1": stats.get("f1"),
                "support": stats.get("support"),
                "train_examples": counts.get("train"),
                "confused_with": confused_with[:3],
                "mistaken_for_it": mistaken_for_it[:3],
                "misclassified_examples": examples,
            }
        )
    rows.sort(key=lambda r: (r["f1"] if r["f1"] is not None else 0.0, r["recall"] or 0.0, r["intent"]))
    return rows


def _confidence_stats(values: Sequence[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "mean": statistics.fmean(values) if values else None,
        "median": _percentile(values, 50),
        "p5": _percentile(values, 5),
        "p95": _percentile(values, 95),
    }


def _threshold_effect(truth, predicted, confidences, threshold: float) -> dict[str, Any]:
    right = [c for t, p, c in zip(truth, predicted, confidences) if t == p]
    wrong = [c for t, p, c in zip(truth, predicted, confidences) if t != p]
    adjusted = apply_fallback_labels(predicted, confidences, threshold)
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


def _resources_section(metadata: dict[str, Any]) -> dict[str, Any]:
    uri, run_id = metadata.get("mlflow_tracking_uri"), metadata.get("mlflow_run_id")
    out: dict[str, Any] = {
        "available": False,
        "tracking_uri": uri,
        "run_id": run_id,
        "series": {},
        "note": None,
        "hardware": metadata.get("hardware") or {},
    }
    if not uri or not run_id:
        out["note"] = "no MLflow run is recorded in this version's metadata, so no resource usage is available"
        return out
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        out["note"] = f"the MLflow store {db} is not available on this machine; resource usage is not shown"
        return out
    try:
        series = _system_series(uri, run_id)
    except Exception as exc:  # noqa: BLE001 - mlflow raises many types; a report without this section is fine
        out["note"] = (
            f"the MLflow run {run_id} could not be read from {uri}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        )
        return out
    if not series:
        out["note"] = f"the MLflow run {run_id} holds no system metrics"
        return out
    t0 = min(points[0][0] for points in series.values())
    out["available"] = True
    for key, points in series.items():
        values = [v for _, v in points]
        out["series"][key] = {
            "label": SYSTEM_SERIES.get(key, key.split("/", 1)[-1].replace("_", " ")),
            "points": len(values),
            "min": min(values),
            "max": max(values),
            "mean": statistics.fmean(values),
            "duration_seconds": points[-1][0] - points[0][0],
        }
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
    latency: dict[str, Any] = {"measured": timings is not None}
    if timings:
        latency.update(
            {
                "texts": len(timings),
                "p50_ms": _percentile(timings, 50),
                "p95_ms": _percentile(timings, 95),
                "mean_ms": statistics.fmean(timings),
                "max_ms": max(timings),
            }
        )
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


def _comparison_section(
    registry: ModelRegistry | None,
    name: str,
    metrics: dict[str, Any],
    metadata: dict[str, Any],
    deployed: str | None,
    previous_n: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {"references": [], "previous_n": previous_n, "deployed_version": deployed, "note": None}
    if registry is None:
        out["note"] = "no registry given: nothing to compare with"
        return out
    versions = [v for v in registry.list_versions() if not v.manifest.corrupt]
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
        out["references"].append(
            {
                "version": ref_name,
                "roles": picked[ref_name],
                "created_at": info.manifest.created_at,
                "same_data": info.metadata.get("dataset_fingerprint") == metadata.get("dataset_fingerprint"),
                "per_intent_available": full,
                "overall": overall,
                "per_intent_f1_deltas": dict(sorted(deltas.items())),
                "improved": [{"intent": k, "delta": v} for k, v in reversed(ordered) if v >= DELTA_SHOWN],
                "regressed": [{"intent": k, "delta": v} for k, v in ordered if v <= -DELTA_SHOWN],
                "new_intents": sorted(set(metrics.get("per_intent") or {}) - set(other.get("per_intent") or {}))
                if full
                else [],
                "removed_intents": sorted(set(other.get("per_intent") or {}) - set(metrics.get("per_intent") or {}))
                if full
                else [],
            }
        )
    if not out["references"]:
        out["note"] = "no deployed or earlier version to compare with"
    return out
