"""The ONNX sentence encoder: a base model's query encoder on onnxruntime + tokenizers (no torch), from the
model-cache directory :mod:`hotelbot_cli.export.encoder` writes. The knowledge base embeds its queries
with it when the cache holds the export of the exact model its index was built with (same fingerprint).

Importing this module imports neither torch nor onnxruntime nor numpy (they are imported on use)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import ModelError
from .onnx import open_session, thread_budget
from .tokenizers import load_text_encoder

ENCODER_FILE = "encoder.json"
ENCODER_GRAPH = "encoder.onnx"
ENCODER_INT8_GRAPH = "encoder.int8.onnx"
GRAPHS = {"onnx-fp32": ENCODER_GRAPH, "onnx-int8": ENCODER_INT8_GRAPH}
ENCODER_FORMAT = "hotelbot-sentence-encoder/3"  # /2: with the int8 graph; /3: with the upper states and weights
CACHE_SUBDIR = "onnx"
# A reply model may fine-tune the encoder's top UPPER_LAYERS layers for its questions (replies.question): the graph
# also returns the hidden states entering them (UPPER_OUTPUT), and UPPER_WEIGHTS holds their base weights.
UPPER_LAYERS = 2
UPPER_OUTPUT = "upper_hidden_state"
UPPER_WEIGHTS = "upper_layers.safetensors"


def encoder_cache_dir(models_dir: Path, name: str, fingerprint: str) -> Path:
    """Where the ONNX export of the encoder ``name`` with ``fingerprint`` lives in the model cache."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name)).name or "encoder")[:60].strip("._") or "encoder"
    digest = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:16]
    version = ENCODER_FORMAT.rsplit("/", 1)[-1]  # a new format is a new directory: old exports are never misread
    return Path(models_dir) / CACHE_SUBDIR / f"{safe}-{digest}-v{version}"


def transformer_layers(encoder: Any) -> Any:
    """A torch encoder's transformer layers, bottom first (a BERT-like ``encoder.layer`` list); None for an
    architecture without one."""
    return getattr(getattr(encoder, "encoder", None), "layer", None)


def upper_blocks(encoder: Any) -> list[Any]:
    """The top :data:`UPPER_LAYERS` transformer layers of a torch encoder (:func:`transformer_layers`), the
    lower first; [] for an architecture without one."""
    blocks = transformer_layers(encoder)
    return list(blocks)[-UPPER_LAYERS:] if blocks is not None and len(blocks) >= UPPER_LAYERS else []


def upper_parameters(encoder: Any) -> dict[str, Any]:
    """{"<j>.<parameter>": float32 array} of :func:`upper_blocks` (e.g. "0.attention.self.query.weight")."""
    return {
        f"{j}.{name}": p.detach().float().cpu().numpy().copy()
        for j, block in enumerate(upper_blocks(encoder))
        for name, p in block.named_parameters()
    }


class OnnxSentenceEncoder:
    """``embed(texts, kind="query"|"passage")`` -> (n, dim) float32 L2-normalised vectors, as the knowledge
    base's torch Embedder computes them; ``hidden(texts)`` -> the last hidden states and attention mask."""

    def __init__(
        self, session: Any, tokenizer: Any, record: dict[str, Any], directory: Path, runtime: str = "onnx-fp32"
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.record = record
        self.directory = directory
        self.runtime = runtime
        self._inputs = {i.name for i in session.get_inputs()}

    @classmethod
    def load(cls, directory: Path, fingerprint: str, runtime: str = "onnx-fp32") -> OnnxSentenceEncoder:
        """``runtime``: "onnx-fp32" or "onnx-int8" (ModelError when this export has no int8 graph)."""
        directory = Path(directory)
        if runtime not in GRAPHS:
            raise ModelError(f"not a query-encoder runtime: {runtime!r} (use {', '.join(GRAPHS)})")
        try:
            record = json.loads((directory / ENCODER_FILE).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {directory / ENCODER_FILE}: {exc}") from None
        if record.get("format") != ENCODER_FORMAT or record.get("fingerprint") != fingerprint:
            raise ModelError(f"{directory} is not the ONNX export of the encoder {fingerprint}")
        if runtime == "onnx-int8" and not record.get("int8"):
            raise ModelError(f"{directory} has no int8 query encoder")
        tokenizer = load_text_encoder(directory, int(record["max_length"]))
        # int8 runs one text per call (dynamic quantization scales a padded batch as a whole), single-threaded
        threads = 1 if runtime == "onnx-int8" else thread_budget()
        return cls(open_session(directory / GRAPHS[runtime], threads=threads), tokenizer, record, directory, runtime)

    @classmethod
    def find(
        cls, models_dir: Path, name: str, fingerprint: str, runtime: str = "onnx-fp32"
    ) -> OnnxSentenceEncoder | None:
        """The cached export for (name, fingerprint) on ``runtime``, or None when there is none."""
        directory = encoder_cache_dir(models_dir, name, fingerprint)
        if not (directory / ENCODER_FILE).is_file():
            return None
        return cls.load(directory, fingerprint, runtime)

    def _run(self, texts: Sequence[str], kind: str, outputs: list[str]) -> list[Any]:
        prefix = self.record["query_prefix"] if kind == "query" else self.record["passage_prefix"]
        ids, mask = self.tokenizer.encode([prefix + t for t in texts])
        feed = {k: v for k, v in {"input_ids": ids, "attention_mask": mask}.items() if k in self._inputs}
        return [*self.session.run(outputs, feed), mask]

    def embed(self, texts: Sequence[str], *, kind: str, batch_size: int = 32, **_: Any) -> Any:
        import numpy as np

        step = 1 if self.runtime == "onnx-int8" else batch_size
        rows = [self._run(texts[i : i + step], kind, ["embedding"])[0] for i in range(0, len(texts), step)]
        return (
            np.concatenate(rows).astype(np.float32)
            if rows
            else np.zeros((0, int(self.record["dim"])), dtype=np.float32)
        )

    def hidden_from_ids(self, input_ids: Any, attention_mask: Any) -> Any:
        """last_hidden_state (n, tokens, dim) of already tokenized inputs (int64 arrays), e.g. a generator's."""
        import numpy as np

        feed = {
            "input_ids": np.asarray(input_ids, dtype=np.int64),
            "attention_mask": np.asarray(attention_mask, dtype=np.int64),
        }
        return self.session.run(["last_hidden_state"], {k: v for k, v in feed.items() if k in self._inputs})[0]

    def embed_with_states(self, texts: Sequence[str], *, kind: str) -> tuple[Any, list[Any]]:
        """(:meth:`embed`'s vectors, per text its hidden states entering the top :data:`UPPER_LAYERS` layers,
        (tokens, dim) float32); one text per run, so no state is padding. ModelError for an export without them."""
        import numpy as np

        if UPPER_OUTPUT not in self.record.get("outputs", []):
            raise ModelError(f"{self.directory} does not return the upper hidden states")
        vectors, states = [], []
        for text in texts:
            embedding, upper, _ = self._run([text], kind, ["embedding", UPPER_OUTPUT])
            vectors.append(embedding[0])
            states.append(np.asarray(upper[0], dtype=np.float32))
        dim = int(self.record["dim"])
        return (np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)), states

    def upper_weights(self) -> dict[str, Any]:
        """The base weights of the top :data:`UPPER_LAYERS` layers, {"<j>.<parameter>": array} (j from 0, the
        lower first), as :func:`upper_parameters` names them."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(self.directory / UPPER_WEIGHTS)))
        except (OSError, ValueError, SafetensorError) as exc:
            raise ModelError(f"cannot read {self.directory / UPPER_WEIGHTS}: {exc}") from None

    def hidden(self, texts: Sequence[str], kind: str = "query") -> tuple[Any, Any]:
        """(last_hidden_state (n, tokens, dim), attention_mask (n, tokens)) for ``texts`` with ``kind``'s prefix."""
        hidden, mask = self._run(list(texts), kind, ["last_hidden_state"])
        return hidden, mask


__all__ = [
    "CACHE_SUBDIR",
    "ENCODER_FILE",
    "ENCODER_FORMAT",
    "ENCODER_GRAPH",
    "ENCODER_INT8_GRAPH",
    "GRAPHS",
    "OnnxSentenceEncoder",
    "UPPER_LAYERS",
    "UPPER_OUTPUT",
    "UPPER_WEIGHTS",
    "encoder_cache_dir",
    "upper_blocks",
    "upper_parameters",
]
