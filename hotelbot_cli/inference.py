"""Predictor: load a registry version and classify texts (batch first).

Two predictors share one interface (``version``, ``labels``, ``config``, ``threshold``,
``probabilities``, ``predict``, ``predict_labels``): :class:`Predictor` on PyTorch, and
:class:`~hotelbot_cli.onnx_runtime.OnnxPredictor` on onnxruntime + tokenizers. :func:`load_predictor`
and :func:`predictor_from_registry` pick the one the version's ``model/runtime.json`` names (override:
``HOTELBOT_RUNTIME=torch|onnx-fp32|onnx-int8``). Importing this module imports neither torch nor
onnxruntime: each is imported inside the code that needs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from .data import OUT_OF_SCOPE, clean_text
from .errors import DataError
from .registry import ModelRegistry, VersionInfo

MODEL_SUBDIR = "model"
log = logging.getLogger("hotelbot.inference")


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
        self.runtime = "torch"

    @classmethod
    def from_version(cls, info: VersionInfo) -> "Predictor":
        from .modeling import load_classifier

        model, tokenizer = load_classifier(info.path / MODEL_SUBDIR)
        return cls(model, tokenizer, info.name)

    @classmethod
    def from_registry(cls, registry: ModelRegistry, version: str | None = None, verify: bool = True) -> "Predictor":
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
        return [OUT_OF_SCOPE if threshold is not None and c < threshold else self.labels[i]
                for c, i in zip(confidence.tolist(), best.tolist())]


def model_dir(info: VersionInfo) -> Path:
    return info.path / MODEL_SUBDIR


AnyPredictor = Union[Predictor, "OnnxPredictor"]  # noqa: F821 - hotelbot_cli.onnx_runtime.OnnxPredictor


def _plan(info: VersionInfo, runtime: str | None) -> tuple[str, bool]:
    """(runtime to load, whether it was asked for explicitly) for a version."""
    from . import onnx_runtime as rt

    asked = rt.requested_runtime(runtime)
    if asked is not None:
        return asked, True
    spec = rt.read_runtime_spec(info.path / MODEL_SUBDIR)
    return (spec["runtime"] if spec else rt.TORCH), False


def _onnx_usable(info: VersionInfo, runtime: str, explicit: bool) -> bool:
    from . import onnx_runtime as rt

    if runtime == rt.TORCH:
        return False
    if not (info.path / MODEL_SUBDIR / rt.ONNX_FILES[runtime]).is_file():
        if explicit:
            log.warning("%s has no %s model; using torch", info.name, runtime)
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("onnxruntime is not installed; %s runs on torch", info.name)
        return False
    return True


def load_predictor(info: VersionInfo, runtime: str | None = None) -> AnyPredictor:
    """The predictor for an (already verified) version: ONNX when its runtime.json (or ``runtime`` /
    ``HOTELBOT_RUNTIME``) names an ONNX runtime whose file exists, else the PyTorch one."""
    from . import onnx_runtime as rt

    chosen, explicit = _plan(info, runtime)
    if _onnx_usable(info, chosen, explicit):
        return rt.OnnxPredictor.from_version(info, chosen)
    return Predictor.from_version(info)


def predictor_from_registry(registry: ModelRegistry, version: str | None = None, verify: bool = True,
                            runtime: str | None = None) -> AnyPredictor:
    """Load ``version`` (default: deployed, else newest) for predict/serve, refusing corrupt versions.

    With an ONNX runtime only the files it reads are checksummed (runtime.json, classifier.json,
    tokenizer.json, tokenizer_config.json, tokenizer.unigram.bin, the .onnx file and its .data), not the ~470 MB
    of PyTorch weights it never opens; the torch runtime checks the whole version as before.
    """
    from . import onnx_runtime as rt

    info = registry.resolve(version)
    if verify and info.metadata.get("corrupt"):
        info = registry.require_intact(info.name)  # raises with the reason
    explicit = rt.requested_runtime(runtime) is not None
    if verify and not explicit:
        # runtime.json decides what gets loaded: check it before believing it.
        rt.require_files_intact(info, [f"{MODEL_SUBDIR}/{rt.RUNTIME_FILE}"])
    chosen, explicit = _plan(info, runtime)
    if _onnx_usable(info, chosen, explicit):
        return rt.OnnxPredictor.from_version(info, chosen, verify=verify)
    if verify:
        info = registry.require_intact(info.name)
    return Predictor.from_version(info)
