"""Content-addressed storage: every file of every version is stored ONCE, by its sha256.

Layout under the registry root::

    blobs/ab/ab12...ef     one read-only file per distinct content, named by its sha256

A version directory (``versions/vNNNN/``) holds HARD LINKS to its blobs, so every reader (Hugging Face's
``from_pretrained``, onnxruntime, ``np.load``) still sees an ordinary directory of files, and a file that
two versions share (the frozen word-embedding matrix, the tokenizer, a carried-over component) takes disk
space once. Publishing a version (:meth:`BlobStore.ingest`, called with the registry lock held) links each
staged file into the store, or replaces it by a link to the blob that already holds its bytes.

Hard links share one inode: writing INTO a version's file in place changes every version that shares it.
Blobs are therefore made read-only (0444), hotelbot never opens a published file for writing, and
``verify`` hashes each file against the sha256 recorded at publish time. Where the filesystem cannot hard
link (another device, or a filesystem without links) a file is copied instead: correct, but not shared.

:meth:`BlobStore.unreferenced` is what ``hotelbot gc`` may delete: blobs that no version's manifest, no
backup record and no in-progress build refers to (a build in ``.staging/`` holds hard links to the blobs it
carries over, so a blob with a second link is never garbage).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from .._io import fsync_dir, sha256_file
from ..errors import IntegrityError

BLOBS_DIR = "blobs"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
# errno values that mean "this filesystem cannot hard link here": then copy
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


def same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link ``source`` at ``target`` (True), or copy it where the filesystem cannot link (False)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return True
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
    shutil.copy2(source, target)
    return False


def link_tree(source: Path, target: Path) -> None:
    """:func:`link_or_copy` every regular file below ``source`` to the same place below ``target``."""
    source, target = Path(source), Path(target)
    if source.is_file():
        link_or_copy(source, target)
        return
    for path in sorted(source.rglob("*")):
        if path.is_file():
            link_or_copy(path, target / path.relative_to(source))


def disk_usage(root: Path) -> int:
    """Bytes ``root`` really takes: allocated blocks of every regular file below it, each inode counted once
    (hard links shared by two versions count once, as ``du`` counts them)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


@dataclass(frozen=True)
class Blob:
    sha256: str
    path: Path
    size: int
    links: int  # hard links to it, the store's own included: 1 means only the store holds it


@dataclass
class IngestStats:
    stored: int = 0  # new contents added to the store
    shared: int = 0  # files replaced by a link to a blob that already held their bytes
    copied: int = 0  # contents stored by copying (no hard links on this filesystem)
    stored_bytes: int = 0  # bytes the new contents take
    shared_bytes: int = 0  # bytes NOT stored again thanks to sharing

    def add(self, other: IngestStats) -> None:
        for key, value in other.__dict__.items():
            setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class BlobStore:
    """The ``blobs/`` directory of a registry. Writers call :meth:`ingest` with the registry lock held."""

    def __init__(self, registry_root: Path) -> None:
        self.root = Path(registry_root) / BLOBS_DIR

    def path(self, sha256: str) -> Path:
        if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
            raise IntegrityError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def __iter__(self) -> Iterator[Blob]:
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if not shard.is_dir():
                continue
            for path in sorted(shard.iterdir()):
                if SHA256_RE.match(path.name):
                    st = path.stat()
                    yield Blob(path.name, path, st.st_size, st.st_nlink)

    def temp_files(self) -> list[Path]:
        """Leftovers of an ingest killed mid-way (only garbage when no writer holds the lock)."""
        return sorted(self.root.glob("*/.*.tmp")) if self.root.is_dir() else []

    # ------------------------------------------------------------ writing
    def ingest(self, file: Path, sha256: str) -> IngestStats:
        """Make ``file`` (whose content hashes to ``sha256``) a link to its blob.

        - no blob yet: the file becomes the blob (a hard link, made read-only): stored once;
        - a blob with the same bytes: ``file`` is atomically replaced by a link to it (its own copy is freed);
        - a blob whose bytes no longer hash to its name (corrupted in place): replaced by ``file``'s intact bytes.
        """
        file = Path(file)
        blob = self.path(sha256)
        size = file.stat().st_size
        if blob.is_file():
            if same_file(blob, file):
                return IngestStats(shared=1, shared_bytes=size)
            if sha256_file(blob) == sha256:
                tmp = file.with_name(f".{file.name}.{os.getpid()}.link.tmp")
                tmp.unlink(missing_ok=True)
                if link_or_copy(blob, tmp):
                    os.replace(tmp, file)
                    return IngestStats(shared=1, shared_bytes=size)
                tmp.unlink(missing_ok=True)  # no links here: keep the file as it is
                return IngestStats(copied=1, stored_bytes=size)
        blob.parent.mkdir(parents=True, exist_ok=True)
        tmp = blob.with_name(f".{sha256}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        linked = link_or_copy(file, tmp)
        if not linked:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, READ_ONLY)
        os.replace(tmp, blob)
        fsync_dir(blob.parent)
        return IngestStats(stored=1, stored_bytes=size) if linked else IngestStats(copied=1, stored_bytes=size)

    def ingest_tree(self, root: Path, files: Mapping[str, str]) -> IngestStats:
        """:meth:`ingest` every ``files`` entry (POSIX path relative to ``root`` -> sha256)."""
        total = IngestStats()
        for rel, sha in sorted(files.items()):
            total.add(self.ingest(Path(root) / rel, sha))
        return total

    def materialize(self, files: Mapping[str, str], target: Path) -> list[str]:
        """Link every ``files`` entry from its blob into ``target`` (to rebuild a version); returns problems
        (a missing blob, or one whose bytes no longer match its name) and links nothing when there is one."""
        problems = []
        for rel, sha in sorted(files.items()):
            blob = self.path(sha)
            if not blob.is_file():
                problems.append(f"{rel}: its blob {sha[:12]} is not in the store")
            elif sha256_file(blob) != sha:
                problems.append(
                    f"{rel}: its blob {sha[:12]} is corrupt (changed in place: every version sharing it is affected)"
                )
        if problems:
            return problems
        for rel, sha in sorted(files.items()):
            link_or_copy(self.path(sha), Path(target) / rel)
        return []

    # ------------------------------------------------------------ garbage
    def unreferenced(self, referenced: Iterable[str]) -> list[Blob]:
        """Blobs no record refers to (``referenced``: sha256s of versions, backups) and no other path links."""
        keep = set(referenced)
        return [blob for blob in self if blob.sha256 not in keep and blob.links <= 1]

    def remove(self, blob: Blob) -> None:
        blob.path.unlink(missing_ok=True)
        try:
            blob.path.parent.rmdir()
        except OSError:
            pass  # not empty


__all__ = ["BLOBS_DIR", "Blob", "BlobStore", "IngestStats", "disk_usage", "link_or_copy", "link_tree", "same_file"]
