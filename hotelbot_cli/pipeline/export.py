"""`hotelbot export VERSION --format pt|hf|onnx DIR`: a version's components in formats for the outside world
(a version's own files are the registry's business and may be stored in any layout).

* ``pt``: the seed's self-contained ``DIR/intent_classifier.pt`` (``torch.load(path, weights_only=True)``);
* ``hf``: one standard Hugging Face directory per component with a transformer, ``DIR/<component>/``, whose
  ``README.md`` says how to compute the component's answer;
* ``onnx``: ``DIR/<component>/``, the runtime files the version serves with (graphs with every external data
  file they reference, tokenizer, classifier.json, runtime.json).

Every component the version holds is written by its own :meth:`~hotelbot_cli.components.base.Component.export`
(through its own loaders) or listed as skipped with the reason. The version's checksums are verified first
(a corrupt version is refused). The export is built in a hidden directory beside ``DIR`` (same filesystem),
``export.json`` (what, from which version, every file's sha256) is written last, and the directory is renamed
into place: a reader never sees half an export, and a failure leaves nothing. A non-empty ``DIR`` is replaced
only with ``force``, and only once the new export is complete. Nothing here prints.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .. import __version__
from .._io import atomic_write_json, fsync_dir, sha256_file
from ..components import find, get, registered
from ..components.compose import components_of
from ..errors import ExportError, ExportUnavailable
from ..registry import ModelRegistry, VersionInfo
from ..registry.store import utc_now

if TYPE_CHECKING:
    from ..components import Component
    from ..config import Settings

log = logging.getLogger("hotelbot.export")

FORMATS = ("pt", "hf", "onnx")
PER_COMPONENT_DIRS = {"pt": False, "hf": True, "onnx": True}  # hf, onnx: DIR/<component>/; pt: files in DIR
EXPORT_RECORD = "export.json"
EXPORT_FORMAT = "hotelbot-export/1"


@dataclass
class ExportResult:
    version: str
    format: str
    output: Path
    replaced: bool  # DIR held an earlier export (or anything) that --force replaced
    components: list[dict[str, Any]]  # {"component", "path", "files", "size_bytes", "loads_with", ...}
    skipped: list[dict[str, str]]  # {"component", "reason"}
    files: int
    size_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "format": self.format,
            "output": str(self.output),
            "replaced": self.replaced,
            "components": self.components,
            "skipped": self.skipped,
            "files": self.files,
            "size_bytes": self.size_bytes,
            "record": EXPORT_RECORD,
            "seconds": round(self.seconds, 3),
        }


def _describe(component: Component) -> str:
    return component.description.split(" (")[0] if component.description else component.name


def _unsupported(component: Component, fmt: str) -> str:
    formats = ", ".join(component.export_formats)
    return f"the {_describe(component)} has no {fmt} export" + (
        f" (it exports as {formats})" if formats else " (it has no export)"
    )


def plan(
    info: VersionInfo, fmt: str, only: Sequence[str] | None = None
) -> tuple[list[Component], list[dict[str, str]]]:
    """(components to export, skipped [{"component", "reason"}]) of version ``info`` in format ``fmt``.

    ``only``: the component names asked for (each must be registered, held by the version and exportable
    as ``fmt``: ExportError otherwise); None: every component the version holds, the others skipped."""
    held = components_of(info)
    if only:
        chosen = []
        for name in dict.fromkeys(only):
            component = get(name)  # DataError naming the known components
            if name not in held:
                raise ExportError(f"version {info.name} holds no {name} (it holds {', '.join(held) or 'nothing'})")
            if fmt not in component.export_formats:
                raise ExportError(_unsupported(component, fmt))
            chosen.append(component)
        return chosen, []
    chosen, skipped = [], []
    for component in registered():
        if component.name not in held:
            continue
        if fmt in component.export_formats:
            chosen.append(component)
        else:
            skipped.append({"component": component.name, "reason": _unsupported(component, fmt)})
    for name in held:
        if find(name) is None:
            skipped.append({"component": name, "reason": f"{name} is not a component this hotelbot knows"})
    return chosen, skipped


def check_target(output: Path, registry_root: Path, force: bool) -> bool:
    """Whether exporting to ``output`` replaces existing content; ExportError when it may not be written:
    a file or symbolic link, a non-empty directory without ``force``, a path inside the registry or one
    that contains it, or the working directory (or one above it)."""
    if output.is_symlink():
        raise ExportError(f"{output} is a symbolic link; give the directory itself")
    resolved, root, cwd = output.resolve(), Path(registry_root).resolve(), Path.cwd().resolve()
    if resolved == root or root in resolved.parents or resolved in root.parents:
        raise ExportError(f"{output} is inside the registry {root} or contains it; export somewhere else")
    if resolved == cwd or resolved in cwd.parents:
        raise ExportError(f"{output} is the working directory or contains it; give a directory of its own")
    if not output.exists():
        return False
    if not output.is_dir():
        raise ExportError(f"{output} exists and is not a directory")
    if not any(output.iterdir()):
        return False
    if not force:
        raise ExportError(f"{output} is not empty", hint="--force replaces its content once the new export is complete")
    return True


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; returns the ones created, deepest first."""
    missing = []
    path = directory
    while not path.exists():
        missing.append(path)
        path = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(directories: Sequence[Path]) -> None:
    for path in directories:  # deepest first; stops at the first one something else has written into
        try:
            path.rmdir()
        except OSError:
            break


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open_modes(root: Path) -> None:
    """The modes a plain ``mkdir``/``open`` gives (temporary files and mkdtemp are private; the export is not)."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _move_into_place(staging: Path, output: Path, replace: bool) -> None:
    """Rename the finished export to ``output``; the content it replaces is removed only after that rename."""
    _open_modes(staging)
    old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
    if replace:
        os.rename(output, old)
    try:
        os.rename(staging, output)  # also replaces an empty directory
    except OSError as exc:
        if replace:
            os.rename(old, output)
        raise ExportError(
            f"{output} changed while the export was being built ({exc.strerror}); nothing was written"
        ) from None
    fsync_dir(output.parent)
    if replace:
        shutil.rmtree(old, ignore_errors=True)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _write(
    info: VersionInfo,
    fmt: str,
    chosen: Sequence[Component],
    skipped: list[dict[str, str]],
    staging: Path,
    settings: Settings,
) -> list[dict[str, Any]]:
    """Each chosen component into ``staging``, then export.json; returns the components' records."""
    records = []
    for component in chosen:
        target = staging / component.name if PER_COMPONENT_DIRS[fmt] else staging
        before = _files(staging)
        try:
            facts = component.export(info, fmt, target, settings)
        except ExportUnavailable as exc:
            for rel in _files(staging) - before:
                (staging / rel).unlink()
            if target != staging:
                shutil.rmtree(target, ignore_errors=True)
            skipped.append({"component": component.name, "reason": str(exc)})
            continue
        files = sorted(_files(staging) - before)
        records.append(
            {
                "component": component.name,
                "path": target.relative_to(staging).as_posix() or ".",
                "files": files,
                "size_bytes": sum((staging / f).stat().st_size for f in files),
                **facts,
            }
        )
    if not records:
        reasons = "; ".join(s["reason"] for s in skipped) or "it holds no component"
        raise ExportError(f"version {info.name} has nothing to export as {fmt}: {reasons}")
    atomic_write_json(
        staging / EXPORT_RECORD,
        {
            "format": EXPORT_FORMAT,
            "export_format": fmt,
            "version": info.name,
            "version_created_at": info.manifest.created_at,
            "created_at": utc_now(),
            "hotelbot_version": __version__,
            "components": [{k: v for k, v in r.items() if k != "files"} for r in records],
            "skipped": skipped,
            "files": {
                rel: {"sha256": sha256_file(staging / rel), "size_bytes": (staging / rel).stat().st_size}
                for rel in sorted(_files(staging))
            },
        },
    )
    return records


def export_version(
    registry: ModelRegistry,
    settings: Settings,
    version: str,
    fmt: str,
    output: Path,
    *,
    force: bool = False,
    components: Sequence[str] | None = None,
) -> ExportResult:
    """Export ``version`` (a name, ``latest`` or ``current``) of ``registry`` as ``fmt`` into ``output``.

    Raises ExportError (bad target, nothing to export), IntegrityError (the version fails its checksums),
    VersionNotFoundError / RegistryError (no such version, invalid name), DataError (unknown component);
    whatever fails, ``output`` is as it was and nothing else is left on disk."""
    started = time.monotonic()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    output = Path(os.path.abspath(Path(output).expanduser()))
    replace = check_target(output, registry.root, force)
    info = registry.resolve(version, verify=True)  # every file against its recorded sha256: corrupt is refused
    chosen, skipped = plan(info, fmt, components)
    created = _make_parents(output.parent)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.export-"))
    try:
        records = _write(info, fmt, chosen, skipped, staging, settings)
        files = _files(staging)
        size = sum((staging / rel).stat().st_size for rel in files)
        _move_into_place(staging, output, replace)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    log.info("exported %s as %s to %s (%d files, %d bytes)", info.name, fmt, output, len(files), size)
    return ExportResult(info.name, fmt, output, replace, records, skipped, len(files), size, time.monotonic() - started)


__all__ = ["EXPORT_RECORD", "FORMATS", "ExportResult", "check_target", "export_version", "plan"]
