"""Metrics, gates and comparisons (scikit-learn; no hub-fetched metric scripts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .data import OUT_OF_SCOPE

METRIC_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1")


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], metric: str = "macro_f1"
) -> dict[str, Any]:
    """Accuracy, macro/weighted P/R/F1, per-intent P/R/F1/support, confusion matrix, overall_score.

    ``labels`` fixes the order of the per-intent table and the confusion matrix; predictions of a label
    outside it (e.g. an older model's intent) count as errors.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(labels)
    extra = sorted(set(y_pred) - set(labels))
    all_labels = labels + extra
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    weighted = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    matrix = confusion_matrix(y_true, y_pred, labels=all_labels)
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "weighted_f1": float(weighted[2]),
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
