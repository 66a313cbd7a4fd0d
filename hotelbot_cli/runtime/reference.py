"""The reference predictor: a version's saved classifier on PyTorch + transformers (imported when one is
built). The export measures the ONNX runtimes against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..data import clean_text
from ..registry import ModelRegistry, VersionInfo
from .detector import OutOfScopeDetector
from .device import place
from .layout import MODEL_SUBDIR, TORCH
from .prediction import Prediction, check_texts


class TorchPredictor:
    """A loaded classifier on PyTorch. ``predict`` takes many texts at once; one text is a batch of one."""

    def __init__(self, model: Any, tokenizer: Any, version: str, model_dir: Path | None = None) -> None:
        """``model_dir``: where the model was saved (a kNN out-of-scope detector reads its memory there)."""
        import torch  # heavy: only a torch predictor needs it (predict on ONNX never imports it)

        self.model = place(model)  # HOTELBOT_DEVICE: CUDA when there is one, else the CPU
        self.device = next(self.model.parameters()).device
        self.tokenizer = tokenizer
        self.version = version
        self.config = model.classifier_config
        self.labels = list(self.config.labels)
        self._detector = OutOfScopeDetector.from_config(self.config, model_dir)
        self._torch = torch
        self.runtime = TORCH

    @classmethod
    def from_version(cls, info: VersionInfo) -> TorchPredictor:
        from ..modeling import load_classifier  # imports torch at module level

        model, tokenizer = load_classifier(info.path / MODEL_SUBDIR)
        return cls(model, tokenizer, info.name, info.path / MODEL_SUBDIR)

    @classmethod
    def from_registry(cls, registry: ModelRegistry, version: str | None = None, verify: bool = True) -> TorchPredictor:
        """Load ``version`` (default: the deployed one, else the newest), refusing corrupt versions."""
        info = registry.resolve(version, verify=verify)
        return cls.from_version(info)

    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        return self.outputs(texts, batch_size)[0]

    def outputs(self, texts: Sequence[str], batch_size: int = 32, embeddings: bool = False) -> tuple[Any, Any]:
        """(softmax over the labels, a tensor; the pooled embeddings as a numpy array, or None unless asked)."""
        torch = self._torch
        rows, pooled = [], []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = [self.config.query_prefix + clean_text(t) for t in texts[start : start + batch_size]]
                enc = self.tokenizer(
                    chunk, padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
                )
                enc.pop("token_type_ids", None)
                out = self.model(
                    input_ids=enc["input_ids"].to(self.device),
                    attention_mask=enc["attention_mask"].to(self.device),
                    **({"return_embedding": True} if embeddings else {}),
                )
                rows.append(torch.softmax(out["logits"].float(), dim=-1).cpu())
                if embeddings:
                    pooled.append(out["embedding"].float().cpu().numpy())
        probs = torch.cat(rows) if rows else torch.empty((0, len(self.labels)))
        if not embeddings:
            return probs, None
        import numpy as np  # with torch, numpy is loaded anyway

        return probs, (np.concatenate(pooled) if pooled else np.zeros((0, 0), dtype=np.float32))

    def _similarities(self, embeddings: Any) -> list[float | None]:
        if embeddings is None:
            return []
        return [float(s) for s in self.detector.similarity(embeddings)]

    def predict(self, texts: Sequence[str], top_k: int = 3, batch_size: int = 32) -> list[Prediction]:
        check_texts(texts)
        probs, pooled = self.outputs(texts, batch_size, embeddings=self.detector.needs_embedding)
        similarities = self._similarities(pooled) or [None] * len(texts)
        k = max(1, min(top_k, len(self.labels)))
        values, indices = probs.topk(k, dim=-1)
        out = []
        for text, vals, idxs, sim in zip(texts, values.tolist(), indices.tolist(), similarities):
            ranked = [{"intent": self.labels[i], "confidence": round(float(v), 6)} for v, i in zip(vals, idxs)]
            intent, fallback = self.detector.decide(ranked[0]["intent"], vals[0], sim)
            out.append(
                Prediction(
                    text, intent, ranked[0]["confidence"], ranked, fallback, None if sim is None else round(sim, 6)
                )
            )
        return out

    @property
    def detector(self) -> OutOfScopeDetector:
        """The version's out-of-scope detector (runtime.detector)."""
        return self._detector.current(self.config)

    @property
    def threshold(self) -> float | None:
        return self.detector.softmax_threshold

    @property
    def query_prefix(self) -> str:
        return self.config.query_prefix

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def predict_labels(self, texts: Sequence[str], batch_size: int = 32, apply_threshold: bool = True) -> list[str]:
        needs = apply_threshold and self.detector.needs_embedding
        probs, pooled = self.outputs(texts, batch_size, embeddings=needs)
        confidence, best = probs.max(dim=-1)
        intents = [self.labels[i] for i in best.tolist()]
        if not apply_threshold:
            return intents
        return self.detector.labels(intents, confidence.tolist(), self._similarities(pooled) if needs else None)
