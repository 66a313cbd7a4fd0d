"""Hotel documents and their chunks: :func:`prepare_documents` reads ``.md``/``.txt`` files and splits them
into chunks on headings and paragraphs (with overlap inside long sections), keeping per chunk the source
file, its heading path and character offsets into the ORIGINAL file text (``text[start:end]`` is the
chunk's source span); :func:`write_prepared_documents` / :func:`read_prepared_documents` store them as
``chunks.jsonl`` + ``documents.json`` (per-file sha256). Part of the knowledge base (:mod:`.kb`)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from ..._io import atomic_write_bytes, atomic_write_json, iter_jsonl
from ...data import clean_text
from ...errors import DataError


CHUNKS_FILE = "chunks.jsonl"
DOCUMENTS_FILE = "documents.json"
DOCUMENTS_FORMAT = "hotelbot-documents/1"
SUPPORTED_DOCUMENT_SUFFIXES = (".md", ".txt")
DEFAULT_MAX_CHARS = 800
DEFAULT_OVERLAP_CHARS = 150


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


def chunks_bytes(chunks: Iterable[Chunk]) -> bytes:
    return "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in chunks).encode("utf-8")


def write_prepared_documents(prepared: PreparedDocuments, out_dir: Path) -> Path:
    """``chunks.jsonl`` then ``documents.json`` (the completion marker), each written atomically."""
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / CHUNKS_FILE, chunks_bytes(prepared.chunks))
    atomic_write_json(out_dir / DOCUMENTS_FILE, {"format": DOCUMENTS_FORMAT, **prepared.to_summary()})
    return out_dir


def read_chunks(path: Path) -> list[Chunk]:
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
    chunks = read_chunks(directory / CHUNKS_FILE)
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
