"""The out-of-scope threshold: chosen on validation to maximise the metric over all intents."""

from __future__ import annotations

from typing import Any

from ..data import OUT_OF_SCOPE
from ..evaluation import classification_metrics
from ..runtime.prediction import apply_fallback_labels


def calibrate_threshold(probs: Any, y_true: list[str], labels: list[str], metric: str) -> tuple[float | None, dict]:
    """Choose the confidence threshold that maximises ``metric`` over all intents, out_of_scope included.

    Below the threshold a prediction becomes out_of_scope. Only meaningful when the validation split
    has out_of_scope examples; otherwise returns (None, argmax metrics). Ties go to the lowest threshold.
    """
    import numpy as np  # kept off the import path of the CLI

    probs = np.asarray(probs)
    argmax = [labels[i] for i in probs.argmax(axis=1)]
    base = classification_metrics(y_true, argmax, labels, metric)
    if OUT_OF_SCOPE not in labels or OUT_OF_SCOPE not in y_true:
        return None, base
    return best_threshold(probs.max(axis=1), argmax, y_true, labels, metric, base[metric]), base


def best_threshold(
    scores: Any, argmax: list[str], y_true: list[str], labels: list[str], metric: str, base_score: float
) -> float | None:
    """The threshold on ``scores`` (a softmax confidence, a kNN similarity) below which an answer becomes
    out_of_scope that maximises ``metric``: every score rounded to 3 decimals in (0, 1) is a candidate; ties go
    to the lowest; None when none beats ``base_score`` (no threshold)."""
    import numpy as np  # kept off the import path of the CLI

    best_t, best_score = 0.0, base_score
    for t in np.unique(np.round(np.asarray(scores), 3)):
        if t <= 0 or t >= 1:
            continue
        pred = apply_fallback_labels(argmax, scores, t)
        score = classification_metrics(y_true, pred, labels, metric)[metric]
        if score > best_score + 1e-12:
            best_t, best_score = float(t), score
    return best_t if best_t > 0 else None


def apply_threshold(probs: Any, labels: list[str], threshold: float | None) -> list[str]:
    import numpy as np  # kept off the import path of the CLI

    probs = np.asarray(probs)
    argmax = [labels[i] for i in probs.argmax(axis=1)]
    if threshold is None:
        return argmax
    return apply_fallback_labels(argmax, probs.max(axis=1), threshold)
