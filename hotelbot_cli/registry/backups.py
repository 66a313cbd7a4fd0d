"""Backups of deployed versions: pinned references to blobs, not archives.

A version's files are already stored immutably, once, in ``blobs/`` (:mod:`.blobs`). A backup therefore
copies only what could otherwise be lost and pins the rest::

    backup/b00003-v0007.json   {"id", "version", "created_at", "reason", "format": "hotelbot-backup/2",
                                "files": {path: sha256}, "metadata": <the version's metadata.json>,
                                "validation": <its latest validate result or null>, "size_bytes", ...}

Taking one verifies the version (every file against its recorded sha256), makes sure every file is in the
blob store (a version written before the store existed is linked in, at no extra space), then writes the
record atomically. While the record exists ``hotelbot gc`` keeps its blobs, so ``versions/vNNNN`` can be
rebuilt from them (:func:`restore_from_backup`) after the directory was deleted, a file in it was replaced,
or its metadata.json was damaged. What a backup does NOT protect against: bytes changed IN PLACE in a
blob (a hard link shares them with every version holding the same content; ``verify`` detects it, nothing
can repair it) and the loss of the disk: copy the registry directory elsewhere for that.

Archives written by earlier releases (``bNNNNN-vNNNN.tar.gz`` + a record with ``archive`` and
``sha256``) are still listed, verified and restored; ``hotelbot migrate`` converts them to pinned records.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_write_json, fsync_dir, sha256_file
from ..errors import IntegrityError
from .checksums import METADATA_FILE, checksum_tree, require_no_problems
from .hooks import crashpoint, utc_now

if TYPE_CHECKING:
    from .store import ModelRegistry, VersionInfo

BACKUP_FORMAT = "hotelbot-backup/2"


def is_pinned(record: dict[str, Any]) -> bool:
    return record.get("format") == BACKUP_FORMAT


def record_name(record: dict[str, Any]) -> str:
    return f"{record['id']}-{record['version']}.json"


def list_backups(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Backup records, oldest first: pinned ones, and legacy archives whose .tar.gz is still there."""
    if not registry.backup_dir.is_dir():
        return []
    records = []
    for meta in sorted(registry.backup_dir.glob("b*.json")):
        try:
            record = json.loads(meta.read_text("utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(record, dict) or "id" not in record or "version" not in record:
            continue
        if is_pinned(record) or (registry.backup_dir / record.get("archive", "")).is_file():
            record["record"] = meta.name
            record["kind"] = "pinned" if is_pinned(record) else "archive"
            records.append(record)
    return sorted(records, key=lambda r: r["id"])


def _next_id(registry: ModelRegistry) -> str:
    existing = [int(p.name[1:6]) for p in registry.backup_dir.glob("b*.json") if p.name[1:6].isdigit()]
    return f"b{(max(existing) + 1 if existing else 1):05d}"


def remove_backup(registry: ModelRegistry, record: dict[str, Any]) -> None:
    """Delete a backup record (and a legacy archive); its blobs become garbage for ``gc`` if nothing else
    refers to them."""
    (registry.backup_dir / record_name(record)).unlink(missing_ok=True)
    if record.get("archive"):
        (registry.backup_dir / record["archive"]).unlink(missing_ok=True)


def pin(registry: ModelRegistry, info: VersionInfo) -> int:
    """Make sure every file of ``info`` is in the blob store (links, no extra space). Lock held. Returns the
    number of files that were not there yet (a version written before the store existed)."""
    added = 0
    for rel, sha in info.manifest.files.items():
        if not registry.blobs.has(sha):
            registry.blobs.ingest(info.path / rel, sha)
            added += 1
    return added


def create_backup(registry: ModelRegistry, name: str, reason: str, keep: int) -> dict[str, Any]:
    """Verify version ``name``, pin its blobs and write its backup record; keep the newest ``keep`` records.

    Call with the registry lock held. Raises IntegrityError when the version fails its checksums (a backup
    of corrupt files protects nothing). A crash before the record is written leaves no backup and nothing
    to clean up beyond what ``gc`` collects."""
    info = registry.get(name)
    require_no_problems(name, registry.verify(name))
    registry.backup_dir.mkdir(parents=True, exist_ok=True)
    pinned_now = pin(registry, info)
    crashpoint("mid-backup")
    files = info.manifest.files
    record = {
        "id": _next_id(registry),
        "version": name,
        "created_at": utc_now(),
        "reason": reason,
        "format": BACKUP_FORMAT,
        "files": files,
        "size_bytes": sum((info.path / rel).stat().st_size for rel in files),
        "linked_into_store": pinned_now,
        "metadata": info.metadata,
        "validation": registry.validation_of(name),
        "metrics": info.metadata.get("metrics", {}),
    }
    path = registry.backup_dir / record_name(record)
    atomic_write_json(path, record)
    record.update(record=path.name, kind="pinned", stored_bytes=path.stat().st_size)
    for old in list_backups(registry)[:-keep] if keep > 0 else []:
        remove_backup(registry, old)
    return record


def backup_problems(registry: ModelRegistry, record: dict[str, Any], checked: dict[str, bool]) -> list[str]:
    """What is wrong with one backup (empty: it can rebuild its version). ``checked`` memoises blob hashes
    across records (sha256 -> intact)."""
    if not is_pinned(record):
        archive = registry.backup_dir / record.get("archive", "")
        return [] if sha256_file(archive) == record.get("sha256") else [f"backup/{archive.name}: checksum mismatch"]
    problems = []
    for rel, sha in sorted(record.get("files", {}).items()):
        blob = registry.blobs.path(sha)
        if sha not in checked:
            checked[sha] = blob.is_file() and sha256_file(blob) == sha
        if not checked[sha]:
            state = "corrupt" if blob.is_file() else "missing"
            problems.append(f"backup/{record_name(record)}: {rel}: blob {sha[:12]} {state}")
    return problems


def restore_from_backup(registry: ModelRegistry, name: str) -> VersionInfo:
    """Rebuild versions/``name`` from its newest usable backup; IntegrityError naming why none could."""
    candidates = [r for r in reversed(list_backups(registry)) if r["version"] == name]
    why: list[str] = []
    for record in candidates:
        with registry.staging() as staged:
            restored = staged / name
            problems = _rebuild(registry, record, restored)
            if problems:
                why.extend(problems)
                continue
            target = registry.version_path(name)
            if target.exists():
                os.rename(target, staged / "corrupt")
            os.rename(restored, target)
            fsync_dir(registry.versions_dir)
            shutil.rmtree(staged, ignore_errors=True)
        if not is_pinned(record):  # files unpacked from an archive: into the blob store (links, no extra space)
            pin(registry, registry.get(name))
        if is_pinned(record) and record.get("validation") and registry.validation_of(name) is None:
            registry.record_validation(name, record["validation"])
        return registry.get(name)
    detail = f": {why[0]}" if why else ""
    raise IntegrityError(f"version {name} is corrupt or missing and no backup can rebuild it{detail}")


def _rebuild(registry: ModelRegistry, record: dict[str, Any], restored: Path) -> list[str]:
    """Write the version of ``record`` into ``restored`` (a path inside a staging dir); problems, or []."""
    if is_pinned(record):
        problems = registry.blobs.materialize(record.get("files", {}), restored)
        if problems:
            return [f"backup {record['id']}: {p}" for p in problems]
        atomic_write_json(restored / METADATA_FILE, record["metadata"])
        return []
    archive = registry.backup_dir / record["archive"]
    if sha256_file(archive) != record.get("sha256"):
        return [f"backup {record['id']}: archive {archive.name} fails its checksum"]
    with tempfile.TemporaryDirectory(dir=restored.parent) as unpack:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(unpack, filter="data")  # "data" filter: no absolute paths, links or devices
        unpacked = Path(unpack) / record["version"]
        if not unpacked.is_dir() or checksum_tree(unpacked) != record.get("files"):
            return [f"backup {record['id']}: archive {archive.name} does not hold the recorded files"]
        os.rename(unpacked, restored)
    return []


__all__ = [
    "BACKUP_FORMAT",
    "backup_problems",
    "create_backup",
    "is_pinned",
    "list_backups",
    "pin",
    "record_name",
    "remove_backup",
    "restore_from_backup",
]
