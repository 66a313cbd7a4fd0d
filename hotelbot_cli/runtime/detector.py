"""The out-of-scope detector a version chose: the softmax confidence threshold, or nearest neighbours.

* ``softmax``: a message whose best intent's probability is below ``threshold`` is out of scope (the
  threshold ``train`` calibrates on validation; ``classifier.json`` ``oos_threshold``).
* ``knn`` (Sun et al., "Out-of-distribution detection with deep nearest neighbors", ICML 2022): a message
  whose pooled embedding has a cosine similarity below ``threshold`` with its ``k``-th nearest in-scope
  training message is out of scope; the intent otherwise still comes from the classifier. The version
  stores those training embeddings (unit rows, float32) in ``model/oos_memory.npy``; its ONNX graphs return
  the pooled ``embedding`` beside the ``logits``.

``train`` measures both on the validation split and records the better one (``training_config.oos_detector``:
auto | softmax | knn) in ``classifier.json`` (``oos_detector``) and the version's metadata
(``out_of_scope_detector``). A ``classifier.json`` without ``oos_detector`` uses the softmax threshold.
numpy is imported on use (see :mod:`hotelbot_cli.runtime`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..data import OUT_OF_SCOPE
from ..errors import ModelError

SOFTMAX = "softmax"
KNN = "knn"
METHODS = (SOFTMAX, KNN)
MEMORY_FILE = "oos_memory.npy"
EMBEDDING_OUTPUT = "embedding"


def unit_rows(x: Any) -> Any:
    """Rows scaled to length 1 (float32); an all-zero row stays zero."""
    import numpy as np  # imported on use (module docstring)

    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def kth_similarity(embeddings: Any, memory: Any, k: int) -> Any:
    """Per row of ``embeddings``: the cosine similarity with its ``k``-th most similar row of ``memory`` (unit
    rows); k larger than the memory takes its least similar row."""
    import numpy as np  # imported on use (module docstring)

    embeddings = np.asarray(embeddings, dtype=np.float32)
    if not len(embeddings):
        return np.zeros(0, dtype=np.float32)
    sims = unit_rows(embeddings) @ np.asarray(memory, dtype=np.float32).T
    k = max(1, min(int(k), sims.shape[1]))
    return -np.partition(-sims, k - 1, axis=1)[:, k - 1]


@dataclass(frozen=True, eq=False)
class OutOfScopeDetector:
    """How a version turns a classifier answer into out_of_scope. ``threshold`` None: never."""

    method: str = SOFTMAX
    threshold: float | None = None
    k: int = 10
    memory: Any = None  # knn: (N, dim) unit float32 rows, the in-scope training embeddings

    @property
    def needs_embedding(self) -> bool:
        """Whether answers need the pooled embedding: a kNN detector's (its similarity is reported even when
        validation found no threshold worth applying)."""
        return self.method == KNN

    @property
    def softmax_threshold(self) -> float | None:
        """The confidence threshold when the softmax detector is in use, else None."""
        return self.threshold if self.method == SOFTMAX else None

    @classmethod
    def from_config(cls, config: Any, model_dir: Path | None) -> OutOfScopeDetector:
        """The detector a classifier config names (its ``oos_detector``, else the softmax ``oos_threshold``);
        a knn detector reads its memory from ``model_dir``."""
        spec = getattr(config, "oos_detector", None)
        if spec is None and isinstance(getattr(config, "extra", None), dict):
            spec = config.extra.get("oos_detector")
        if not spec:
            return cls(SOFTMAX, getattr(config, "oos_threshold", None))
        if isinstance(spec, Mapping) and spec.get("method") == SOFTMAX:
            raise ModelError(
                "classifier.json's oos_detector names the softmax detector, whose threshold is "
                "oos_threshold: remove oos_detector",
                hint="retrain the version with this hotelbot",
            )
        return cls.from_spec(spec, model_dir)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], model_dir: Path | None) -> OutOfScopeDetector:
        import numpy as np  # imported on use (module docstring)

        method = spec.get("method") if isinstance(spec, Mapping) else None
        if method not in METHODS:
            raise ModelError(
                f"unknown out-of-scope detector {method!r} in classifier.json (known: {', '.join(METHODS)})",
                hint="retrain the version with this hotelbot",
            )
        threshold = spec.get("threshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise ModelError(f"the out-of-scope detector's threshold must be a number, got {threshold!r}")
        if method == SOFTMAX:
            return cls(SOFTMAX, None if threshold is None else float(threshold))
        k = spec.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ModelError(f"the kNN out-of-scope detector's k must be a whole number >= 1, got {k!r}")
        if model_dir is None:
            raise ModelError(
                "a kNN out-of-scope detector needs its model directory (for its memory)",
                hint="load the version with TorchPredictor.from_version, or pass model_dir",
            )
        if spec.get("memory", MEMORY_FILE) != MEMORY_FILE:  # the checksum and export paths read this name only
            raise ModelError(
                f"the kNN detector's memory must be {MEMORY_FILE} beside classifier.json, got {spec.get('memory')!r}"
            )
        if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
            raise ModelError(f"the kNN detector's threshold is a cosine similarity in [-1, 1], got {threshold!r}")
        path = Path(model_dir) / MEMORY_FILE
        try:
            memory = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"cannot read the kNN detector's memory {path}: {exc}",
                hint="verify the version (hotelbot verify) or retrain it",
            ) from None
        if not isinstance(memory, np.ndarray) or memory.dtype.kind != "f" or memory.ndim != 2 or not len(memory):
            raise ModelError(
                f"{path} must hold a non-empty (examples, dimensions) float matrix",
                hint="verify the version (hotelbot verify) or retrain it",
            )
        return cls(KNN, None if threshold is None else float(threshold), k, memory.astype(np.float32, copy=False))

    def current(self, config: Any) -> OutOfScopeDetector:
        """This detector when it is kNN; else the softmax one with ``config``'s threshold as it is now (the
        config stays the softmax threshold's source of truth for a loaded predictor)."""
        return self if self.method == KNN else OutOfScopeDetector(SOFTMAX, getattr(config, "oos_threshold", None))

    def to_spec(self) -> dict[str, Any]:
        """What ``classifier.json`` ``oos_detector`` and the metadata record (without the memory)."""
        if self.method == SOFTMAX:
            return {"method": SOFTMAX, "threshold": self.threshold}
        return {
            "method": KNN,
            "threshold": self.threshold,
            "k": self.k,
            "memory": MEMORY_FILE,
            "memory_size": None if self.memory is None else int(len(self.memory)),
        }

    def similarity(self, embeddings: Any) -> Any:
        """knn: each embedding's similarity with its k-th nearest in-scope training message."""
        return kth_similarity(embeddings, self.memory, self.k)

    def decide(self, intent: str, confidence: float, similarity: float | None = None) -> tuple[str, bool]:
        """(intent, fallback): out of scope when the chosen score is below the threshold."""
        if self.threshold is None:
            return intent, False
        score = similarity if self.method == KNN else confidence
        if score is None:
            raise ModelError("the kNN out-of-scope detector needs the text's embedding")
        if score < self.threshold:
            return OUT_OF_SCOPE, True
        return intent, False

    def labels(self, intents: list[str], confidences: Any, similarities: Any = None) -> list[str]:
        """:meth:`decide` on parallel lists; the labels only."""
        sims = similarities if similarities is not None else [None] * len(intents)
        return [
            self.decide(i, float(c), None if s is None else float(s))[0] for i, c, s in zip(intents, confidences, sims)
        ]


def describe(record: Mapping[str, Any] | None) -> str | None:
    """One line for a version's ``out_of_scope_detector`` metadata (None without one)."""
    if not isinstance(record, Mapping) or record.get("method") not in METHODS:
        return None
    threshold = record.get("threshold")
    if record["method"] == SOFTMAX:
        line = (
            f"softmax: confidence below {threshold:.3f} -> out_of_scope"
            if isinstance(threshold, (int, float))
            else "softmax, no threshold (never out_of_scope by confidence)"
        )
    else:
        line = (
            f"kNN: similarity with the {record.get('k')}-th nearest of {record.get('memory_size')} in-scope "
            f"training messages below {threshold:.3f} -> out_of_scope"
            if isinstance(threshold, (int, float))
            else "kNN, no threshold"
        )
    validation = record.get("validation") or {}
    metric = record.get("metric") or "macro_f1"
    scores = [
        f"{name} {v[metric]:.4f}"
        for name, v in validation.items()
        if isinstance(v, Mapping) and isinstance(v.get(metric), (int, float))
    ]
    if len(scores) > 1:
        line += f" (validation {metric}: {', '.join(scores)})"
    return line


__all__ = [
    "EMBEDDING_OUTPUT",
    "KNN",
    "MEMORY_FILE",
    "METHODS",
    "OutOfScopeDetector",
    "SOFTMAX",
    "describe",
    "kth_similarity",
    "unit_rows",
]
