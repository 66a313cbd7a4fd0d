"""The hotel knowledge base: document chunking, embeddings, a vector index, search and retrieval metrics.

Three steps, each a plain function or class (nothing here prints or exits):

* :func:`prepare_documents` reads ``.md``/``.txt`` files, splits them into chunks on headings and
  paragraphs (with overlap inside long sections) and keeps, per chunk, the source file, its heading
  path and character offsets into the ORIGINAL file text: ``text[start:end]`` is the chunk's source
  span (offsets count code points of the UTF-8-decoded file, line endings untouched).
  :func:`write_prepared_documents` writes ``chunks.jsonl`` + ``documents.json`` (per-file sha256).
* :func:`train_knowledge_base` embeds the chunks with the version's embedding model and publishes a
  NEW registry version: a full snapshot that carries over every other component of the source version
  (deployed, else newest; :func:`hotelbot_cli.components.carry_over`) and writes ``knowledge/``. Deploy
  and rollback therefore move the classifier and the knowledge base together. ``incremental=True``
  embeds only new or changed documents and reuses the source version's vectors for the rest (never
  from a knowledge base that fails its checksums).
* :class:`KnowledgeBase` loads ``knowledge/`` from a version and answers queries;
  :func:`evaluate_retrieval` measures hit@1 / hit@k / MRR against a question set, side by side with a
  BM25 baseline computed in the same run.

``knowledge/`` in a version::

    chunks.jsonl         one chunk per line: id, doc, heading, headings, start, end, text
    embeddings.npy       float32 (chunks x dim), rows L2-normalized; np.load(allow_pickle=False)
    embedding_ids.json   the chunk id of each row
    index.json           format, index type, embedding model (spec, location, fingerprint, prefixes,
                         pooling, max_length, dim), chunking, per-document sha256 -> chunk ids

The index sits behind :class:`VectorIndex` (add / search / save / load); :class:`ExactIndex` is exact
cosine search over the normalized matrix (a few thousand chunks answer in well under a millisecond).
An ANN library (hnswlib, FAISS) plugs in as another subclass registered in :data:`INDEX_TYPES`.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import logging
import math
import re
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Sequence, cast

import numpy as np

from ...runtime.device import place
from ..._io import atomic_write_bytes, atomic_write_json, iter_jsonl
from ...data import clean_text
from ...config import load_settings
from ...errors import DataError, ModelError, RegistryError
from ...packaged import MARKER_NAME, PACKAGED_MODELS
from ...registry.checksums import component_problems
from ...training.events import TrainingEvent, emitter
from ...training.monitor import library_versions
from ...training.tracking import MlflowTracker
from ..compose import has_component, publish_version, source_version
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
CHUNKS_FILE = "chunks.jsonl"
DOCUMENTS_FILE = "documents.json"
INDEX_FILE = "index.json"
DOCUMENTS_FORMAT = "hotelbot-documents/1"
KNOWLEDGE_FORMAT = "hotelbot-knowledge/1"
SUPPORTED_DOCUMENT_SUFFIXES = (".md", ".txt")
DEFAULT_MAX_CHARS = 800
DEFAULT_OVERLAP_CHARS = 150
MAX_EMBED_TOKENS = 512
EXPERIMENT = "hotelbot-knowledge"
# Passage-side prefix for models that want one on the query side (e5: "query: " / "passage: ").
PASSAGE_PREFIXES = {"query: ": "passage: "}


# ============================================================================ documents and chunks


@dataclass(frozen=True)
class Chunk:
    """One retrievable span of a document. ``text`` is the cleaned span; ``start``/``end`` index the
    original file text (``original[start:end]`` is the source span of ``text``)."""

    id: str
    doc: str
    heading: str
    headings: tuple[str, ...]
    start: int
    end: int
    text: str

    def passage(self) -> str:
        """What is embedded and what BM25 indexes: the heading path, then the text."""
        return (" > ".join(self.headings) + "\n" + self.text) if self.headings else self.text

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["headings"] = list(self.headings)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunk:
        try:
            return cls(
                str(data["id"]),
                str(data["doc"]),
                str(data["heading"]),
                tuple(map(str, data["headings"])),
                int(data["start"]),
                int(data["end"]),
                str(data["text"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed chunk record {str(data)[:80]!r}: {exc}") from None


@dataclass(frozen=True)
class DocumentInfo:
    doc: str  # path relative to the documents directory, POSIX
    sha256: str  # of the file's bytes
    chars: int
    chunks: int
    title: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedDocuments:
    source: str
    documents: list[DocumentInfo]
    chunks: list[Chunk]
    max_chars: int = DEFAULT_MAX_CHARS
    overlap_chars: int = DEFAULT_OVERLAP_CHARS

    @property
    def chunking(self) -> dict[str, int]:
        return {"max_chars": self.max_chars, "overlap_chars": self.overlap_chars}

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps(self.chunking, sort_keys=True).encode())
        for d in self.documents:
            digest.update(f"{d.doc}\0{d.sha256}\n".encode())
        return digest.hexdigest()

    def to_summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "documents": len(self.documents),
            "chunks": len(self.chunks),
            "chunking": self.chunking,
            "fingerprint": self.fingerprint,
            "per_document": [d.to_dict() for d in self.documents],
        }


_ATX_RE = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*#*[ \t]*$")
_SETEXT_RE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_LINE_RE = re.compile(r"[^\n]*\n|[^\n]+")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?…:;])\s+|\n")
_RULE_RE = re.compile(r"^\s*(?:[-*_]\s*){3,}$|^\s*\|?[\s:|-]*-{3,}[\s:|-]*\|?\s*$")
_MD_LINK_RE = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_MARK_RE = re.compile(r"(\*\*|__|`+|~~)")
_BULLET_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


def _lines(text: str) -> Iterable[tuple[int, int, str]]:
    """(start, end, content) of each line; ``end`` excludes the line break (\\n or \\r\\n)."""
    for m in _LINE_RE.finditer(text):
        start, end = m.start(), m.end()
        while end > start and text[end - 1] in "\r\n":
            end -= 1
        yield start, end, text[start:end]


def _clean_heading(raw: str) -> str:
    return clean_text(_MD_MARK_RE.sub("", _MD_LINK_RE.sub(r"\1", raw)))


def clean_chunk_text(raw: str) -> str:
    """Line by line: drop Markdown markup (emphasis, links, bullets, table rules), clean like intent
    texts (NFC, control characters out, whitespace collapsed); empty lines are dropped."""
    out = []
    for line in raw.splitlines():
        if _RULE_RE.match(line):
            continue
        line = _MD_MARK_RE.sub("", _MD_LINK_RE.sub(r"\1", line))
        line = _BULLET_RE.sub("- ", line)
        if line.strip().startswith("|"):
            line = " | ".join(cell.strip() for cell in line.strip().strip("|").split("|"))
        line = clean_text(line.lstrip(">"))
        if line:
            out.append(line)
    return "\n".join(out)


def _sections(text: str, markdown: bool) -> list[tuple[tuple[str, ...], list[tuple[int, int]]]]:
    """[(heading path, [paragraph spans])]: headings are ATX (``#``, Markdown only) or setext
    (a one-line paragraph underlined with === or ---, both formats)."""
    sections: list[tuple[tuple[str, ...], list[tuple[int, int]]]] = [((), [])]
    stack: list[tuple[int, str]] = []
    para: list[tuple[int, int]] = []  # line spans of the open paragraph

    def close() -> None:
        if para:
            sections[-1][1].append((para[0][0], para[-1][1]))
            para.clear()

    def open_section(level: int, title: str) -> None:
        while stack and stack[-1][0] >= level:
            stack.pop()
        if title:
            stack.append((level, title))
        sections.append((tuple(t for _, t in stack), []))

    for start, end, line in _lines(text):
        line = line.lstrip("\ufeff") if start == 0 else line  # a byte-order mark is not content
        if not line.strip():
            close()
            continue
        atx = _ATX_RE.match(line) if markdown else None
        if atx:
            close()
            open_section(len(atx.group(1)), _clean_heading(atx.group(2) or ""))
            continue
        setext = _SETEXT_RE.match(line)
        if setext and len(para) == 1:
            title = _clean_heading(text[para[0][0] : para[0][1]])
            para.clear()
            open_section(1 if setext.group(1).startswith("=") else 2, title)
            continue
        para.append((start, end))
    close()
    return [s for s in sections if s[1]]


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _split_long(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Split a span longer than ``max_chars``: at sentence ends / line breaks, then at spaces."""
    pieces: list[tuple[int, int]] = []
    cursor = start
    for m in _SENTENCE_END_RE.finditer(text, start, end):
        pieces.append(_trimmed(text, cursor, m.start()))
        cursor = m.end()
    pieces.append(_trimmed(text, cursor, end))
    out: list[tuple[int, int]] = []
    for s, e in pieces:
        while e - s > max_chars:  # a sentence longer than a chunk: cut at the last space that fits
            cut = text.rfind(" ", s + 1, s + max_chars + 1)
            cut = cut if cut > s else s + max_chars
            out.append(_trimmed(text, s, cut))
            s, _ = _trimmed(text, cut, e)
        if e > s:
            out.append((s, e))
    return [p for p in out if p[1] > p[0]]


def _pack(units: list[tuple[int, int]], max_chars: int, overlap_chars: int) -> list[tuple[int, int]]:
    """Group consecutive units into spans of at most ``max_chars`` (a lone unit may not fit further);
    each next span starts with the trailing units of the previous one that fit in ``overlap_chars``."""
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        j = i
        while j + 1 < len(units) and units[j + 1][1] - units[i][0] <= max_chars:
            j += 1
        if spans and units[j][1] <= spans[-1][1]:  # nothing new besides the overlap: drop the overlap
            i = next(k for k in range(i, len(units)) if units[k][1] > spans[-1][1])
            continue
        spans.append((units[i][0], units[j][1]))
        if j + 1 >= len(units):
            break
        k = j + 1
        while k - 1 > i and units[j][1] - units[k - 1][0] <= overlap_chars:
            k -= 1
        i = k
    return spans


def chunk_document(
    doc: str, text: str, *, max_chars: int = DEFAULT_MAX_CHARS, overlap_chars: int = DEFAULT_OVERLAP_CHARS
) -> list[Chunk]:
    """Split one document (its full original text) into chunks; see the module docstring."""
    if max_chars < 50:
        raise DataError(f"max chunk size must be at least 50 characters, got {max_chars}")
    if not 0 <= overlap_chars < max_chars:
        raise DataError(f"chunk overlap must be >= 0 and below the chunk size ({max_chars}), got {overlap_chars}")
    markdown = doc.lower().endswith(".md")
    chunks: list[Chunk] = []
    for headings, paragraphs in _sections(text, markdown):
        units: list[tuple[int, int]] = []
        for s, e in paragraphs:
            s, e = _trimmed(text, s, e)
            if not clean_chunk_text(text[s:e]):
                continue  # a horizontal rule or a table separator alone
            units.extend(_split_long(text, s, e, max_chars) if e - s > max_chars else [(s, e)])
        for s, e in _pack(units, max_chars, overlap_chars):
            body = clean_chunk_text(text[s:e])
            if body:
                chunks.append(
                    Chunk(f"{doc}#{len(chunks):03d}", doc, headings[-1] if headings else "", headings, s, e, body)
                )
    return chunks


def _document_files(directory: Path) -> list[Path]:
    if not directory.exists():
        raise DataError(f"documents directory not found: {directory}")
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory; give a folder of .md/.txt documents")
    files = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue  # hidden files (.gitkeep, .DS_Store) and folders
        if path.suffix.lower() not in SUPPORTED_DOCUMENT_SUFFIXES:
            raise DataError(
                f"{path}: unsupported document type {path.suffix or '(no extension)'!r}; "
                "only .md and .txt are accepted (convert it to text first, or move it out)"
            )
        files.append(path)
    if not files:
        raise DataError(f"no documents in {directory} (expected .md or .txt files)")
    return files


def prepare_documents(
    directory: Path, *, max_chars: int = DEFAULT_MAX_CHARS, overlap_chars: int = DEFAULT_OVERLAP_CHARS
) -> PreparedDocuments:
    """Read every .md/.txt file below ``directory`` and chunk it. Anything else, an unreadable or
    non-UTF-8 file, an empty file, or an empty folder is refused with a DataError naming it."""
    directory = Path(directory)
    documents, chunks = [], []
    for path in _document_files(directory):
        doc = path.relative_to(directory).as_posix()
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if not clean_text(text.replace("\ufeff", "")):
            raise DataError(f"{path}: the document is empty")
        doc_chunks = chunk_document(doc, text, max_chars=max_chars, overlap_chars=overlap_chars)
        if not doc_chunks:
            raise DataError(f"{path}: no text besides headings; nothing to index")
        title = next((c.headings[0] for c in doc_chunks if c.headings), path.stem)
        documents.append(DocumentInfo(doc, hashlib.sha256(raw).hexdigest(), len(text), len(doc_chunks), title))
        chunks.extend(doc_chunks)
    return PreparedDocuments(str(directory), documents, chunks, max_chars, overlap_chars)


def _chunks_bytes(chunks: Iterable[Chunk]) -> bytes:
    return "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in chunks).encode("utf-8")


def write_prepared_documents(prepared: PreparedDocuments, out_dir: Path) -> Path:
    """``chunks.jsonl`` then ``documents.json`` (the completion marker), each written atomically."""
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / CHUNKS_FILE, _chunks_bytes(prepared.chunks))
    atomic_write_json(out_dir / DOCUMENTS_FILE, {"format": DOCUMENTS_FORMAT, **prepared.to_summary()})
    return out_dir


def _read_chunks(path: Path) -> list[Chunk]:
    chunks = []
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    for number, record in iter_jsonl(path, text):
        try:
            chunks.append(Chunk.from_dict(record))
        except DataError as exc:
            raise DataError(f"{path}: line {number}: {exc}") from None
    return chunks


def read_prepared_documents(directory: Path) -> PreparedDocuments:
    """Read what :func:`write_prepared_documents` wrote; a clear DataError when it is missing or broken."""
    directory = Path(directory)
    manifest_path = directory / DOCUMENTS_FILE
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"no prepared documents in {directory} ({DOCUMENTS_FILE} missing)",
            hint="run `hotelbot prepare --documents datasets/documentos`",
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{manifest_path} is unreadable: {exc}", hint="run `hotelbot prepare --documents DIR` again"
        ) from None
    if manifest.get("format") != DOCUMENTS_FORMAT:
        raise DataError(f"{manifest_path} is not a hotelbot documents manifest (format {manifest.get('format')!r})")
    documents = [DocumentInfo(**d) for d in manifest.get("per_document", [])]
    chunks = _read_chunks(directory / CHUNKS_FILE)
    per_doc = Counter(c.doc for c in chunks)
    if per_doc != Counter({d.doc: d.chunks for d in documents}) or not chunks:
        raise DataError(
            f"{directory}: {CHUNKS_FILE} does not match {DOCUMENTS_FILE}",
            hint="run `hotelbot prepare --documents DIR` again",
        )
    chunking = manifest.get("chunking") or {}
    return PreparedDocuments(
        manifest.get("source", str(directory)),
        documents,
        chunks,
        int(chunking.get("max_chars", DEFAULT_MAX_CHARS)),
        int(chunking.get("overlap_chars", DEFAULT_OVERLAP_CHARS)),
    )


def load_documents(directory: Path) -> PreparedDocuments:
    """A prepared directory (has documents.json) is read; a folder of .md/.txt files is chunked now."""
    directory = Path(directory)
    if (directory / DOCUMENTS_FILE).exists():
        return read_prepared_documents(directory)
    if not directory.exists():
        raise DataError(
            f"no prepared documents in {directory}", hint="run `hotelbot prepare --documents datasets/documentos`"
        )
    return prepare_documents(directory)


# ============================================================================ vector index


class VectorIndex(abc.ABC):
    """Vectors keyed by id; cosine similarity search. Subclasses register in :data:`INDEX_TYPES`."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Append vectors (rows, L2-normalized here) under unique ids."""

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each query row, the ``k`` best (id, cosine) pairs, best first."""

    @abc.abstractmethod
    def save(self, directory: Path) -> list[str]:
        """Write the index's files into ``directory``; returns their names."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: Path) -> VectorIndex:
        """Read what :meth:`save` wrote."""

    @property
    @abc.abstractmethod
    def ids(self) -> list[str]:
        """Ids in insertion order."""

    @abc.abstractmethod
    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored (normalized) vectors of ``ids`` (for incremental rebuilds)."""

    def __len__(self) -> int:
        return len(self.ids)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if not np.isfinite(matrix).all():
        raise ModelError("embedding vectors contain NaN or infinity")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ModelError("an embedding vector is all zeros; it cannot be normalized")
    # Idempotent: rows already of unit length are kept bit for bit (reused vectors stay identical).
    return np.ascontiguousarray(np.where(np.abs(norms - 1) > 1e-6, matrix / norms, matrix), dtype=np.float32)


class ExactIndex(VectorIndex):
    """Exact cosine search: one float32 matrix of normalized rows, scores = queries @ matrix.T."""

    kind = "exact-cosine"
    MATRIX_FILE = "embeddings.npy"
    IDS_FILE = "embedding_ids.json"

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ModelError(f"index dimension must be positive, got {dim}")
        self.dim = int(dim)
        self._ids: list[str] = []
        self._matrix = np.zeros((0, self.dim), dtype=np.float32)
        self._row: dict[str, int] = {}

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def matrix(self) -> np.ndarray:
        return self._matrix

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        ids = list(ids)
        matrix = normalize_rows(vectors) if len(ids) else np.zeros((0, self.dim), dtype=np.float32)
        if matrix.shape != (len(ids), self.dim):
            raise ModelError(f"expected {len(ids)} vectors of dimension {self.dim}, got shape {matrix.shape}")
        duplicate = next((i for i in ids if i in self._row), None) or next(
            (i for i, n in Counter(ids).items() if n > 1), None
        )
        if duplicate is not None:
            raise ModelError(f"duplicate id in the index: {duplicate}")
        for i in ids:
            self._row[i] = len(self._ids)
            self._ids.append(i)
        self._matrix = np.ascontiguousarray(np.vstack([self._matrix, matrix]), dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        q = normalize_rows(queries)
        if q.shape[1] != self.dim:
            raise ModelError(f"query dimension {q.shape[1]} does not match the index ({self.dim})")
        k = min(int(k), len(self._ids))
        if k <= 0:
            return [[] for _ in range(len(q))]
        scores = q @ self._matrix.T
        out = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
            top = top[np.lexsort((top, -row[top]))]  # best score first; ties by insertion order
            out.append([(self._ids[i], float(row[i])) for i in top])
        return out

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        try:
            rows = [self._row[i] for i in ids]
        except KeyError as exc:
            raise ModelError(f"id {exc.args[0]!r} is not in the index") from None
        return self._matrix[rows] if rows else np.zeros((0, self.dim), dtype=np.float32)

    def save(self, directory: Path) -> list[str]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / self.MATRIX_FILE, "wb") as handle:
            np.save(handle, self._matrix, allow_pickle=False)
        atomic_write_json(directory / self.IDS_FILE, self._ids)
        return [self.MATRIX_FILE, self.IDS_FILE]

    @classmethod
    def load(cls, directory: Path) -> ExactIndex:
        directory = Path(directory)
        try:
            matrix = np.load(directory / cls.MATRIX_FILE, allow_pickle=False)
            ids = json.loads((directory / cls.IDS_FILE).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the vector index in {directory}: {exc}") from None
        if matrix.ndim != 2 or matrix.dtype != np.float32 or len(ids) != matrix.shape[0]:
            raise ModelError(f"vector index in {directory} is malformed: {matrix.dtype} {matrix.shape}, {len(ids)} ids")
        index = cls(matrix.shape[1])
        index._ids = [str(i) for i in ids]
        index._row = {i: n for n, i in enumerate(index._ids)}
        index._matrix = np.ascontiguousarray(matrix)
        return index


INDEX_TYPES: dict[str, type[VectorIndex]] = {ExactIndex.kind: ExactIndex}


# ============================================================================ embeddings


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
                encoded = self.tokenizer(
                    [prefix + texts[i] for i in batch],
                    padding=True,
                    truncation=True,
                    max_length=self.model.max_length,
                    return_tensors="pt",
                )
                if "token_type_ids" in encoded and "token_type_ids" not in self._accepts:
                    del encoded["token_type_ids"]
                encoded = {k: v.to(self.device) for k, v in encoded.items()}
                hidden = self.encoder(**encoded).last_hidden_state
                pooled = pool(hidden, encoded["attention_mask"], self.model.pooling)
                out[batch] = pooled.float().cpu().numpy()
                if on_batch is not None:
                    on_batch(n, len(batches))
        return normalize_rows(out) if len(texts) else out


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
        chunks = _read_chunks(path / CHUNKS_FILE)
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
            atomic_write_bytes(knowledge / CHUNKS_FILE, _chunks_bytes(prepared.chunks))
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
        cleaned = [clean_text(q) for q in queries]
        empty = next((q for q, c in zip(queries, cleaned) if not c), None)
        if empty is not None:
            raise DataError("empty search query", hint='give a question, e.g. "¿aceptan perros?"')
        return self.query_encoder.embed(cleaned, kind="query")

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
    atomic_write_bytes(target / CHUNKS_FILE, _chunks_bytes(kb.chunk_list))
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


# ============================================================================ BM25 and retrieval metrics


def _norm_heading(text: str) -> str:
    """Headings compare equal up to case, accents, punctuation and spacing."""
    folded = "".join(ch for ch in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(ch))
    return " ".join(re.findall(r"\w+", folded))


@dataclass(frozen=True)
class EvalQuestion:
    question: str
    doc: str
    section: str


def read_eval_questions(path: Path) -> list[EvalQuestion]:
    """``{"question", "doc", "section"}`` per line; a DataError names the line of a bad record."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise DataError(f"retrieval questions not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    out = []
    for number, record in iter_jsonl(path, text):
        try:
            item = EvalQuestion(*(record[k] for k in ("question", "doc", "section")))
        except (KeyError, TypeError) as exc:
            raise DataError(f'{path}: line {number}: expected {{"question", "doc", "section"}}: {exc}') from None
        if not all(isinstance(v, str) and v.strip() for v in (item.question, item.doc, item.section)):
            raise DataError(f"{path}: line {number}: question, doc and section must be non-empty strings")
        out.append(item)
    if not out:
        raise DataError(f"{path} holds no questions")
    return out


def ranking_metrics(rankings: Sequence[Sequence[Chunk]], questions: Sequence[EvalQuestion], k: int) -> dict[str, float]:
    """hit@1, hit@k and MRR (over the top k) at section level (right doc AND heading) and document level."""

    def first(ranked: Sequence[Chunk], match: Callable[[Chunk], bool]) -> int | None:
        return next((r for r, c in enumerate(ranked[:k], 1) if match(c)), None)

    section_ranks, doc_ranks = [], []
    for ranked, q in zip(rankings, questions):
        target = _norm_heading(q.section)
        # (the casts only type the lambdas: mypy cannot infer a lambda with default arguments)
        section_ranks.append(
            first(
                ranked,
                cast(
                    "Callable[[Chunk], bool]",
                    lambda c, q=q, target=target: c.doc == q.doc and _norm_heading(c.heading) == target,
                ),
            )
        )
        doc_ranks.append(first(ranked, cast("Callable[[Chunk], bool]", lambda c, q=q: c.doc == q.doc)))
    n = max(len(questions), 1)

    def block(ranks: list[int | None], prefix: str) -> dict[str, float]:
        return {
            f"{prefix}hit@1": sum(r == 1 for r in ranks) / n,
            f"{prefix}hit@{k}": sum(r is not None for r in ranks) / n,
            f"{prefix}mrr": sum(1 / r for r in ranks if r) / n,
        }

    return {**block(section_ranks, ""), **block(doc_ranks, "doc_")}


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
    known = {(c.doc, _norm_heading(c.heading)) for c in kb.chunk_list}
    unknown = sorted({f"{q.doc} / {q.section}" for q in questions if (q.doc, _norm_heading(q.section)) not in known})
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
        if not any(c.doc == q.doc and _norm_heading(c.heading) == _norm_heading(q.section) for c in ranked)
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
