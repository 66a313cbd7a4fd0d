"""File I/O every layer shares: atomic writes, fsync, sha256, and JSONL reading with file:line errors.

Atomic writes follow pypa/build's ``_write_report``: write to a temporary file in the SAME directory,
fsync it, ``os.replace`` it over the target, fsync the directory; on any failure remove the temporary
file. A reader sees the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def dumps_json(data: Any) -> bytes:
    return (json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, dumps_json(data))


_HASHED: contextvars.ContextVar[dict[tuple[int, ...], str] | None] = contextvars.ContextVar("hashed", default=None)


@contextlib.contextmanager
def hashing_once() -> Iterator[None]:
    """Inside this block :func:`sha256_file` hashes each file once: a file seen again with the same device,
    inode, size, mtime and ctime returns the digest it had. One operation (a deploy: the target's checksum
    check, then the gate and the smoke test loading its components, each checking what it reads) runs under
    the registry lock for seconds, and registry files are content-addressed and read-only, so re-reading
    the same gigabyte three times proves nothing more. Outside the block every call reads the file."""
    token = _HASHED.set({} if _HASHED.get() is None else _HASHED.get())
    try:
        yield
    finally:
        _HASHED.reset(token)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (once per :func:`hashing_once` block)."""
    memo = _HASHED.get()
    key: tuple[int, ...] = ()
    if memo is not None:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key in memo:
            return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if memo is not None:
        memo[key] = digest.hexdigest()
    return digest.hexdigest()


def iter_jsonl(path: Path, text: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for every non-blank line of a JSONL file (``text``: its content, when
    the caller has read it already). A line that is not JSON raises DataError
    ``"{path}: line {n}: invalid JSON: {msg} (column {c})"``."""
    lines = (Path(path).read_text("utf-8") if text is None else text).splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        yield number, record
