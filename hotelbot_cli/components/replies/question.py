"""The question layers: the knowledge base's encoder with its top layers fine-tuned for guest questions, run
in numpy (no torch) on top of the states the query encoder already computes.

The sentence ranker's strongest feature is the cosine of the guest's message and a document sentence. With
the frozen encoder that cosine is the ranker's limit; training (:mod:`.tuning`) fine-tunes the encoder's top
:data:`~hotelbot_cli.runtime.encoder.UPPER_LAYERS` layers on the message side so that a training message
lands near the sentences that answer it. At inference the query encoder (ONNX or torch) returns, beside the
search vector, the hidden states entering those layers; :class:`QuestionLayers` runs the tuned layers on them
and pools: that vector is used for the ranker's cosines only (chunk retrieval keeps the search vector).

A version stores only the change from the base weights, each weight matrix's change cut to low rank
(``question_layers.safetensors`` in ``replies/``, about 1 MB in fp16); the base weights come from the model
cache (the ONNX export's ``upper_layers.safetensors``, or the torch encoder), checked by their sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...errors import ModelError
from ..knowledge.index import normalize_rows

QUESTION_FILE = "question_layers.safetensors"
QUESTION_FORMAT = "hotelbot-question-layers/1"
# The parameters of one BERT layer this module runs (relative to the layer; "<j>." in front for layer j).
LAYER_PARAMETERS = (
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
)
ACTIVATIONS = ("gelu",)  # BERT's exact (erf) GELU: e5, MiniLM


def runs_layers(base: Mapping[str, Any], layers: int) -> bool:
    """Whether ``base`` (upper weights, "<j>.<parameter>") is exactly ``layers`` BERT layers this module runs."""
    return set(base) == {f"{j}.{name}" for j in range(layers) for name in LAYER_PARAMETERS}


def base_digest(base: Mapping[str, np.ndarray]) -> str:
    """sha256 of the base weights (names, shapes, float32 bytes): a change is applied to the weights it was cut from."""
    digest = hashlib.sha256()
    for name in sorted(base):
        value = np.ascontiguousarray(base[name], dtype=np.float32)
        digest.update(f"{name}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def compress(tuned: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], rank: int) -> dict[str, np.ndarray]:
    """The change ``tuned - base`` to store, fp16: each matrix's cut to ``rank`` by truncated SVD (``<name>.u``,
    singular values folded in, and ``<name>.v``), vectors (biases, norms) whole."""
    out: dict[str, np.ndarray] = {}
    for name in sorted(base):
        delta = np.asarray(tuned[name], dtype=np.float64) - np.asarray(base[name], dtype=np.float64)
        if delta.ndim == 2 and 0 < rank < min(delta.shape):
            u, s, vh = np.linalg.svd(delta, full_matrices=False)
            out[f"{name}.u"] = (u[:, :rank] * s[:rank]).astype(np.float16)
            out[f"{name}.v"] = vh[:rank].astype(np.float16)
        else:
            out[name] = delta.astype(np.float16)
    return out


def apply_change(base: Mapping[str, np.ndarray], change: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tuned float32 weights: ``base`` plus the stored ``change`` (:func:`compress`)."""
    weights = {}
    for name, value in base.items():
        w = np.asarray(value, dtype=np.float32)
        if f"{name}.u" in change:
            delta = change[f"{name}.u"].astype(np.float32) @ change[f"{name}.v"].astype(np.float32)
        elif name in change:
            delta = change[name].astype(np.float32)
        else:
            raise ModelError(f"the question layers' change has no entry for {name}")
        if delta.shape != w.shape:
            raise ModelError(f"the question layers' change of {name} is {delta.shape}, the base {w.shape}")
        weights[name] = w + delta
    return weights


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1e-7 (Abramowitz & Stegun 7.1.26; numpy has none, and scipy is not loaded for this)."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class QuestionLayers:
    """The tuned top layers (float32 weights "<j>.<parameter>") and how to run and pool them."""

    def __init__(
        self, weights: Mapping[str, np.ndarray], record: Mapping[str, Any], stored: QuestionChange | None = None
    ) -> None:
        self.stored = stored  # the change these weights were built from (what a version saves)
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.record = dict(record)
        self.layers = int(record["layers"])
        self.heads = int(record["heads"])
        self.eps = float(record["eps"])
        self.pooling = str(record["pooling"])
        if record.get("activation") not in ACTIVATIONS:
            raise ModelError(f"question layers: unsupported activation {record.get('activation')!r}")
        if not runs_layers(self.weights, self.layers):
            raise ModelError("question layers: the weights are not the BERT layers this runtime runs")

    def _layer(self, x: np.ndarray, j: int) -> np.ndarray:
        w = self.weights
        p = f"{j}."
        tokens, dim = x.shape
        size = dim // self.heads

        def linear(v: np.ndarray, name: str) -> np.ndarray:
            return v @ w[f"{p}{name}.weight"].T + w[f"{p}{name}.bias"]

        q, k, v = (
            linear(x, f"attention.self.{n}").reshape(tokens, self.heads, size).transpose(1, 0, 2)
            for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(size)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        context = (scores @ v).transpose(1, 0, 2).reshape(tokens, dim)
        x = _layer_norm(
            linear(context, "attention.output.dense") + x,
            w[f"{p}attention.output.LayerNorm.weight"],
            w[f"{p}attention.output.LayerNorm.bias"],
            self.eps,
        )
        h = linear(x, "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        return _layer_norm(
            linear(h, "output.dense") + x, w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"], self.eps
        )

    def encode(self, states: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dim) float32 L2-normalised vectors of texts from their states entering the top layers (each
        (tokens, dim), no padding)."""
        dim = int(self.weights["0.attention.output.dense.weight"].shape[0])
        out = np.zeros((len(states), dim), dtype=np.float32)
        for i, state in enumerate(states):
            x = np.asarray(state, dtype=np.float32)
            for j in range(self.layers):
                x = self._layer(x, j)
            out[i] = x[0] if self.pooling == "cls" else x.mean(0)
        return normalize_rows(out) if len(states) else out


@dataclass
class QuestionChange:
    """What a version stores: the change from the base weights (:func:`compress`) and the record to run it."""

    change: dict[str, np.ndarray]
    record: dict[str, Any]

    def apply(self, base: Mapping[str, np.ndarray]) -> QuestionLayers:
        """The layers on ``base`` (ModelError when the change was cut from other base weights)."""
        if base_digest(base) != self.record.get("base_sha256"):
            raise ModelError("the question layers were trained on other base weights than this encoder's top layers")
        return QuestionLayers(apply_change(base, self.change), self.record, self)

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.change.values()))

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        metadata = {"format": QUESTION_FORMAT, "record": json.dumps(self.record, sort_keys=True)}
        save_file({k: np.ascontiguousarray(v) for k, v in self.change.items()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: Path) -> QuestionChange:
        """ModelError when ``path`` is not a readable question-layers file."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="np") as handle:
                metadata = handle.metadata() or {}
                change = {k: handle.get_tensor(k) for k in handle.keys()}
            if metadata.get("format") != QUESTION_FORMAT:
                raise ValueError(f"not a {QUESTION_FORMAT} file")
            record = json.loads(metadata["record"])
            if not isinstance(record, dict):
                raise ValueError("no record")
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            raise ModelError(f"cannot read the question layers {path}: {exc}") from None
        return cls(change, record)


def layer_record(
    config: Any, base: Mapping[str, np.ndarray], layers: int, pooling: str, **extra: Any
) -> dict[str, Any]:
    """What :class:`QuestionLayers` needs to run, from a transformers config."""
    return {
        "layers": layers,
        "heads": int(config.num_attention_heads),
        "eps": float(getattr(config, "layer_norm_eps", 1e-12)),
        "activation": str(getattr(config, "hidden_act", "gelu")),
        "pooling": pooling,
        "base_sha256": base_digest(base),
        **extra,
    }


__all__ = [
    "QUESTION_FILE",
    "QUESTION_FORMAT",
    "QuestionChange",
    "QuestionLayers",
    "apply_change",
    "base_digest",
    "compress",
    "layer_record",
    "runs_layers",
]
