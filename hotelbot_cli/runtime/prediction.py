"""What every predictor answers: :class:`Prediction`, the :class:`Predictor` interface the torch and ONNX
predictors share, and the out-of-scope fallback rule (:func:`apply_fallback`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

from ..data import OUT_OF_SCOPE, clean_text
from ..errors import DataError


@dataclass
class Prediction:
    text: str
    intent: str
    confidence: float
    top_k: list[dict[str, Any]] = field(default_factory=list)
    fallback: bool = False  # True when the version's out-of-scope detector answered out_of_scope
    # kNN detector only: the similarity with the k-th nearest in-scope training message (None: softmax detector)
    similarity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "text": self.text,
            "intent": self.intent,
            "confidence": self.confidence,
            "top_k": self.top_k,
            "fallback": self.fallback,
        }
        if self.similarity is not None:
            out["out_of_scope_similarity"] = self.similarity
        return out


class Predictor(Protocol):
    """A loaded classifier: :class:`~hotelbot_cli.runtime.reference.TorchPredictor` (PyTorch) or
    :class:`~hotelbot_cli.runtime.onnx.OnnxPredictor` (onnxruntime + tokenizers). ``predict`` takes many
    texts at once; one text is a batch of one."""

    version: str
    labels: list[str]
    config: Any  # modeling.ClassifierConfig or onnx.RuntimeClassifierConfig
    runtime: str  # layout.TORCH, ONNX_FP32 or ONNX_INT8

    @property
    def detector(self) -> Any:  # detector.OutOfScopeDetector: the softmax threshold or the kNN detector chosen
        ...

    @property
    def threshold(self) -> float | None:
        """The softmax confidence threshold in use; None without one or with the kNN detector."""

    @property
    def query_prefix(self) -> str: ...

    @property
    def max_length(self) -> int: ...

    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> Any: ...

    def predict(self, texts: Sequence[str], top_k: int = 3, batch_size: int = 32) -> list[Prediction]: ...

    def predict_labels(self, texts: Sequence[str], batch_size: int = 32, apply_threshold: bool = True) -> list[str]: ...


def apply_fallback(intent: str, confidence: Any, threshold: float | None) -> tuple[str, bool]:
    """(intent, fallback): ``(OUT_OF_SCOPE, True)`` when there is a threshold and ``confidence`` is below
    it, else ``(intent, False)``."""
    if threshold is not None and confidence < threshold:
        return OUT_OF_SCOPE, True
    return intent, False


def apply_fallback_labels(intents: Iterable[str], confidences: Iterable[Any], threshold: float | None) -> list[str]:
    """:func:`apply_fallback` on parallel lists of intents and confidences; the labels only."""
    return [apply_fallback(intent, confidence, threshold)[0] for intent, confidence in zip(intents, confidences)]


def check_texts(texts: Sequence[str]) -> None:
    """Refuse a batch holding an empty (or non-string) text."""
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not clean_text(text):
            raise DataError(f"text {i + 1} is empty")
