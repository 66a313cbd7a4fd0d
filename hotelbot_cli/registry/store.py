"""The model registry: immutable versions on the local filesystem.

Layout under ``root`` (names are the constants below)::

    versions/v0001/        immutable once published: metadata.json + the version's files
    current.json           THE deployed state: {"version", "previous": [...], "event_id", ...,
                           "canary": {"version", "weight", ...} while a gradual deploy runs},
                           replaced atomically (one os.replace) by deploy and rollback
    current -> versions/vNNNN   a symlink derived from current.json for tools that want a path;
                           re-pointed right after each switch and repaired by the next writer
    blobs/ab/ab12...       every file of every version, stored ONCE by sha256 (read-only); version
                           directories hold hard links to them (see registry.blobs)
    backup/                pinned backup records (bNNNNN-vNNNN.json: the version's file list, metadata and
                           validation; its blobs are kept by them) and legacy .tar.gz archives
    validations/v0001.json latest ``hotelbot validate`` result per version (versions stay immutable)
    history.jsonl          append-only audit of deploys, rollbacks, failed gates and pruned versions
    deleted.jsonl          the versions ``hotelbot prune`` deleted (their numbers are never given again)
    .staging/              versions being built; a crash leaves only garbage here, never a half version
    .lock                  OS file lock serialising writers

A version is built in ``.staging/<random>/`` (its builder holds ``.staging/<random>.owner`` locked, so
another writer's repair never removes a live build), its files are linked into ``blobs/`` under the lock,
and it is published with one ``rename`` to ``versions/vNNNN``: readers never see a partial version. Names given by users are validated against ``VERSION_RE``
before any path is built, so they can never escape ``root``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .._io import atomic_write_json, fsync_dir
from ..errors import IntegrityError, RegistryError, VersionNotFoundError
from .blobs import BlobStore, IngestStats
from .checksums import METADATA_FILE, checksum_tree, require_no_problems, version_problems
from .hooks import crashpoint, utc_now
from .manifest import Manifest

VERSIONS_DIR = "versions"
CURRENT_LINK = "current"
CURRENT_STATE = "current.json"
BACKUP_DIR = "backup"
VALIDATIONS_DIR = "validations"
HISTORY_FILE = "history.jsonl"
DELETED_FILE = "deleted.jsonl"  # versions `hotelbot prune` deleted: their numbers are never reused
DELETED_PREFIX = "deleted-"  # .staging/deleted-vNNNN-<random>: a version prune moved out, being removed
STAGING_DIR = ".staging"
OWNER_SUFFIX = ".owner"
LOCK_FILE = ".lock"
VERSION_RE = re.compile(r"^v(\d{4,6})$")
# Names every command accepts for a version (README "Version names"): the newest, the deployed one, and the
# one deployed before it (what `hotelbot rollback` returns to).
ALIASES = ("latest", "current", "deployed", "previous")


def check_version_name(name: str) -> str:
    if not isinstance(name, str) or not VERSION_RE.match(name):
        raise RegistryError(f"invalid version name {name!r}: expected v followed by 4 to 6 digits, e.g. v0003")
    return name


@dataclass(frozen=True)
class VersionInfo:
    name: str
    path: Path
    metadata: dict[str, Any]

    @property
    def number(self) -> int:
        return int(self.name[1:])

    @property
    def metrics(self) -> dict[str, Any]:
        return self.metadata.get("metrics") or {}

    @property
    def manifest(self) -> Manifest:
        """The typed view of ``metadata`` (files, components, carried over, ...)."""
        return Manifest(self.metadata)


class ModelRegistry:
    """A versioned model store rooted at ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = BlobStore(self.root)
        self.last_ingest = IngestStats()  # what the last publish stored and shared (for the log and --json)

    # ------------------------------------------------------------ paths
    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS_DIR

    def version_path(self, name: str) -> Path:
        return self.versions_dir / check_version_name(name)

    # ------------------------------------------------------------ locking
    @contextlib.contextmanager
    def lock(self, blocking: bool = True, timeout: float | None = None) -> Iterator[None]:
        """Exclusive OS lock over the registry's writers (released by the kernel if the process dies).

        ``blocking=False`` fails at once when another process holds it; ``timeout`` waits that many
        seconds, then fails with a clear RegistryError.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+b") as handle:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    flags = fcntl.LOCK_EX | (0 if blocking and deadline is None else fcntl.LOCK_NB)
                    fcntl.flock(handle.fileno(), flags)
                    break
                except BlockingIOError:
                    if deadline is None or time.monotonic() >= deadline:
                        waited = "" if deadline is None else f" (waited {timeout:g}s)"
                        raise RegistryError(
                            f"another hotelbot process is changing the registry {self.root}{waited}; "
                            "try again when it finishes"
                        ) from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # ------------------------------------------------------------ reading
    def _read_metadata(self, path: Path) -> dict[str, Any]:
        try:
            return json.loads((path / METADATA_FILE).read_text("utf-8"))
        except FileNotFoundError:
            raise IntegrityError(f"{path.name}: metadata.json is missing") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise IntegrityError(f"{path.name}: metadata.json is unreadable: {exc}") from None

    def list_versions(self) -> list[VersionInfo]:
        if not self.versions_dir.is_dir():
            return []
        out = []
        for path in sorted(self.versions_dir.iterdir()):
            if path.is_dir() and VERSION_RE.match(path.name):
                try:
                    metadata = self._read_metadata(path)
                except IntegrityError:
                    metadata = {"version": path.name, "corrupt": True}
                out.append(VersionInfo(path.name, path, metadata))
        return sorted(out, key=lambda v: v.number)

    def get(self, name: str) -> VersionInfo:
        path = self.version_path(name)
        if not path.is_dir():
            known = ", ".join(v.name for v in self.list_versions()) or "none"
            raise VersionNotFoundError(f"version {name} not found in {self.root} (versions: {known})")
        return VersionInfo(name, path, self._read_metadata(path))

    def current_state(self) -> dict[str, Any]:
        """The deployed state: {"version": str | None, "previous": [older currents, newest last], ...}."""
        try:
            state = json.loads((self.root / CURRENT_STATE).read_text("utf-8"))
        except FileNotFoundError:
            return {"version": None, "previous": []}
        except (OSError, json.JSONDecodeError) as exc:
            raise IntegrityError(f"{self.root / CURRENT_STATE} is unreadable: {exc}") from None
        if state.get("version") is not None:
            check_version_name(state["version"])
        for name in state.get("previous", []):
            check_version_name(name)
        canary = state.get("canary")  # a gradual deploy's second version (pipeline.canary)
        if canary is not None:
            if not isinstance(canary, dict) or not isinstance(canary.get("version"), str):
                raise IntegrityError(f'{self.root / CURRENT_STATE}: its canary is not {{"version", "weight", ...}}')
            check_version_name(canary["version"])
        state.setdefault("previous", [])
        return state

    def current_name(self) -> str | None:
        return self.current_state().get("version")

    def write_current_state(self, state: dict[str, Any]) -> None:
        """Switch the deployed version: ONE atomic replace of current.json, then re-point the symlink.

        A crash between the two leaves a stale symlink that :meth:`repair` fixes; every reader in
        hotelbot goes through current.json, so no reader ever sees a mix.
        """
        if state.get("version") is not None:
            check_version_name(state["version"])
        atomic_write_json(self.root / CURRENT_STATE, state)
        crashpoint("after-state-switch")
        self._point_symlink(state.get("version"))

    def _point_symlink(self, name: str | None) -> None:
        link = self.root / CURRENT_LINK
        if name is None:
            if link.is_symlink():
                link.unlink()
            return
        target = f"{VERSIONS_DIR}/{name}"
        if link.is_symlink() and os.readlink(link) == target:
            return
        tmp = self.root / f".{CURRENT_LINK}.{os.getpid()}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
        fsync_dir(self.root)

    def repair(self) -> list[str]:
        """Undo what a killed writer may have left: stale symlink, temp files, staging dirs.

        Call with the lock held. Returns what was fixed (for the log).
        """
        fixed = []
        version = self.current_name()
        link = self.root / CURRENT_LINK
        want = None if version is None else f"{VERSIONS_DIR}/{version}"
        have = os.readlink(link) if link.is_symlink() else None
        if have != want:
            self._point_symlink(version)
            fixed.append(f"current symlink -> {version}")
        for leftover in list(self.root.glob(".*.tmp")) + list((self.root / BACKUP_DIR).glob("*.tmp")):
            leftover.unlink(missing_ok=True)
            fixed.append(f"removed {leftover.name}")
        for leftover in self.blobs.temp_files():
            leftover.unlink(missing_ok=True)
            fixed.append(f"removed {leftover.parent.name}/{leftover.name}")
        staging = self.root / STAGING_DIR
        if staging.is_dir():
            for build in sorted(staging.iterdir()):
                pruned = _deleting(build)
                if pruned:  # a version `hotelbot prune` had moved out when it was killed: finish the deletion
                    self.finish_deletion(pruned.group(1), build, "an interrupted `hotelbot prune`, completed")
                    fixed.append(f"finished deleting {pruned.group(1)}")
                    continue
                if build.name.endswith(OWNER_SUFFIX) or _owner_alive(staging / (build.name + OWNER_SUFFIX)):
                    continue  # an owner file, or a build another process is still writing
                shutil.rmtree(build, ignore_errors=True) if build.is_dir() else build.unlink(missing_ok=True)
                fixed.append(f"removed staging {build.name}")

            for owner in staging.glob("*" + OWNER_SUFFIX):
                if not (staging / owner.name[: -len(OWNER_SUFFIX)]).exists() and not _owner_alive(owner):
                    owner.unlink(missing_ok=True)
        return fixed

    def latest(self) -> VersionInfo | None:
        versions = self.list_versions()
        return versions[-1] if versions else None

    def resolve(self, spec: str | None = None, *, verify: bool = False) -> VersionInfo:
        """``None`` -> the deployed version, else the newest; or a name / alias: 'latest' (the newest),
        'current' or 'deployed' (the deployed one), 'previous' (the one deployed before it).
        ``verify``: also check every file against its recorded checksum (IntegrityError if one fails)."""
        info = self._resolve(spec)
        return self.require_intact(info.name) if verify else info

    def _resolve(self, spec: str | None) -> VersionInfo:
        if spec in (None, "", "current", "deployed"):
            current = self.current_name()
            if current:
                return self.get(current)
            if spec:
                raise VersionNotFoundError("no version is deployed yet", hint="run `hotelbot deploy`")
            spec = "latest"
        if spec == "previous":
            state = self.current_state()
            earlier = [v for v in reversed(state.get("previous") or []) if v and v != state.get("version")]
            if not earlier:
                raise VersionNotFoundError(
                    "no version was deployed before the current one", hint="`hotelbot history` lists the deploys"
                )
            return self.get(earlier[0])
        if spec == "latest":
            latest = self.latest()
            if latest is None:
                raise VersionNotFoundError(
                    f"the registry {self.root} has no versions yet",
                    hint="run `hotelbot prepare DATA` then `hotelbot train`",
                )
            return self.get(latest.name)
        return self.get(spec)

    # ------------------------------------------------------------ writing
    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh directory to build a version in; removed if the block raises."""
        base = self.root / STAGING_DIR
        base.mkdir(parents=True, exist_ok=True)
        # the owner file first, locked for the build's lifetime: repair() skips a build whose owner is alive
        fd, owner = tempfile.mkstemp(dir=base, prefix="build-", suffix=OWNER_SUFFIX)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = Path(owner[: -len(OWNER_SUFFIX)])
        try:
            path.mkdir()
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        finally:
            Path(owner).unlink(missing_ok=True)
            os.close(fd)

    def publish(self, staged: Path, metadata: dict[str, Any]) -> VersionInfo:
        """Checksum ``staged``, link its files into the blob store (each content stored once), write its
        metadata, and rename it to the next version number. ``last_ingest`` says what was stored and shared."""
        staged = Path(staged)
        metadata = dict(metadata)
        metadata["files"] = checksum_tree(staged)
        with self.lock():
            self.last_ingest = self.blobs.ingest_tree(staged, metadata["files"])
            metadata["storage"] = self.last_ingest.to_dict()  # what this version added to the registry
            crashpoint("before-publish")
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            numbers = [int(m.group(1)) for p in self.versions_dir.iterdir() if (m := VERSION_RE.match(p.name))]
            numbers += self.deleted_numbers()  # a pruned version's number is never given again
            name = f"v{(max(numbers) + 1 if numbers else 1):04d}"
            metadata["version"] = name
            metadata.setdefault("created_at", utc_now())
            atomic_write_json(staged / METADATA_FILE, metadata)
            os.rename(staged, self.versions_dir / name)
            fsync_dir(self.versions_dir)
        return self.get(name)

    def verify(self, name: str) -> list[str]:
        """Problems with a version's files against its recorded checksums (empty list: intact)."""
        info = self.get(name)
        return version_problems(name, info.path, info.manifest.files)

    def require_intact(self, name: str) -> VersionInfo:
        require_no_problems(name, self.verify(name))
        return self.get(name)

    # ------------------------------------------------------------ validation results
    def record_validation(self, name: str, result: dict[str, Any]) -> Path:
        path = self.root / VALIDATIONS_DIR / f"{check_version_name(name)}.json"
        atomic_write_json(path, result)
        return path

    def validation_of(self, name: str) -> dict[str, Any] | None:
        path = self.root / VALIDATIONS_DIR / f"{check_version_name(name)}.json"
        try:
            return json.loads(path.read_text("utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def validation_records(self) -> Iterator[dict[str, Any]]:
        """Every recorded validation result (unreadable ones skipped), newest version first."""
        directory = self.root / VALIDATIONS_DIR
        paths = [p for p in directory.glob("v*.json") if VERSION_RE.match(p.stem)] if directory.is_dir() else []
        for path in sorted(paths, key=lambda p: int(p.stem[1:]), reverse=True):
            try:
                record = json.loads(path.read_text("utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(record, dict):
                yield record

    # ------------------------------------------------------------ pruned versions
    def _staged(self) -> list[Path]:
        staging = self.root / STAGING_DIR
        return sorted(staging.iterdir()) if staging.is_dir() else []

    def record_deleted(self, record: dict[str, Any]) -> None:
        """Append a pruned version's record to ``deleted.jsonl`` (before it is removed; lock held)."""
        self._append_line(DELETED_FILE, record)

    def finish_deletion(self, name: str, moved: Path, reason: str) -> None:
        """The end of ``hotelbot prune`` for a version already moved out of versions/ to ``moved``: record it
        (deleted.jsonl, history.jsonl), remove its validation result, then the directory. Lock held."""
        self.record_deleted({"version": name, "at": utc_now(), "reason": reason})
        self.append_history({"event": "delete", "from": name, "to": None, "reason": reason})
        (self.root / VALIDATIONS_DIR / f"{name}.json").unlink(missing_ok=True)
        garbage = moved.with_name(f"removed-{moved.name}")  # recorded: a leftover is now plain garbage for repair
        os.rename(moved, garbage)
        shutil.rmtree(garbage, ignore_errors=True)

    def deleted_numbers(self) -> list[int]:
        """The numbers of the versions ``hotelbot prune`` deleted, or is deleting (never reused by
        :meth:`publish`)."""
        numbers = [int(m.group(1)[1:]) for m in map(_deleting, self._staged()) if m]
        try:
            lines = (self.root / DELETED_FILE).read_text("utf-8").splitlines()
        except FileNotFoundError:
            return numbers
        for line in lines:
            try:
                match = VERSION_RE.match(str(json.loads(line).get("version")))
            except (ValueError, AttributeError):
                continue  # a line torn by a crash
            if match:
                numbers.append(int(match.group(1)))
        return numbers

    # ------------------------------------------------------------ history
    def append_history(self, event: dict[str, Any]) -> None:
        self._append_line(HISTORY_FILE, {"at": utc_now(), "user": os.environ.get("USER", "unknown"), **event})

    def _append_line(self, name: str, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / name, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    # ------------------------------------------------------------ backups
    @property
    def backup_dir(self) -> Path:
        return self.root / BACKUP_DIR


def _deleting(path: Path) -> re.Match[str] | None:
    """``.staging/deleted-vNNNN-<random>``: group 1 is the version prune was deleting."""
    return re.match(r"^" + DELETED_PREFIX + r"(v\d{4,6})-[0-9a-f]+$", path.name) if path.is_dir() else None


def _owner_alive(owner: Path) -> bool:
    """Whether a live process holds the lock of a staging build's owner file."""
    try:
        fd = os.open(owner, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we just took
    return False
