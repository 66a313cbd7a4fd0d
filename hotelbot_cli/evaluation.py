"""Metrics, gates and comparisons (scikit-learn's definitions, computed with numpy; no hub-fetched metric
scripts)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from .data import OUT_OF_SCOPE

METRIC_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1")


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], metric: str = "macro_f1"
) -> dict[str, Any]:
    """Accuracy, macro/weighted P/R/F1, per-intent P/R/F1/support, confusion matrix, overall_score.

    ``labels`` fixes the order of the per-intent table and the confusion matrix; predictions of a label
    outside it (e.g. an older model's intent) count as errors. The figures are scikit-learn's
    (``precision_recall_fscore_support`` with ``zero_division=0``, ``accuracy_score``, ``confusion_matrix``)
    to the last bit, computed with numpy alone: importing scikit-learn (and scipy) cost validate and deploy
    ~1.5 s. A test compares both on random inputs.
    """
    import numpy as np  # on use: the CLI imports this module

    labels = list(labels)
    # scikit-learn's refusals, kept: figures over nothing, or over mismatched lists, would be made up
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if not len(y_true):
        raise ValueError("no examples to score")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must not repeat")
    if not set(labels) & set(y_true):
        raise ValueError("at least one of the labels must be in the true labels")
    extra = sorted(set(y_pred) - set(labels))
    all_labels = labels + extra
    index = {label: i for i, label in enumerate(all_labels)}
    matrix = np.zeros((len(all_labels), len(all_labels)), dtype=np.int64)
    for t, p_ in zip(y_true, y_pred):
        if t in index and p_ in index:
            matrix[index[t], index[p_]] += 1
    k = len(labels)
    tp = np.diag(matrix)[:k]
    true_counts, pred_counts = Counter(y_true), Counter(y_pred)  # one pass each (not one per label)
    true_sum = np.array([true_counts[label] for label in labels], dtype=np.int64)
    pred_sum = np.array([pred_counts[label] for label in labels], dtype=np.int64)
    p, r, f = _divide(tp, pred_sum), _divide(tp, true_sum), _divide(2.0 * tp, 1.0 * true_sum + pred_sum)
    s = true_sum
    macro = [float(np.nanmean(x)) if k else float("nan") for x in (p, r, f)]
    weighted = [float(_weighted(x, true_sum)) if k else float("nan") for x in (p, r, f)]
    accuracy = float(np.average(np.asarray(list(y_true), dtype=object) == np.asarray(list(y_pred), dtype=object)))
    out: dict[str, Any] = {
        "accuracy": accuracy,
        "macro_precision": macro[0],
        "macro_recall": macro[1],
        "macro_f1": macro[2],
        "weighted_f1": weighted[2],
        "num_examples": len(y_true),
        "per_intent": {
            label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, label in enumerate(labels)
        },
        "confusion_matrix": {"labels": all_labels, "matrix": matrix.tolist()},
    }
    if OUT_OF_SCOPE in labels:
        in_scope = [(t, p_) for t, p_ in zip(y_true, y_pred) if t != OUT_OF_SCOPE]
        oos = [p_ for t, p_ in zip(y_true, y_pred) if t == OUT_OF_SCOPE]
        out["in_scope_accuracy"] = sum(t == p_ for t, p_ in in_scope) / len(in_scope) if in_scope else None
        out["out_of_scope_recall"] = sum(p_ == OUT_OF_SCOPE for p_ in oos) / len(oos) if oos else None
    out["metric"] = metric
    out["overall_score"] = float(out[metric])
    return out


def _divide(numerator: Any, denominator: Any) -> Any:
    """scikit-learn's ``_prf_divide`` with ``zero_division=0``: float64 quotients, 0 where the denominator is 0."""
    import numpy as np

    mask = denominator == 0
    safe = np.asarray(denominator, dtype=np.float64).copy()
    safe[mask] = 1
    result = np.asarray(numerator, dtype=np.float64) / safe
    result[mask] = 0.0
    return result


def _weighted(values: Any, weights: Any) -> Any:
    """scikit-learn's weighted average (``_nanaverage``): numpy's, unweighted when every weight is 0."""
    import numpy as np

    try:
        return np.average(values, weights=weights)
    except ZeroDivisionError:
        return np.average(values)


def top_confusions(metrics: dict[str, Any], limit: int = 5) -> list[tuple[str, str, int]]:
    """The most frequent (true, predicted, count) mistakes."""
    cm = metrics["confusion_matrix"]
    pairs = []
    for i, true in enumerate(cm["labels"]):
        for j, pred in enumerate(cm["labels"]):
            if i != j and cm["matrix"][i][j]:
                pairs.append((true, pred, int(cm["matrix"][i][j])))
    return sorted(pairs, key=lambda t: (-t[2], t[0], t[1]))[:limit]


@dataclass
class Comparison:
    """How a candidate's metrics differ from a reference model's on the same data."""

    reference_version: str
    deltas: dict[str, float]
    per_intent_f1_deltas: dict[str, float] = field(default_factory=dict)

    def regressions(self, tolerance: float) -> dict[str, float]:
        return {k: v for k, v in self.per_intent_f1_deltas.items() if v < -tolerance}

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_version": self.reference_version,
            "deltas": self.deltas,
            "per_intent_f1_deltas": self.per_intent_f1_deltas,
        }


def compare(candidate: dict[str, Any], reference: dict[str, Any], reference_version: str) -> Comparison:
    deltas = {
        k: candidate[k] - reference[k] for k in METRIC_KEYS + ("overall_score",) if k in candidate and k in reference
    }
    per_intent = {
        label: stats["f1"] - reference["per_intent"][label]["f1"]
        for label, stats in candidate["per_intent"].items()
        if label in reference.get("per_intent", {})
    }
    return Comparison(reference_version, deltas, per_intent)
