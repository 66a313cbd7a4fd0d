"""The reference predictor: a version's saved classifier on PyTorch + transformers (imported when one is
built). The export measures the ONNX runtimes against it."""

from __future__ import annotations

from typing import Any, Sequence

from ..data import clean_text
from ..registry import ModelRegistry, VersionInfo
from .layout import MODEL_SUBDIR, TORCH
from .prediction import Prediction, apply_fallback, apply_fallback_labels, check_texts


class TorchPredictor:
    """A loaded classifier on PyTorch. ``predict`` takes many texts at once; one text is a batch of one."""

    def __init__(self, model: Any, tokenizer: Any, version: str) -> None:
        import torch  # heavy: only a torch predictor needs it (predict on ONNX never imports it)

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.version = version
        self.config = model.classifier_config
        self.labels = list(self.config.labels)
        self._torch = torch
        self.runtime = TORCH

    @classmethod
    def from_version(cls, info: VersionInfo) -> "TorchPredictor":
        from ..modeling import load_classifier  # imports torch at module level

        model, tokenizer = load_classifier(info.path / MODEL_SUBDIR)
        return cls(model, tokenizer, info.name)

    @classmethod
    def from_registry(cls, registry: ModelRegistry, version: str | None = None,
                      verify: bool = True) -> "TorchPredictor":
        """Load ``version`` (default: the deployed one, else the newest), refusing corrupt versions."""
        info = registry.resolve(version, verify=verify)
        return cls.from_version(info)

    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        torch = self._torch
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = [self.config.query_prefix + clean_text(t) for t in texts[start:start + batch_size]]
                enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.config.max_length,
                                     return_tensors="pt")
                enc.pop("token_type_ids", None)
                logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])["logits"]
                rows.append(torch.softmax(logits.float(), dim=-1))
        return torch.cat(rows) if rows else torch.empty((0, len(self.labels)))

    def predict(self, texts: Sequence[str], top_k: int = 3, batch_size: int = 32) -> list[Prediction]:
        check_texts(texts)
        probs = self.probabilities(texts, batch_size)
        k = max(1, min(top_k, len(self.labels)))
        values, indices = probs.topk(k, dim=-1)
        threshold = self.threshold
        out = []
        for text, vals, idxs in zip(texts, values.tolist(), indices.tolist()):
            ranked = [{"intent": self.labels[i], "confidence": round(float(v), 6)} for v, i in zip(vals, idxs)]
            intent, fallback = apply_fallback(ranked[0]["intent"], vals[0], threshold)
            out.append(Prediction(text, intent, ranked[0]["confidence"], ranked, fallback))
        return out

    @property
    def threshold(self) -> float | None:
        return getattr(self.config, "oos_threshold", None)

    @property
    def query_prefix(self) -> str:
        return self.config.query_prefix

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def predict_labels(self, texts: Sequence[str], batch_size: int = 32, apply_threshold: bool = True) -> list[str]:
        probs = self.probabilities(texts, batch_size)
        confidence, best = probs.max(dim=-1)
        threshold = self.threshold if apply_threshold else None
        return apply_fallback_labels([self.labels[i] for i in best.tolist()], confidence.tolist(), threshold)
