"""Registry housekeeping: ``hotelbot gc`` (delete blobs nothing refers to), ``hotelbot prune`` (delete old
versions) and ``hotelbot migrate`` (move a registry written before the blob store into it).

All take the registry lock, so they never interleave with a publish, a deploy or each other, and all are
safe to kill at any moment: gc deletes one unreferenced blob at a time; prune records a version as deleted,
then moves it out of ``versions/`` with one rename (readers see it whole or not at all) and removes it;
migrate replaces one file at a time by a link to the blob with the same bytes (an atomic rename) and
converts a legacy backup archive by writing its pinned record before deleting the archive.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .._io import atomic_write_json, fsync_dir, sha256_file
from ..errors import ConfigError, RegistryError, VersionNotFoundError
from .backups import BACKUP_FORMAT, is_pinned, list_backups, record_name
from .blobs import disk_usage, same_file
from .checksums import METADATA_FILE, checksum_tree
from .hooks import crashpoint
from .store import DELETED_PREFIX, STAGING_DIR, check_version_name

if TYPE_CHECKING:
    from .store import ModelRegistry, VersionInfo


def referenced_blobs(registry: ModelRegistry, excluding: Sequence[str] = ()) -> set[str]:
    """Every sha256 a version's manifest (but the ``excluding`` versions') or a pinned backup record refers to."""
    shas: set[str] = set()
    for info in registry.list_versions():
        if info.name not in excluding:
            shas.update(info.manifest.files.values())
    for record in list_backups(registry):
        if is_pinned(record):
            shas.update(record.get("files", {}).values())
    return shas


@dataclass
class GcResult:
    dry_run: bool
    removed: list[dict[str, Any]] = field(default_factory=list)  # {"sha256", "bytes"}
    removed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0
    repaired: list[str] = field(default_factory=list)
    registry_bytes_before: int = 0
    registry_bytes_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_garbage(registry: ModelRegistry, *, dry_run: bool = False, timeout: float | None = None) -> GcResult:
    """Delete the blobs that no version, no pinned backup and no in-progress build refers to.

    Holds the registry lock (waits up to ``timeout`` seconds for a running publish/deploy), first repairs
    what a killed writer left (dead staging builds, temporary files; not with ``dry_run``). A blob that a
    live build in ``.staging/`` links (a train carrying files over) has a second hard link and is kept."""
    result = GcResult(dry_run=dry_run, registry_bytes_before=disk_usage(registry.root))
    with registry.lock(timeout=timeout):
        if not dry_run:
            result.repaired = registry.repair()
        referenced = referenced_blobs(registry)
        garbage = registry.blobs.unreferenced(referenced)
        gone = {blob.sha256 for blob in garbage}
        for blob in registry.blobs:
            if blob.sha256 not in gone:
                result.kept += 1
                result.kept_bytes += blob.size
        for blob in garbage:
            if not dry_run:
                registry.blobs.remove(blob)
                crashpoint("mid-gc")
            result.removed.append({"sha256": blob.sha256, "bytes": blob.size})
            result.removed_bytes += blob.size
    result.registry_bytes_after = disk_usage(registry.root)
    return result


@dataclass
class MigrateResult:
    dry_run: bool
    versions: int = 0
    files: int = 0
    already_stored: int = 0  # files that were links to their blob already
    linked: int = 0  # files replaced by a link to a blob holding the same bytes (space freed)
    stored: int = 0  # files that became the blob of their content
    bytes_freed: int = 0  # what the shared files took before (with dry_run: would free)
    backups_converted: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    registry_bytes_before: int = 0
    registry_bytes_after: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.linked or self.stored or self.backups_converted)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


def migrate(registry: ModelRegistry, *, dry_run: bool = False, timeout: float | None = None) -> MigrateResult:
    """Move every version's files into the blob store (identical files become one) and convert legacy
    ``.tar.gz`` backups to pinned records. Files that fail their recorded checksum are left as they are
    and reported (``hotelbot verify`` lists them). Running it again changes nothing."""
    result = MigrateResult(dry_run=dry_run, registry_bytes_before=disk_usage(registry.root))
    with registry.lock(timeout=timeout):
        if not dry_run:
            result.repaired = registry.repair()
        planned: set[str] = set()  # contents a dry run would have stored by now
        for info in registry.list_versions():
            if info.manifest.corrupt:
                result.problems.append(f"{info.name}: metadata.json is missing or unreadable; left as it is")
                continue
            result.versions += 1
            for rel, sha in sorted(info.manifest.files.items()):
                result.files += 1
                _migrate_file(registry, info.path / rel, f"{info.name}/{rel}", sha, result, planned)
        for record in list_backups(registry):
            if not is_pinned(record):
                _convert_archive(registry, record, result, planned)
    result.registry_bytes_after = disk_usage(registry.root)
    return result


def _migrate_file(
    registry: ModelRegistry, path: Path, label: str, sha: str, result: MigrateResult, planned: set[str]
) -> None:
    blob = registry.blobs.path(sha)
    if not path.is_file():
        result.problems.append(f"{label}: missing; left as it is")
        return
    if blob.is_file() and same_file(blob, path):
        result.already_stored += 1
        return
    if sha256_file(path) != sha:
        result.problems.append(f"{label}: fails its recorded checksum; left as it is")
        return
    size = path.stat().st_size
    if blob.is_file() or sha in planned:
        result.linked += 1
        result.bytes_freed += size
    else:
        result.stored += 1
    planned.add(sha)
    if not result.dry_run:
        registry.blobs.ingest(path, sha)
        crashpoint("mid-migrate")


def _convert_archive(registry: ModelRegistry, record: dict[str, Any], result: MigrateResult, planned: set[str]) -> None:
    """A legacy .tar.gz backup -> a pinned record (same id), then the archive is deleted."""
    archive = registry.backup_dir / record["archive"]
    name = record["version"]
    if sha256_file(archive) != record.get("sha256"):
        result.problems.append(f"backup/{archive.name}: fails its checksum; left as it is")
        return
    files: dict[str, str] = record.get("files") or {}
    live = registry.version_path(name)
    metadata: dict[str, Any] | None = None
    if live.is_dir() and all(registry.blobs.has(sha) or sha in planned for sha in files.values()):
        try:
            metadata = json.loads((live / METADATA_FILE).read_text("utf-8"))
        except (OSError, json.JSONDecodeError):
            metadata = None
        if metadata is not None and metadata.get("files") != files:
            metadata = None  # the version dir is not the archived one: take everything from the archive
    if result.dry_run:
        result.backups_converted.append(archive.name)
        return
    if metadata is None:
        metadata = _ingest_archive(registry, archive, name, files, result)
        if metadata is None:
            return
    pinned = {
        "id": record["id"],
        "version": name,
        "created_at": record.get("created_at"),
        "reason": record.get("reason", ""),
        "format": BACKUP_FORMAT,
        "files": files,
        "size_bytes": record.get("size_bytes"),
        "converted_from": archive.name,
        "metadata": metadata,
        "validation": registry.validation_of(name),
        "metrics": record.get("metrics", metadata.get("metrics", {})),
    }
    atomic_write_json(registry.backup_dir / record_name(record), pinned)
    archive.unlink(missing_ok=True)
    result.backups_converted.append(archive.name)


def _ingest_archive(
    registry: ModelRegistry, archive: Path, name: str, files: dict[str, str], result: MigrateResult
) -> dict[str, Any] | None:
    """Unpack a legacy archive whose version is gone or differs, store its files as blobs; its metadata."""
    with registry.staging() as unpack:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(unpack, filter="data")  # "data" filter: no absolute paths, links or devices
            root = unpack / name
            if not root.is_dir() or checksum_tree(root) != files:
                result.problems.append(f"backup/{archive.name}: does not hold the recorded files; left as it is")
                return None
            try:
                metadata = json.loads((root / METADATA_FILE).read_text("utf-8"))
            except (OSError, json.JSONDecodeError):
                metadata = {"version": name, "files": files}
            registry.blobs.ingest_tree(root, files)
        finally:
            shutil.rmtree(unpack, ignore_errors=True)  # the blobs keep their own links
    return metadata


# ------------------------------------------------------------------ prune


@dataclass
class PruneResult:
    dry_run: bool
    deleted: list[str] = field(default_factory=list)  # (with dry_run: would be)
    kept: list[str] = field(default_factory=list)  # the versions left
    protected: dict[str, str] = field(default_factory=dict)  # version -> why it is never deleted
    pinned_by_backups: dict[str, list[str]] = field(default_factory=dict)  # deleted version -> its backup records
    freed_bytes: int = 0  # what gc removed afterwards (dry_run: the blobs only the deleted versions use)
    gc_skipped: bool = False
    repaired: list[str] = field(default_factory=list)
    registry_bytes_before: int = 0
    registry_bytes_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def protected_versions(registry: ModelRegistry) -> dict[str, str]:
    """The versions ``prune`` never deletes, with the reason: the deployed one, a running canary, and the one
    ``hotelbot rollback`` would return to."""
    state = registry.current_state()
    out: dict[str, str] = {}
    if state.get("version"):
        out[state["version"]] = "deployed"
    canary = state.get("canary")
    if canary:
        out.setdefault(canary["version"], "the running canary")
    earlier = [v for v in reversed(state.get("previous") or []) if v and v != state.get("version")]
    if earlier:
        out.setdefault(earlier[0], "the rollback target (what `hotelbot rollback` returns to)")
    return out


def prune_versions(
    registry: ModelRegistry,
    names: Sequence[str] = (),
    keep: int | None = None,
    *,
    reason: str = "",
    dry_run: bool = False,
    collect: bool = True,
    timeout: float | None = None,
) -> PruneResult:
    """Delete the versions ``names`` and/or all but the newest ``keep``, never a protected one
    (:func:`protected_versions`), then (``collect``) run gc to free the blobs nothing else refers to.

    Naming a protected or unknown version raises before anything is deleted. A deleted version's number is
    never given again (``deleted.jsonl``), and a backup record that pins it keeps its blobs (and can rebuild
    it: ``hotelbot rollback --to``) until the backup rotates out."""
    if not names and keep is None:
        raise RegistryError("nothing to prune", hint="name the versions (hotelbot prune v0003 v0004) or --keep N")
    if keep is not None and keep < 0:
        raise ConfigError(f"--keep must be 0 or more, got {keep}")
    result = PruneResult(dry_run=dry_run, registry_bytes_before=disk_usage(registry.root))
    with registry.lock(timeout=timeout):
        if not dry_run:
            result.repaired = registry.repair()
        versions = registry.list_versions()
        known = [v.name for v in versions]
        result.protected = protected_versions(registry)
        targets: list[str] = []
        for name in names:
            check_version_name(name)
            if name not in known:
                raise VersionNotFoundError(
                    f"version {name} not found in {registry.root} (versions: {', '.join(known) or 'none'})"
                )
            if name in result.protected:
                raise RegistryError(
                    f"{name} is {result.protected[name]}: it is never pruned",
                    hint="deploy or roll back to another version first",
                )
            if name not in targets:
                targets.append(name)
        if keep is not None:
            newest = set(known[max(0, len(known) - keep) :]) if keep else set()
            targets += [n for n in known if n not in newest and n not in result.protected and n not in targets]
        targets.sort(key=known.index)
        result.deleted = targets
        result.kept = [n for n in known if n not in targets]
        for record in list_backups(registry):
            if record["version"] in targets and is_pinned(record):
                result.pinned_by_backups.setdefault(record["version"], []).append(record["record"])
        if dry_run:
            result.freed_bytes = _only_theirs(registry, versions, targets)
        else:
            by_name = {v.name: v for v in versions}
            for name in targets:
                _delete_version(registry, by_name[name], reason)
    if collect and not dry_run and targets:
        result.freed_bytes = collect_garbage(registry, timeout=timeout).removed_bytes
    result.gc_skipped = not collect
    result.registry_bytes_after = disk_usage(registry.root)
    return result


def _only_theirs(registry: ModelRegistry, versions: list[Any], targets: list[str]) -> int:
    """Bytes gc would remove once ``targets`` are gone: the blobs nothing else refers to, whether only the
    targets held them or nothing did already (a blob a live build links is kept, as gc keeps it)."""
    left = referenced_blobs(registry, excluding=targets)
    links: dict[str, int] = {}  # the targets' own hard links to each blob
    for info in versions:
        if info.name in targets:
            for sha in info.manifest.files.values():
                links[sha] = links.get(sha, 0) + 1
    return sum(b.size for b in registry.blobs if b.sha256 not in left and b.links - links.get(b.sha256, 0) <= 1)


def _delete_version(registry: ModelRegistry, info: VersionInfo, reason: str) -> None:
    """Move ``info`` out of versions/ with one rename (the deletion itself: readers see the version whole or
    gone), record it (``deleted.jsonl``: its number is never given again; ``history.jsonl``), then remove it
    and its validation result. Lock held. A kill after the rename leaves ``.staging/deleted-vNNNN-*``:
    publish counts its number as taken, and the next writer's repair records it and removes it. ``info`` may
    be a version whose metadata.json is unreadable (prune is how one gets rid of it)."""
    name = info.name
    trash = registry.root / STAGING_DIR / f"{DELETED_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    crashpoint("mid-prune")
    os.rename(info.path, trash)
    fsync_dir(registry.versions_dir)
    crashpoint("after-prune-rename")
    registry.finish_deletion(name, trash, reason)


__all__ = [
    "GcResult",
    "MigrateResult",
    "PruneResult",
    "collect_garbage",
    "migrate",
    "protected_versions",
    "prune_versions",
    "referenced_blobs",
]
