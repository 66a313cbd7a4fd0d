"""The hotel knowledge base: building a version's ``knowledge/``, searching it, exporting it.

Its parts live beside it (nothing here or there prints or exits):

* :mod:`.documents`: :func:`prepare_documents` reads ``.md``/``.txt`` files and splits them into chunks on
  headings and paragraphs (with overlap inside long sections), keeping per chunk the source file, its
  heading path and character offsets into the ORIGINAL file text; :func:`write_prepared_documents` writes
  ``chunks.jsonl`` + ``documents.json`` (per-file sha256).
* :mod:`.embedding`: the embedding model (:class:`Embedder`) and the choice of its ONNX query runtime.
* :mod:`.index`: :class:`VectorIndex` (add / search / save / load) and :class:`ExactIndex`, exact cosine
  search; an ANN library (hnswlib, FAISS) plugs in as another subclass registered in ``INDEX_TYPES``.
* :mod:`.retrieval`: the retrieval question set and hit@1 / hit@k / MRR; :mod:`.lexical`: BM25.

Here: :func:`train_knowledge_base` embeds the chunks with the version's embedding model and publishes a
NEW registry version: a full snapshot that carries over every other component of the source version
(deployed, else newest; :func:`hotelbot_cli.components.carry_over`) and writes ``knowledge/``. Deploy and
rollback therefore move the classifier and the knowledge base together. ``incremental=True`` embeds only
new or changed documents and reuses the source version's vectors for the rest (never from a knowledge base
that fails its checksums). :class:`KnowledgeBase` loads ``knowledge/`` from a version and answers queries;
:func:`evaluate_retrieval` measures hit@1 / hit@k / MRR against a question set, side by side with a BM25
baseline computed in the same run; :func:`export_knowledge` writes a portable copy.

``knowledge/`` in a version::

    chunks.jsonl         one chunk per line: id, doc, heading, headings, start, end, text
    embeddings.npy       float32 (chunks x dim), rows L2-normalized; np.load(allow_pickle=False)
    embedding_ids.json   the chunk id of each row
    index.json           format, index type, embedding model (spec, location, fingerprint, prefixes,
                         pooling, max_length, dim), chunking, per-document sha256 -> chunk ids
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, cast

import numpy as np

from ..._io import atomic_write_bytes, atomic_write_json
from ...data import clean_text
from ...config import load_settings
from ...errors import DataError, ModelError, RegistryError
from ...registry.checksums import component_problems
from ...training.events import TrainingEvent, emitter
from ...training.monitor import library_versions
from ...training.tracking import MlflowTracker
from ..compose import has_component, publish_version, source_version
from .documents import (
    chunks_bytes,
    read_chunks,
    CHUNKS_FILE,
    Chunk,
    DocumentInfo,
    PreparedDocuments,
    chunk_document,
    load_documents,
    prepare_documents,
    read_prepared_documents,
    write_prepared_documents,
)
from .embedding import (
    Embedder,
    EmbeddingModel,
    choose_query_runtime,
    ensure_onnx_encoder,
)
from .index import INDEX_TYPES, ExactIndex, VectorIndex
from .retrieval import norm_heading, ranking_metrics, read_eval_questions
from .lexical import BM25, bm25_tokens
from ..exporting import (
    EXPORT_KNOWLEDGE_FORMAT,
    EXPORT_VECTORS_FILE,
    EXPORT_CONFIG_FILE,
    MODEL_CARD,
    retrieval_card,
    save_encoder,
)

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import ModelRegistry, VersionInfo
    from ...training.events import Listener

log = logging.getLogger("hotelbot.knowledge")

KNOWLEDGE_DIR = "knowledge"
COMPONENT = "knowledge"
KIND = "knowledge-base"
INDEX_FILE = "index.json"
KNOWLEDGE_FORMAT = "hotelbot-knowledge/1"
EXPERIMENT = "hotelbot-knowledge"

# ============================================================================ building a version


@dataclass
class KnowledgeResult:
    version: VersionInfo
    source: str | None
    documents: int
    chunks: int
    embedded_chunks: int
    reused_chunks: int
    incremental: bool
    build_seconds: float
    changes: dict[str, list[str]]
    embedding_model: str
    mlflow_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version.name,
            "source": self.source,
            "documents": self.documents,
            "chunks": self.chunks,
            "embedded_chunks": self.embedded_chunks,
            "reused_chunks": self.reused_chunks,
            "incremental": self.incremental,
            "build_seconds": round(self.build_seconds, 3),
            "changes": self.changes,
            "embedding_model": self.embedding_model,
            "mlflow_run_id": self.mlflow_run_id,
        }


def _knowledge_problems(info: VersionInfo) -> list[str]:
    """Files of ``info``'s knowledge/ that are missing, unrecorded or fail their recorded sha256."""
    _, problems = component_problems(info.path, info.manifest.files, (KNOWLEDGE_DIR,))
    return problems


@dataclass
class _Loaded:
    manifest: dict[str, Any]
    chunks: list[Chunk]
    index: VectorIndex
    model: EmbeddingModel


def _read_knowledge(path: Path) -> _Loaded:
    """Read a version's ``knowledge/`` directory (ModelError/RegistryError when it is broken)."""
    if not (path / INDEX_FILE).is_file():
        raise RegistryError(f"{path} holds no knowledge base ({INDEX_FILE} missing)")
    try:
        manifest = json.loads((path / INDEX_FILE).read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path / INDEX_FILE} is unreadable: {exc}") from None
    if manifest.get("format") != KNOWLEDGE_FORMAT:
        raise ModelError(f"{path / INDEX_FILE}: unknown knowledge format {manifest.get('format')!r}")
    kind = (manifest.get("index") or {}).get("type")
    if kind not in INDEX_TYPES:
        raise ModelError(f"{path / INDEX_FILE}: unknown index type {kind!r} (known: {', '.join(INDEX_TYPES)})")
    index = INDEX_TYPES[kind].load(path)
    try:
        chunks = read_chunks(path / CHUNKS_FILE)
    except DataError as exc:
        raise ModelError(str(exc)) from None
    if [c.id for c in chunks] != index.ids:
        raise ModelError(f"{path}: {CHUNKS_FILE} and the vector index disagree on the chunk ids")
    return _Loaded(manifest, chunks, index, EmbeddingModel.from_dict(manifest.get("embedding_model") or {}))


def train_knowledge_base(
    settings: Settings,
    documents_dir: Path,
    registry: ModelRegistry,
    listener: Listener | None = None,
    *,
    incremental: bool = False,
    source: str | None = None,
    eval_questions: Path | None = None,
) -> KnowledgeResult:
    """Embed the documents' chunks and publish a new version carrying over the source version's other
    components (see the module docstring). ``documents_dir`` is a prepared directory (``hotelbot prepare
    --documents``) or a folder of .md/.txt documents. The embedding model is
    ``settings.training.base_model``; ``incremental`` reuses the source's vectors of unchanged documents.
    ``source`` names the version to build on instead of the deployed one (else the newest), e.g. a
    classifier version just trained by ``train --model-type all``. ``eval_questions`` (the retrieval questions,
    when there are some) judge the int8 query encoder (:func:`choose_query_runtime`)."""
    emit = emitter(listener)
    start = time.monotonic()
    prepared = load_documents(Path(documents_dir))
    source_info = source_version(registry, source)
    previous = None
    if source_info is not None and has_component(source_info, COMPONENT):
        problems = _knowledge_problems(source_info)
        if problems:  # never reuse vectors from a corrupt index; a full rebuild replaces it
            emit(
                TrainingEvent(
                    "status",
                    message=f"{source_info.name}'s knowledge base fails its checksums "
                    f"({problems[0]}); it is rebuilt, not reused",
                )
            )
        else:
            previous = _read_knowledge(source_info.path / KNOWLEDGE_DIR)

    spec = settings.training.base_model
    emit(TrainingEvent("status", message=f"loading the embedding model {spec}"))
    embedder = Embedder.load(spec, settings.paths.models_dir, settings.training.pooling)
    model = embedder.model

    # Which chunks need embedding: all of them, or (incremental) those of new or changed documents.
    reusable: dict[str, np.ndarray] = {}
    fallback = ""
    if incremental and previous is None:
        fallback = (
            "the registry is empty"
            if source_info is None
            else f"{source_info.name} has no usable knowledge base to reuse"
        )
    elif incremental and previous is not None and not model.same_vectors_as(previous.model):
        # previous is read from source_info, so it is not None here
        fallback = (
            f"the embedding model differs from the one of {cast('VersionInfo', source_info).name} "
            f"({previous.model.spec})"
        )
    elif incremental and previous is not None:
        old_docs = previous.manifest.get("documents") or {}
        unchanged = {d.doc for d in prepared.documents if (old_docs.get(d.doc) or {}).get("sha256") == d.sha256}
        old_passages = {c.id: c.passage() for c in previous.chunks}
        # Reused only when the document's content hash AND the chunk's id and text are unchanged (the
        # chunking settings may differ between the two builds).
        keep = [c.id for c in prepared.chunks if c.doc in unchanged and old_passages.get(c.id) == c.passage()]
        reusable = dict(zip(keep, previous.index.vectors(keep)))
    if fallback:
        emit(TrainingEvent("status", message=f"--incremental: {fallback}; embedding every chunk"))
    todo = [c for c in prepared.chunks if c.id not in reusable]

    old_docs = (previous.manifest.get("documents") or {}) if previous else {}
    new_shas = {d.doc: d.sha256 for d in prepared.documents}
    changes = {
        "added": sorted(set(new_shas) - set(old_docs)),
        "changed": sorted(d for d in new_shas if d in old_docs and old_docs[d].get("sha256") != new_shas[d]),
        "removed": sorted(set(old_docs) - set(new_shas)),
    }
    emit(
        TrainingEvent(
            "status",
            message=f"{len(prepared.documents)} documents, {len(prepared.chunks)} chunks: "
            f"embedding {len(todo)}, reusing {len(reusable)}",
        )
    )
    tracker = MlflowTracker(settings.paths.tracking_uri, experiment=EXPERIMENT)
    with tracker.run(run_name=f"knowledge-{prepared.fingerprint[:8]}", tags={"hotelbot.component": COMPONENT}):
        timing: dict[str, float] = {}

        def build(staged: Path, merged: dict[str, Any]) -> dict[str, Any]:
            batch_size = 32
            total = math.ceil(len(todo) / batch_size)
            timing["steps"] = total
            emit(TrainingEvent("begin", 0, total, 0.0, 1))
            fresh = embedder.embed(
                [c.passage() for c in todo],
                kind="passage",
                batch_size=batch_size,
                on_batch=lambda n, t: emit(TrainingEvent("step", n, t, n / t, 1)),
            )
            vectors = dict(zip((c.id for c in todo), fresh))
            vectors.update(reusable)
            index = ExactIndex(model.dim)
            index.add([c.id for c in prepared.chunks], np.stack([vectors[c.id] for c in prepared.chunks]))
            knowledge = staged / KNOWLEDGE_DIR
            knowledge.mkdir()
            index_files = index.save(knowledge)
            atomic_write_bytes(knowledge / CHUNKS_FILE, chunks_bytes(prepared.chunks))
            by_doc: dict[str, list[str]] = {}
            for c in prepared.chunks:
                by_doc.setdefault(c.doc, []).append(c.id)
            # The query encoder search uses: ONNX (exported into the model cache once per machine and base
            # model), int8 where this index's retrieval keeps within the tolerance of fp32's.
            emit(TrainingEvent("status", message="ONNX query encoder: exporting (once per base model) and choosing"))
            cache = ensure_onnx_encoder(
                embedder, settings.paths.models_dir, [c.passage() for c in prepared.chunks[:16]]
            )
            query_encoder = (
                choose_query_runtime(
                    cache,
                    model.fingerprint,
                    index,
                    prepared.chunks,
                    eval_questions,
                    settings.validation.runtime_tolerance_points,
                )
                if cache is not None
                else {"runtime": "torch", "reason": "the ONNX export failed"}
            )
            atomic_write_json(
                knowledge / INDEX_FILE,
                {
                    "format": KNOWLEDGE_FORMAT,
                    "query_encoder": query_encoder,
                    "index": {"type": index.kind, "files": index_files},
                    "embedding_model": model.to_dict(),
                    "chunking": prepared.chunking,
                    "num_chunks": len(prepared.chunks),
                    "documents": {
                        d.doc: {"sha256": d.sha256, "title": d.title, "chars": d.chars, "chunk_ids": by_doc[d.doc]}
                        for d in prepared.documents
                    },
                    "source": prepared.source,
                    "fingerprint": prepared.fingerprint,
                },
            )
            build_seconds = timing["seconds"] = time.monotonic() - start
            summary = {
                "documents": len(prepared.documents),
                "chunks": len(prepared.chunks),
                "embedding_model": spec,
                "build_seconds": round(build_seconds, 3),
                "incremental": used_incremental,
                "embedded_chunks": len(todo),
                "reused_chunks": len(reusable),
                "changes": changes,
                "dim": model.dim,
                "fingerprint": prepared.fingerprint,
                "mlflow_run_id": tracker.run_id,
            }
            tracker.log_params(
                {
                    "embedding_model": spec,
                    "embedding_location": model.location,
                    "pooling": model.pooling,
                    "max_length": model.max_length,
                    "incremental": used_incremental,
                    "source_version": source_info.name if source_info else None,
                    **prepared.chunking,
                }
            )
            tracker.log_metrics(
                {
                    "documents": len(prepared.documents),
                    "chunks": len(prepared.chunks),
                    "embedded_chunks": len(todo),
                    "reused_chunks": len(reusable),
                    "build_seconds": build_seconds,
                },
                step=0,
            )
            return {"kind": KIND, **merged, COMPONENT: summary, "library_versions": library_versions()}

        used_incremental = incremental and not fallback
        info, _ = publish_version(
            registry,
            COMPONENT,
            source=source_info.name if source_info else None,
            build=build,
            tracker=tracker,
            listener=listener,
            status=None,
        )
    build_seconds, total = timing["seconds"], cast(int, timing["steps"])  # steps: the int build() set
    log.info(
        "knowledge base %s: %d documents, %d chunks (%d embedded) in %.1fs",
        info.name,
        len(prepared.documents),
        len(prepared.chunks),
        len(todo),
        build_seconds,
    )
    emit(TrainingEvent("end", total, total, 1.0, 1, message=info.name))
    return KnowledgeResult(
        info,
        source_info.name if source_info else None,
        len(prepared.documents),
        len(prepared.chunks),
        len(todo),
        len(reusable),
        used_incremental,
        build_seconds,
        changes,
        spec,
        tracker.run_id,
    )


# ============================================================================ search


@dataclass(frozen=True)
class SearchHit:
    rank: int
    score: float
    chunk: Chunk

    def to_dict(self) -> dict[str, Any]:
        c = self.chunk
        return {
            "rank": self.rank,
            "score": round(self.score, 6),
            "id": c.id,
            "doc": c.doc,
            "heading": c.heading,
            "headings": list(c.headings),
            "start": c.start,
            "end": c.end,
            "text": c.text,
        }


def _cleaned_queries(queries: Sequence[str]) -> list[str]:
    cleaned = [clean_text(q) for q in queries]
    if any(not c for c in cleaned):
        raise DataError("empty search query", hint='give a question, e.g. "¿aceptan perros?"')
    return cleaned


class KnowledgeBase:
    """A version's loaded knowledge base: the vector index, its chunks and the query encoder (loaded lazily)."""

    def __init__(self, version: str, loaded: _Loaded, models_dir: Path | None = None) -> None:
        self.version = version
        self.manifest = loaded.manifest
        self.chunks = {c.id: c for c in loaded.chunks}
        self.chunk_list = loaded.chunks
        self.index = loaded.index
        self.model = loaded.model
        self._models_dir = models_dir
        self._embedder: Embedder | None = None
        self._onnx: Any = None
        self._onnx_tried = False
        # A generator generating from this encoder's states reads the fp32 graph: then queries use it too (one e5).
        self.shares_encoder = False

    @classmethod
    def from_version(cls, info: VersionInfo, models_dir: Path | None = None) -> KnowledgeBase:
        path = info.path / KNOWLEDGE_DIR
        if not (path / INDEX_FILE).is_file():
            raise RegistryError(
                f"version {info.name} has no knowledge base",
                hint="build one: hotelbot prepare --documents DIR && hotelbot train --model-type embeddings",
            )
        return cls(info.name, _read_knowledge(path), models_dir)

    @classmethod
    def from_registry(
        cls, registry: ModelRegistry, version: str | None = None, *, verify: bool = True, models_dir: Path | None = None
    ) -> KnowledgeBase:
        """``version`` None: the deployed version, else the newest (checksums checked unless ``verify`` is False)."""
        info = registry.resolve(version, verify=verify)
        return cls.from_version(info, models_dir)

    @property
    def embedder(self) -> Embedder:
        """The torch encoder the index was built with (the generator shares it)."""
        if self._embedder is None:
            self._embedder = Embedder.for_index(self.model, self._models_dir)
        return self._embedder

    @property
    def torch_embedder_loaded(self) -> bool:
        return self._embedder is not None

    @property
    def onnx_query_encoder(self) -> Any:
        """The ONNX query encoder when :attr:`query_encoder` is it (never loads the torch one), else None."""
        from ...runtime.encoder import OnnxSentenceEncoder  # on use: the ONNX session's module

        encoder = self.query_encoder if self._embedder is None else None
        return encoder if isinstance(encoder, OnnxSentenceEncoder) else None

    @property
    def query_encoder(self) -> Any:
        """What search embeds queries with: the ONNX export of the index's encoder in the model cache
        (:class:`~hotelbot_cli.runtime.encoder.OnnxSentenceEncoder`, no torch), exported on first need on a
        machine whose cache lacks it; the torch :attr:`embedder` when it is loaded already, with
        HOTELBOT_RUNTIME=torch, or when the export failed."""
        import os

        if self._embedder is not None or os.environ.get("HOTELBOT_RUNTIME", "").strip() == "torch":
            return self.embedder
        if not self._onnx_tried:
            self._onnx_tried = True
            self._onnx = self._onnx_encoder()
        return self._onnx if self._onnx is not None else self.embedder

    def query_runtime(self) -> str:
        """onnx-int8 or onnx-fp32: the build's choice (index.json ``query_encoder``; fp32 for an index built
        before it was recorded), fp32 when a generator shares the encoder, or HOTELBOT_RUNTIME's ONNX runtime."""
        import os

        forced = os.environ.get("HOTELBOT_RUNTIME", "").strip()
        if forced in ("onnx-fp32", "onnx-int8"):
            return forced
        recorded = (self.manifest.get("query_encoder") or {}).get("runtime")
        return "onnx-int8" if recorded == "onnx-int8" and not self.shares_encoder else "onnx-fp32"

    def _onnx_encoder(self) -> Any:
        from ...runtime.encoder import OnnxSentenceEncoder  # on use: the ONNX session's module, for search only

        models_dir = Path(self._models_dir) if self._models_dir is not None else load_settings().paths.models_dir
        name = Path(self.model.location).name or self.model.spec
        try:
            found = OnnxSentenceEncoder.find(models_dir, name, self.model.fingerprint, self.query_runtime())
        except ModelError as exc:
            log.warning("the cached ONNX query encoder is unusable (%s); exporting it again", exc)
            found = None
        if found is not None:
            return found
        log.warning(
            "no ONNX query encoder for %s in %s yet: exporting it once (the knowledge base searches on "
            "torch until then)",
            self.model.spec,
            models_dir,
        )
        ensure_onnx_encoder(self.embedder, models_dir, [c.passage() for c in self.chunk_list[:16]])
        return None  # this process keeps the torch encoder it just loaded; the next one opens the export

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """The normalized query vectors search uses (DataError for an empty query)."""
        return self.query_encoder.embed(_cleaned_queries(queries), kind="query")

    def embed_queries_with_states(self, queries: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """:meth:`embed_queries`'s vectors and, per query, the encoder's hidden states entering its top layers
        (a reply model's tuned question layers run on them; ModelError for an encoder without them)."""
        return self.query_encoder.embed_with_states(_cleaned_queries(queries), kind="query")

    def upper_weights(self) -> dict[str, np.ndarray]:
        """The base weights of the query encoder's top layers (what tuned question layers change)."""
        return self.query_encoder.upper_weights()

    def search_vectors(self, vectors: np.ndarray, top_k: int = 5) -> list[list[SearchHit]]:
        """The top ``top_k`` chunks for each row of :meth:`embed_queries`'s vectors."""
        if top_k < 1:
            raise DataError(f"top_k must be >= 1, got {top_k}")
        return [
            [SearchHit(rank, score, self.chunks[cid]) for rank, (cid, score) in enumerate(hits, 1)]
            for hits in self.index.search(vectors, top_k)
        ]

    def search_many(self, queries: Sequence[str], top_k: int = 5) -> list[list[SearchHit]]:
        if top_k < 1:
            raise DataError(f"top_k must be >= 1, got {top_k}")
        return self.search_vectors(self.embed_queries(queries), top_k)

    def search(self, query: str, top_k: int = 5) -> list[SearchHit]:
        return self.search_many([query], top_k)[0]


# ============================================================================ export


def export_knowledge(kb: KnowledgeBase, target: Path) -> dict[str, Any]:
    """`hotelbot export --format hf` of a loaded knowledge base into ``target``: its embedding model as a
    Hugging Face directory (the one the index was built with, fingerprint-checked by :attr:`KnowledgeBase.embedder`),
    ``chunks.jsonl``, ``embeddings.npy`` (row i: line i of chunks.jsonl), ``knowledge.json`` (how a query is
    embedded) and the model card. Returns the export record's facts."""
    embedder = kb.embedder
    save_encoder(embedder.encoder, embedder.tokenizer, target)
    atomic_write_bytes(target / CHUNKS_FILE, chunks_bytes(kb.chunk_list))
    with open(target / EXPORT_VECTORS_FILE, "wb") as handle:
        np.save(handle, kb.index.vectors([c.id for c in kb.chunk_list]).astype(np.float32), allow_pickle=False)
    model = kb.model
    config = {
        "format": EXPORT_KNOWLEDGE_FORMAT,
        "embedding_model": model.spec,
        "fingerprint": model.fingerprint,
        "query_prefix": model.query_prefix,
        "passage_prefix": model.passage_prefix,
        "pooling": model.pooling,
        "max_length": model.max_length,
        "dim": model.dim,
        "normalized": True,
        "similarity": "dot product of L2-normalized vectors (cosine)",
        "chunks": len(kb.chunk_list),
        "chunking": kb.manifest.get("chunking"),
        "version": kb.version,
    }
    atomic_write_json(target / EXPORT_CONFIG_FILE, config)
    model_type = getattr(embedder.encoder.config, "model_type", "")
    (target / MODEL_CARD).write_text(
        retrieval_card(target.name, config, model_type, kb.version, CHUNKS_FILE), encoding="utf-8"
    )
    return {
        "loads_with": f"AutoModel/AutoTokenizer (the query encoder) + {EXPORT_VECTORS_FILE} + {CHUNKS_FILE} "
        f"({MODEL_CARD} shows how)",
        "model_type": model_type,
        "chunks": len(kb.chunk_list),
    }


# ============================================================================ retrieval evaluation


def evaluate_retrieval(
    version_info: VersionInfo, eval_path: Path, k: int = 5, *, models_dir: Path | None = None
) -> dict[str, Any]:
    """Retrieval metrics of the version's knowledge base on ``eval_path`` beside a BM25 baseline over the
    same chunks, computed in the same run. A hit is a retrieved chunk of the right document whose
    heading is the question's section (accents, case and punctuation ignored); ``doc_*`` count any
    chunk of the right document."""
    if k < 1:
        raise DataError(f"k must be >= 1, got {k}")
    questions = read_eval_questions(eval_path)
    kb = KnowledgeBase.from_version(version_info, models_dir)
    known = {(c.doc, norm_heading(c.heading)) for c in kb.chunk_list}
    unknown = sorted({f"{q.doc} / {q.section}" for q in questions if (q.doc, norm_heading(q.section)) not in known})
    start = time.monotonic()
    dense_hits = kb.search_many([q.question for q in questions], top_k=k)
    dense_seconds = time.monotonic() - start
    dense = [[h.chunk for h in hits] for hits in dense_hits]
    bm25 = BM25([bm25_tokens(c.passage()) for c in kb.chunk_list])
    lexical = [[kb.chunk_list[i] for i, _ in bm25.top_k(bm25_tokens(q.question), k)] for q in questions]
    dense_metrics = ranking_metrics(dense, questions, k)
    misses = [
        {
            "question": q.question,
            "expected": f"{q.doc} / {q.section}",
            "got": f"{ranked[0].doc} / {ranked[0].heading}" if ranked else None,
        }
        for q, ranked in zip(questions, dense)
        if not any(c.doc == q.doc and norm_heading(c.heading) == norm_heading(q.section) for c in ranked)
    ]
    return {
        "version": version_info.name,
        "eval_path": str(eval_path),
        "questions": len(questions),
        "k": k,
        "chunks": len(kb.chunk_list),
        "embedding_model": kb.model.spec,
        "dense": dense_metrics,
        "bm25": ranking_metrics(lexical, questions, k),
        "dense_query_seconds": round(dense_seconds, 3),
        "unknown_targets": unknown,
        "misses": misses,
    }


__all__ = [
    "BM25",
    "Chunk",
    "DocumentInfo",
    "Embedder",
    "EmbeddingModel",
    "ExactIndex",
    "KnowledgeBase",
    "KnowledgeResult",
    "PreparedDocuments",
    "SearchHit",
    "VectorIndex",
    "bm25_tokens",
    "chunk_document",
    "evaluate_retrieval",
    "export_knowledge",
    "load_documents",
    "prepare_documents",
    "read_prepared_documents",
    "train_knowledge_base",
    "write_prepared_documents",
]
