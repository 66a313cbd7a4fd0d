"""The knowledge base's embedding model: :class:`EmbeddingModel` (what a version records about it),
:class:`Embedder` (queries and passages to L2-normalized vectors, with the model's prefixes and pooling) and
the choice of its query runtime (PyTorch or a verified ONNX encoder)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ...runtime.device import place
from ...data import clean_text
from ...config import load_settings
from ...errors import ModelError
from ...packaged import MARKER_NAME, PACKAGED_MODELS
from .documents import Chunk
from .index import VectorIndex, normalize_rows
from .retrieval import ranking_metrics, read_eval_questions


MAX_EMBED_TOKENS = 512
# Passage-side prefix for models that want one on the query side (e5: "query: " / "passage: ").
PASSAGE_PREFIXES = {"query: ": "passage: "}


def model_fingerprint(location: str) -> str:
    """Identifies the embedding model's weights and tokenizer without hashing hundreds of MB:
    a packaged model by its source file's sha256 (from its conversion marker); a local directory by
    the content of its small files and the names and sizes of files above 64 MiB; a hub id by name."""
    path = Path(location)
    if (path / MARKER_NAME).is_file():
        marker = json.loads((path / MARKER_NAME).read_text("utf-8"))
        return f"packaged:{marker.get('name')}:{marker.get('format_version')}:{marker.get('source_sha256')}"
    if not path.is_dir():
        return f"hub:{location}"
    digest = hashlib.sha256()
    for item in sorted(path.iterdir()):
        if not item.is_file() or item.name.startswith("."):
            continue
        size = item.stat().st_size
        digest.update(f"{item.name}\0{size}\0".encode())
        if size <= 64 * 2**20:
            digest.update(hashlib.sha256(item.read_bytes()).digest())
    return f"dir:{digest.hexdigest()}"


@dataclass(frozen=True)
class EmbeddingModel:
    """How texts become vectors: recorded in index.json, so queries use exactly what the index used."""

    spec: str
    location: str
    query_prefix: str
    passage_prefix: str
    pooling: str
    max_length: int
    dim: int
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingModel:
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise ModelError(f"the index's embedding_model record is incomplete: {exc}") from None

    def same_vectors_as(self, other: EmbeddingModel) -> bool:
        """True when both embed a passage into the same vector (the location may differ)."""
        keys = ("fingerprint", "passage_prefix", "pooling", "max_length", "dim")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No weight-loading progress bar or load report on stderr (a search prints results, not noise)."""
    from ...modeling import quiet_transformers  # modeling imports torch

    with quiet_transformers():
        yield


_E5_NAME_RE = re.compile(r"(^|[/_.-])e5([/_.-]|$)", re.IGNORECASE)


def _input_conventions(resolved: Any) -> tuple[str, str]:
    """(query prefix, pooling) of a resolved model. A directory is recognised as a packaged model by its
    conversion marker, and as an E5 model (which needs "query: "/"passage: ") by its name."""
    if resolved.packaged or resolved.query_prefix:
        return resolved.query_prefix, resolved.pooling
    marker = Path(resolved.location) / MARKER_NAME
    if marker.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            info = PACKAGED_MODELS[json.loads(marker.read_text("utf-8"))["name"]]
            return info.query_prefix, info.pooling
    if _E5_NAME_RE.search(Path(resolved.location).name) or _E5_NAME_RE.search(resolved.spec):
        return "query: ", "mean"
    return resolved.query_prefix, resolved.pooling


class Embedder:
    """A loaded sentence encoder: pooled, L2-normalized float32 vectors for queries and passages."""

    def __init__(self, model: EmbeddingModel, tokenizer: Any, encoder: Any) -> None:
        import inspect

        self.model = model
        self.tokenizer = tokenizer
        self.encoder = place(encoder)  # HOTELBOT_DEVICE: CUDA when there is one, else the CPU
        self.device = next(self.encoder.parameters()).device
        self._accepts = set(inspect.signature(encoder.forward).parameters)

    @classmethod
    def load(cls, spec: str, models_dir: Path, pooling: str = "") -> Embedder:
        """Resolve ``spec`` like ``--base-model`` (packaged name, local directory or hub id) and load it."""
        from ...modeling import load_base_encoder, resolve_base_model  # modeling imports torch

        resolved = resolve_base_model(spec, Path(models_dir))
        with _quiet_transformers():
            tokenizer, encoder = load_base_encoder(resolved, frozen=True)
        config = encoder.config
        limit = int(getattr(config, "max_position_embeddings", MAX_EMBED_TOKENS) or MAX_EMBED_TOKENS)
        if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # these offset positions by padding_idx + 1
        tok_limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_limit, int) and 0 < tok_limit < 100_000:
            limit = min(limit, tok_limit)
        query_prefix, default_pooling = _input_conventions(resolved)
        model = EmbeddingModel(
            spec=spec,
            location=resolved.location,
            query_prefix=query_prefix,
            passage_prefix=PASSAGE_PREFIXES.get(query_prefix, query_prefix),
            pooling=pooling or default_pooling,
            max_length=min(MAX_EMBED_TOKENS, limit),
            dim=int(config.hidden_size),
            fingerprint=model_fingerprint(resolved.location),
        )
        return cls(model, tokenizer, encoder)

    @classmethod
    def for_index(cls, recorded: EmbeddingModel, models_dir: Path | None) -> Embedder:
        """The model an index was built with (its recorded directory, else its spec resolved again, e.g. a
        packaged model converted into this machine's cache), refusing one whose weights changed since."""
        spec = recorded.location if Path(recorded.location).is_dir() else recorded.spec
        if models_dir is None and not Path(spec).is_dir():
            models_dir = load_settings().paths.models_dir
        embedder = cls.load(spec, Path(models_dir or "."), recorded.pooling)
        if embedder.model.fingerprint != recorded.fingerprint:
            raise ModelError(
                f"the embedding model {recorded.spec} ({embedder.model.location}) is not the one the "
                "index was built with",
                hint="rebuild it: hotelbot train --model-type embeddings",
            )
        embedder.model = replace(recorded, location=embedder.model.location)
        return embedder

    def _tokenize(self, texts: Sequence[str]) -> dict[str, Any]:
        """The padded, truncated torch batch of ``texts`` (prefixed already) on the encoder's device."""
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.model.max_length, return_tensors="pt"
        )
        if "token_type_ids" in encoded and "token_type_ids" not in self._accepts:
            del encoded["token_type_ids"]
        return {k: v.to(self.device) for k, v in encoded.items()}

    def embed(
        self,
        texts: Sequence[str],
        *,
        kind: str,
        batch_size: int = 32,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """(len(texts), dim) float32 normalized. ``kind`` is "query" or "passage" (picks the prefix)."""
        import torch

        from ...modeling import pool  # modeling imports torch

        prefix = self.model.query_prefix if kind == "query" else self.model.passage_prefix
        out = np.zeros((len(texts), self.model.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        with torch.inference_mode():
            for n, batch in enumerate(batches, 1):
                encoded = self._tokenize([prefix + texts[i] for i in batch])
                hidden = self.encoder(**encoded).last_hidden_state
                pooled = pool(hidden, encoded["attention_mask"], self.model.pooling)
                out[batch] = pooled.float().cpu().numpy()
                if on_batch is not None:
                    on_batch(n, len(batches))
        return normalize_rows(out) if len(texts) else out

    def embed_with_states(self, texts: Sequence[str], *, kind: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """(:meth:`embed`'s vectors, per text the hidden states entering the top ``UPPER_LAYERS`` layers, (tokens,
        dim) float32 without padding), as the ONNX export's ``embed_with_states``. ModelError for an encoder
        without a BERT-like layer list."""
        import torch

        from ...modeling import pool  # modeling imports torch
        from ...runtime.encoder import UPPER_LAYERS, upper_blocks  # torch-free constants and helpers

        if not upper_blocks(self.encoder):
            raise ModelError(f"{self.model.spec}: no transformer layer list to take the upper states from")
        prefix = self.model.query_prefix if kind == "query" else self.model.passage_prefix
        vectors = np.zeros((len(texts), self.model.dim), dtype=np.float32)
        states: list[np.ndarray] = [np.zeros((0, self.model.dim), np.float32)] * len(texts)
        with torch.inference_mode():
            for i in range(0, len(texts), 32):
                encoded = self._tokenize([prefix + t for t in texts[i : i + 32]])
                out = self.encoder(**encoded, output_hidden_states=True)
                mask = encoded["attention_mask"]
                pooled = pool(out.last_hidden_state, mask, self.model.pooling)
                vectors[i : i + len(pooled)] = pooled.float().cpu().numpy()
                upper = out.hidden_states[-1 - UPPER_LAYERS].float().cpu().numpy()
                for j, row in enumerate(mask.cpu().numpy()):
                    states[i + j] = upper[j][row.astype(bool)].copy()  # padding on the right or left: the real tokens
        return (normalize_rows(vectors) if len(texts) else vectors), states

    def upper_weights(self) -> dict[str, np.ndarray]:
        """The base weights of the top ``UPPER_LAYERS`` layers, named as the ONNX export stores them."""
        from ...runtime.encoder import upper_parameters  # torch-free helper

        return upper_parameters(self.encoder)


def choose_query_runtime(
    cache: Path,
    fingerprint: str,
    index: VectorIndex,
    chunks: Sequence[Chunk],
    questions_path: Path | None,
    tolerance_points: float,
    k: int = 5,
) -> dict[str, Any]:
    """Which ONNX query encoder this index searches with: int8 when its retrieval is within
    ``tolerance_points`` of fp32's (hit@1 on the retrieval questions when there are some; else agreement
    with fp32's first result on the chunks' headings as queries), else fp32. Returns the record index.json
    keeps (the measurements of both)."""
    from ...runtime.encoder import OnnxSentenceEncoder  # on use: the ONNX session's module

    questions = (
        read_eval_questions(questions_path) if questions_path is not None and Path(questions_path).is_file() else []
    )
    queries = [q.question for q in questions] or sorted({c.heading for c in chunks if c.heading.strip()})
    by_id = {c.id: c for c in chunks}
    measured: dict[str, Any] = {}
    firsts: dict[str, list[str]] = {}
    for runtime in ("onnx-fp32", "onnx-int8"):
        try:
            encoder = OnnxSentenceEncoder.load(cache, fingerprint, runtime)
        except ModelError as exc:
            measured[runtime] = {"usable": False, "reason": str(exc)}
            continue
        start = time.perf_counter()
        vectors = encoder.embed([clean_text(q) for q in queries], kind="query")
        seconds = time.perf_counter() - start
        ranked = [[by_id[cid] for cid, _ in hits] for hits in index.search(vectors, k)]
        firsts[runtime] = [r[0].id if r else "" for r in ranked]
        entry: dict[str, Any] = {"usable": True, "ms_per_query": round(1000 * seconds / max(len(queries), 1), 3)}
        if questions:
            entry.update(ranking_metrics(ranked, questions, k))
        measured[runtime] = entry
    chosen = "onnx-fp32"
    if measured.get("onnx-int8", {}).get("usable") and "onnx-fp32" in firsts:
        agreement = sum(a == b for a, b in zip(firsts["onnx-int8"], firsts["onnx-fp32"])) / max(len(queries), 1)
        measured["onnx-int8"]["agreement_at_1_with_fp32"] = round(agreement, 4)
        if questions:
            loss = 100.0 * (measured["onnx-fp32"]["hit@1"] - measured["onnx-int8"]["hit@1"])
        else:
            loss = 100.0 * (1.0 - agreement)
        if loss <= tolerance_points + 1e-9:
            chosen = "onnx-int8"
    return {
        "runtime": chosen,
        "cache": cache.name,
        "queries": len(queries),
        "judged_on": "retrieval questions (hit@1)" if questions else "chunk headings (agreement with fp32 at 1)",
        "tolerance_points": tolerance_points,
        "runtimes": measured,
    }


def ensure_onnx_encoder(embedder: Embedder, models_dir: Path, probe_texts: Sequence[str] = ()) -> Path | None:
    """The model-cache directory of ``embedder``'s ONNX export, written now when missing (export.encoder)."""
    from ...export.encoder import export_sentence_encoder  # imports torch

    model = embedder.model
    return export_sentence_encoder(
        embedder.encoder,
        embedder.tokenizer,
        Path(models_dir),
        name=Path(model.location).name or model.spec,
        fingerprint=model.fingerprint,
        pooling=model.pooling,
        max_length=model.max_length,
        query_prefix=model.query_prefix,
        passage_prefix=model.passage_prefix,
        probe_texts=probe_texts,
    )
