"""Registry components: which files and metadata keys make up each trained part of a version.

A registry version is a FULL SNAPSHOT of the bot: every component it holds (intent classifier, knowledge
base, entity extractor, sentiment classifier, ...) is in its directory, and ``metadata["components"]``
lists them. Training one component therefore builds a NEW version that carries over the other
components of a source version (the deployed one, else the newest) byte for byte, so deploy and
rollback always move all components together. Carrying over costs no space: the files are hard links to
the blobs the source already holds (:mod:`hotelbot_cli.registry.blobs`).

:func:`carry_over` is the one generic helper for that: it links the other components' files into the
staged version after checking them against the source's recorded checksums, and returns the metadata
those components own (to merge into the new version's metadata).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .._io import atomic_write_json
from ..errors import DataError, IntegrityError
from ..registry.blobs import link_or_copy, link_tree
from ..registry.checksums import component_problems, sha256_file
from ..registry.store import METADATA_FILE
from ..training.events import TrainingEvent, emitter
from ..training.monitor import hardware, library_versions
from .base import find as find_component, registered

if TYPE_CHECKING:
    from ..registry import ModelRegistry, VersionInfo
    from ..training.events import Listener

COMPONENT_METRICS_FILE = "metrics.json"  # inside a component's directory (entities/, sentiment/, generator/)
COMPONENT_HISTORY_FILE = "training_history.json"


def component_paths(component: str) -> tuple[str, ...]:
    """The paths (relative to the version directory) a component owns, from its registration. The FIRST is
    required: a component listed in metadata["components"] whose first path is missing is an integrity
    error; the others are copied when present. An unknown component owns the directory named after it."""
    found = find_component(component)
    return found.owned_paths() if found is not None else (component,)


def component_metadata_keys(component: str) -> tuple[str, ...]:
    """The metadata keys a component owns (an unknown component: the key named after it)."""
    found = find_component(component)
    return found.owned_metadata_keys() if found is not None else (component,)


def components_of(info: VersionInfo) -> list[str]:
    """The components a version holds: ``metadata["components"]``, or for a version written before that
    key existed, the known components whose required path is present."""
    listed = info.manifest.components
    if listed is not None:
        return listed
    # (a training-only component, the joint NLU model, is never held itself: it provides others)
    return [c.name for c in registered() if c.name in c.provides() and (info.path / c.owned_paths()[0]).exists()]


def recorded_files(info: VersionInfo, component: str) -> dict[str, str]:
    """{relative path: recorded sha256} of the files ``info``'s metadata lists under the component's paths
    (nothing is read: what the checksums say the component is)."""
    owned = component_paths(component)
    return {
        rel: sha
        for rel, sha in (info.manifest.files or {}).items()
        if any(rel == p or rel.startswith(p + "/") for p in owned)
    }


def has_component(info: VersionInfo, component: str) -> bool:
    return component in components_of(info)


def source_version(registry: ModelRegistry, name: str | None = None) -> VersionInfo | None:
    """The version a new component build carries over from: ``name``, else the deployed version, else the
    newest; None for an empty registry. Its files are NOT checked here: :func:`carry_over` checks exactly
    the files it copies, so a corrupt copy of the component being replaced does not block a rebuild."""
    name = name or registry.current_name()
    if name is None:
        latest = registry.latest()
        name = latest.name if latest is not None else None
    return None if name is None else registry.get(name)


def _check_component_files(source: VersionInfo, component: str) -> list[str]:
    """Relative paths of the component's files in ``source``, each checked against the recorded sha256.

    Raises IntegrityError for a changed, missing or unrecorded file, or a missing required path."""
    paths = component_paths(component)
    if not (source.path / paths[0]).exists():
        raise IntegrityError(
            f"cannot carry over the {component} of {source.name}: {paths[0]} is missing",
            hint="deploy or roll back to an intact version first",
        )
    present, problems = component_problems(source.path, source.manifest.files, paths)
    if problems:
        raise IntegrityError(
            f"cannot carry over the {component} of {source.name}: {problems[0]}",
            hint="deploy or roll back to an intact version first",
        )
    return present


def provided_by(component: str) -> list[str]:
    """The components a training of ``component`` gives a version (its own name; the joint NLU model: three)."""
    found = find_component(component)
    return list(found.provides()) if found is not None else [component]


def orphaned(src: VersionInfo, replacing: str) -> list[str]:
    """The components of ``src`` that run on a component that training ``replacing`` replaces (the joint NLU
    model's entity and sentiment heads when the classifier is trained alone): they cannot be carried over."""
    provided = provided_by(replacing)
    out = []
    for name in components_of(src):
        found = find_component(name)
        if name not in provided and found is not None and found.runs_on(src) in provided:
            out.append(name)
    return out


def _orphan_error(src: VersionInfo, replacing: str, orphans: list[str]) -> DataError:
    base = find_component(orphans[0]).runs_on(src)  # type: ignore[union-attr]
    return DataError(
        f"the {' and '.join(orphans)} of {src.name} are heads of its joint NLU model's {base}: training "
        f"the {replacing} alone would leave them without their encoder",
        hint="train --model-type nlu (all three again), or train "
        + " and ".join(f"--model-type {o}" for o in orphans)
        + " separately first",
    )


def refuse_orphans(registry: ModelRegistry, replacing: str, source: str | None = None) -> None:
    """Raise, before any training, the DataError :func:`carry_over` would raise after it (see :func:`orphaned`)."""
    src = source_version(registry, source)
    if src is not None:
        orphans = orphaned(src, replacing)
        if orphans:
            raise _orphan_error(src, replacing, orphans)


def carry_over(
    registry: ModelRegistry, staged: Path, replacing: str, *, source: str | None = None, drop_orphans: bool = False
) -> dict[str, Any]:
    """Copy every component of the source version except ``replacing`` into ``staged``.

    The source is ``source``, else the deployed version, else the newest (:func:`source_version`). Each
    copied file is first checked against the source's ``metadata["files"]``. Returns the metadata to merge
    into the new version's: ``components`` (the carried ones in the source's order, then ``replacing``),
    the carried components' own metadata keys (:func:`component_metadata_keys`; a summary under the
    component's own name gains ``carried_from``), ``parent`` (the source's name, or None) and
    ``carried_over`` ({"from", "components"}, and "dropped": components left out because they ran on the
    component being replaced, which ``drop_orphans`` allows; else that is a DataError, see :func:`orphaned`).
    Nothing is copied from an empty registry.
    """
    staged = Path(staged)
    src = source_version(registry, source)
    provided = provided_by(replacing)
    if src is None:
        return {"components": provided, "parent": None, "carried_over": {"from": None, "components": []}}
    orphans = orphaned(src, replacing)
    if orphans and not drop_orphans:
        raise _orphan_error(src, replacing, orphans)
    others = [c for c in components_of(src) if c != replacing and c not in provided and c not in orphans]
    checked = {c: _check_component_files(src, c) for c in others}  # all checks before any copy
    for component in others:
        for rel in component_paths(component):
            origin = src.path / rel
            if rel == METADATA_FILE or not origin.exists():
                continue
            link_tree(origin, staged / rel)  # hard links: the same blobs, no byte copied
        copied = {
            p.relative_to(staged).as_posix()
            for rel in component_paths(component)
            for p in ([staged / rel] if (staged / rel).is_file() else (staged / rel).rglob("*"))
            if p.is_file()
        }
        if copied != set(checked[component]):  # the source changed between the check and the copy
            raise IntegrityError(f"the {component} of {src.name} changed while it was being carried over")
    merged: dict[str, Any] = {
        "components": others + provided,
        "parent": src.name,
        "carried_over": {"from": src.name, "components": others, **({"dropped": orphans} if orphans else {})},
    }
    for component in others:
        for key in component_metadata_keys(component):
            if key not in src.metadata:
                continue
            value = copy.deepcopy(src.metadata[key])
            if key == component and isinstance(value, dict):  # a summary under the component's own name
                value["carried_from"] = src.name
            merged[key] = value
    return merged


def publish_version(
    registry: ModelRegistry,
    component: str,
    *,
    source: str | None,
    build: Callable[[Path, dict[str, Any]], dict[str, Any]],
    tracker: Any = None,
    listener: Listener | None = None,
    status: str | None = "saving the version",
    drop_orphans: bool = False,
) -> tuple[VersionInfo, dict[str, Any]]:
    """THE publishing path of every component: a new version holding the freshly trained ``component`` and
    every other component of ``source`` (default: deployed, else newest).

    In a staging directory: carry the others over (checksums checked first, :func:`carry_over`), call
    ``build(staged, carried_metadata)``, which writes the component's files and returns the version's
    metadata (it merges ``carried_metadata`` in), publish atomically, tag the MLflow run with the version.
    Returns the version and the ``carried_over`` record {"from", "components"}. A failure anywhere leaves
    the registry as it was (the staging directory is removed)."""
    emit = emitter(listener)
    if status:
        emit(TrainingEvent("status", message=status))
    with registry.staging() as staged:
        merged = carry_over(registry, staged, component, source=source, drop_orphans=drop_orphans)
        carried = merged["carried_over"]
        if carried["from"]:
            emit(
                TrainingEvent(
                    "status",
                    message=f"carrying over {', '.join(carried['components']) or 'nothing'} from {carried['from']}",
                )
            )
        info = registry.publish(staged, build(staged, merged))
    if tracker is not None:
        tracker.set_tags({"hotelbot.version": info.name})
    return info, carried


def publish_component(
    registry: ModelRegistry,
    component: str,
    kind: str,
    *,
    source: str | None,
    write: Callable[[Path], None],
    metrics: dict[str, Any],
    history: dict[str, Any],
    summary: dict[str, Any],
    monitor: Any,
    tracker: Any = None,
    listener: Listener | None = None,
) -> tuple[VersionInfo, dict[str, Any]]:
    """:func:`publish_version` for a component that lives in its own directory (entities, sentiment, generator,
    a plugin): ``write(target)`` saves the model and its data into ``<component>/``, then ``metrics.json`` and
    ``training_history.json`` are added there, and the metadata is ``{"kind", <carried-over metadata>,
    component: summary, library_versions, hardware}``."""

    def build(staged: Path, merged: dict[str, Any]) -> dict[str, Any]:
        target = staged / component_paths(component)[0]
        write(target)
        atomic_write_json(target / COMPONENT_METRICS_FILE, metrics)
        atomic_write_json(target / COMPONENT_HISTORY_FILE, history)
        return {
            "kind": kind,
            **merged,
            component: summary,
            "library_versions": library_versions(),
            "hardware": hardware(monitor),
        }

    return publish_version(registry, component, source=source, build=build, tracker=tracker, listener=listener)


def adopt_component(registry: ModelRegistry, base: str, component: str, donor: str) -> VersionInfo:
    """A version holding ``base``'s components with ``donor``'s copy of ``component``, without training.

    Used by `train --model-type all` when a component is unchanged since an older version that is not the
    chain's current one: its trained files are copied (checksums checked first) instead of training it again.
    Returns ``base`` itself when its copy of ``component`` already has the donor's exact files."""
    base_info, donor_info = registry.get(base), registry.get(donor)
    donor_files: dict[str, str] = donor_info.manifest.files
    wanted = {rel: donor_files[rel] for rel in _check_component_files(donor_info, component)}
    if has_component(base_info, component) and recorded_files(base_info, component) == wanted:
        return base_info
    with registry.staging() as staged:
        merged = carry_over(registry, staged, component, source=base)
        for rel in wanted:
            link_or_copy(donor_info.path / rel, staged / rel)
        if {rel: sha256_file(staged / rel) for rel in wanted} != wanted:
            raise IntegrityError(f"the {component} of {donor} changed while it was being copied")
        metadata = {
            **merged,
            "adopted": {"component": component, "from": donor},
            "library_versions": donor_info.metadata.get("library_versions"),
            "hardware": donor_info.metadata.get("hardware"),
        }
        for key in component_metadata_keys(component):
            if key in donor_info.metadata:
                value = copy.deepcopy(donor_info.metadata[key])
                if key == component and isinstance(value, dict):
                    value.setdefault("carried_from", donor)
                metadata[key] = value
        return registry.publish(staged, metadata)
