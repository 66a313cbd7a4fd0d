"""Predictor: load a registry version and classify texts (batch first)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .data import OUT_OF_SCOPE, clean_text
from .errors import DataError
from .registry import ModelRegistry, VersionInfo

MODEL_SUBDIR = "model"


@dataclass
class Prediction:
    text: str
    intent: str
    confidence: float
    top_k: list[dict[str, Any]] = field(default_factory=list)
    fallback: bool = False  # True when the confidence was below the version's out-of-scope threshold

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "intent": self.intent, "confidence": self.confidence, "top_k": self.top_k,
                "fallback": self.fallback}


class Predictor:
    """A loaded classifier. ``predict`` takes many texts at once; one text is a batch of one."""

    def __init__(self, model: Any, tokenizer: Any, version: str) -> None:
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.version = version
        self.config = model.classifier_config
        self.labels = list(self.config.labels)
        self._torch = torch

    @classmethod
    def from_version(cls, info: VersionInfo) -> "Predictor":
        from .modeling import load_classifier

        model, tokenizer = load_classifier(info.path / MODEL_SUBDIR)
        return cls(model, tokenizer, info.name)

    @classmethod
    def from_registry(cls, registry: ModelRegistry, version: str | None = None, verify: bool = True) -> "Predictor":
        """Load ``version`` (default: the deployed one, else the newest), refusing corrupt versions."""
        info = registry.resolve(version)
        if verify:
            info = registry.require_intact(info.name)
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
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not clean_text(text):
                raise DataError(f"text {i + 1} is empty")
        probs = self.probabilities(texts, batch_size)
        k = max(1, min(top_k, len(self.labels)))
        values, indices = probs.topk(k, dim=-1)
        threshold = self.threshold
        out = []
        for text, vals, idxs in zip(texts, values.tolist(), indices.tolist()):
            ranked = [{"intent": self.labels[i], "confidence": round(float(v), 6)} for v, i in zip(vals, idxs)]
            fallback = threshold is not None and vals[0] < threshold
            intent = OUT_OF_SCOPE if fallback else ranked[0]["intent"]
            out.append(Prediction(text, intent, ranked[0]["confidence"], ranked, fallback))
        return out

    @property
    def threshold(self) -> float | None:
        return getattr(self.config, "oos_threshold", None)

    def predict_labels(self, texts: Sequence[str], batch_size: int = 32, apply_threshold: bool = True) -> list[str]:
        probs = self.probabilities(texts, batch_size)
        confidence, best = probs.max(dim=-1)
        threshold = self.threshold if apply_threshold else None
        return [OUT_OF_SCOPE if threshold is not None and c < threshold else self.labels[i]
                for c, i in zip(confidence.tolist(), best.tolist())]


def model_dir(info: VersionInfo) -> Path:
    return info.path / MODEL_SUBDIR
