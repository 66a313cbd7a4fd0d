"""Registry housekeeping: ``hotelbot gc`` (delete blobs nothing refers to) and ``hotelbot migrate`` (move a
registry written before the blob store into it).

Both take the registry lock, so they never interleave with a publish, a deploy or each other, and both are
safe to kill at any moment: gc deletes one unreferenced blob at a time; migrate replaces one file at a time
by a link to the blob with the same bytes (an atomic rename) and converts a legacy backup archive by
writing its pinned record before deleting the archive.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_write_json, sha256_file
from .backups import BACKUP_FORMAT, is_pinned, list_backups, record_name
from .blobs import disk_usage, same_file
from .checksums import METADATA_FILE, checksum_tree
from .hooks import crashpoint

if TYPE_CHECKING:
    from .store import ModelRegistry


def referenced_blobs(registry: ModelRegistry) -> set[str]:
    """Every sha256 a version's manifest or a pinned backup record refers to."""
    shas: set[str] = set()
    for info in registry.list_versions():
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


__all__ = ["GcResult", "MigrateResult", "collect_garbage", "migrate", "referenced_blobs"]
