"""Registry components: which files and metadata keys make up each trained part of a version.

A registry version is a FULL SNAPSHOT of the bot: every component it holds (intent classifier, knowledge
base, entity extractor, sentiment classifier, ...) is in its directory, and ``metadata["components"]``
lists them. Training one component therefore builds a NEW version that carries over the other
components of a source version (the deployed one, else the newest) byte for byte, so deploy and
rollback always move all components together.

:func:`carry_over` is the one generic helper for that: it copies the other components' files into the
staged version after checking them against the source's recorded checksums, and returns the metadata
those components own (to merge into the new version's metadata).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ._atomic import atomic_write_json
from .errors import IntegrityError
from .registry.store import METADATA_FILE, sha256_file

if TYPE_CHECKING:
    from .config import Settings
    from .registry import ModelRegistry, VersionInfo
    from .training import MlflowTracker, SystemMonitor

# Paths (relative to the version directory) owned by each component. The FIRST path is required: a
# component listed in metadata["components"] whose first path is missing is an integrity error; the
# others are copied when present (the classifier's report/ is optional).
COMPONENT_PATHS: dict[str, tuple[str, ...]] = {
    "classifier": ("model", "intent_classifier.pt", "metrics.json", "training_history.json", "data", "report"),
    "knowledge": ("knowledge",),
    "entities": ("entities",),
    "sentiment": ("sentiment",),
    "generator": ("generator",),
}

COMPONENT_METRICS_FILE = "metrics.json"  # inside a component's directory (entities/, sentiment/, generator/)
COMPONENT_HISTORY_FILE = "training_history.json"

# Metadata keys owned by each component. The classifier predates components, so its summary lives in
# top-level keys; every later component keeps its summary under its own name.
COMPONENT_METADATA_KEYS: dict[str, tuple[str, ...]] = {
    "classifier": ("labels", "base_model", "out_of_scope_threshold", "dataset_fingerprint", "dataset", "config",
                   "metrics", "training", "mlflow_run_id", "mlflow_tracking_uri", "kind"),
    "knowledge": ("knowledge",),
    "entities": ("entities",),
    "sentiment": ("sentiment",),
    "generator": ("generator",),
}


def component_paths(component: str) -> tuple[str, ...]:
    """The paths a component owns (an unknown component owns the directory named after it)."""
    return COMPONENT_PATHS.get(component, (component,))


def component_metadata_keys(component: str) -> tuple[str, ...]:
    return COMPONENT_METADATA_KEYS.get(component, (component,))


def components_of(info: "VersionInfo") -> list[str]:
    """The components a version holds: ``metadata["components"]``, or for a version written before that
    key existed, the known components whose required path is present."""
    listed = info.metadata.get("components")
    if isinstance(listed, list):
        return [str(c) for c in listed]
    return [name for name, paths in COMPONENT_PATHS.items() if (info.path / paths[0]).exists()]


def has_component(info: "VersionInfo", component: str) -> bool:
    return component in components_of(info)


def source_version(registry: "ModelRegistry", name: str | None = None) -> "VersionInfo | None":
    """The version a new component build carries over from: ``name``, else the deployed version, else the
    newest; None for an empty registry. Its files are NOT checked here: :func:`carry_over` checks exactly
    the files it copies, so a corrupt copy of the component being replaced does not block a rebuild."""
    name = name or registry.current_name()
    if name is None:
        latest = registry.latest()
        name = latest.name if latest is not None else None
    return None if name is None else registry.get(name)


def _check_component_files(source: "VersionInfo", component: str) -> list[str]:
    """Relative paths of the component's files in ``source``, each checked against the recorded sha256.

    Raises IntegrityError for a changed, missing or unrecorded file, or a missing required path."""
    recorded: dict[str, str] = source.metadata.get("files") or {}
    paths = component_paths(component)
    present: set[str] = set()
    expected: set[str] = set()
    for rel in paths:
        target = source.path / rel
        if target.is_dir():
            present |= {p.relative_to(source.path).as_posix() for p in target.rglob("*") if p.is_file()}
        elif target.is_file():
            present.add(rel)
        expected |= {r for r in recorded if r == rel or r.startswith(rel + "/")}
    if not (source.path / paths[0]).exists():
        raise IntegrityError(f"cannot carry over the {component} of {source.name}: {paths[0]} is missing",
                             hint="deploy or roll back to an intact version first")
    for rel in sorted(expected | present):
        if rel not in expected:
            problem = "is not recorded in its metadata (added after publishing)"
        elif rel not in present:
            problem = "is missing"
        elif sha256_file(source.path / rel) != recorded[rel]:
            problem = "fails its checksum"
        else:
            continue
        raise IntegrityError(f"cannot carry over the {component} of {source.name}: {rel} {problem}",
                             hint="deploy or roll back to an intact version first")
    return sorted(present)


def carry_over(registry: "ModelRegistry", staged: Path, replacing: str, *, source: str | None = None) -> dict[str, Any]:
    """Copy every component of the source version except ``replacing`` into ``staged``.

    The source is ``source``, else the deployed version, else the newest (:func:`source_version`). Each
    copied file is first checked against the source's ``metadata["files"]``. Returns the metadata to merge
    into the new version's: ``components`` (the carried ones in the source's order, then ``replacing``),
    the carried components' own metadata keys (see :data:`COMPONENT_METADATA_KEYS`; a dict-valued
    component summary gains ``carried_from``), ``parent`` (the source's name, or None) and
    ``carried_over`` ({"from", "components"}). Nothing is copied from an empty registry.
    """
    staged = Path(staged)
    src = source_version(registry, source)
    if src is None:
        return {"components": [replacing], "parent": None, "carried_over": {"from": None, "components": []}}
    others = [c for c in components_of(src) if c != replacing]
    checked = {c: _check_component_files(src, c) for c in others}  # all checks before any copy
    for component in others:
        for rel in component_paths(component):
            origin = src.path / rel
            if rel == METADATA_FILE or not origin.exists():
                continue
            if origin.is_dir():
                shutil.copytree(origin, staged / rel, symlinks=False)
            else:
                (staged / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, staged / rel)
        copied = {p.relative_to(staged).as_posix() for rel in component_paths(component)
                  for p in ([staged / rel] if (staged / rel).is_file() else (staged / rel).rglob("*"))
                  if p.is_file()}
        if copied != set(checked[component]):  # the source changed between the check and the copy
            raise IntegrityError(f"the {component} of {src.name} changed while it was being carried over")
    merged: dict[str, Any] = {"components": others + [replacing], "parent": src.name,
                              "carried_over": {"from": src.name, "components": others}}
    for component in others:
        for key in component_metadata_keys(component):
            if key not in src.metadata:
                continue
            value = copy.deepcopy(src.metadata[key])
            if component != "classifier" and isinstance(value, dict):
                value["carried_from"] = src.name
            merged[key] = value
    return merged


def publish_component(registry: "ModelRegistry", component: str, kind: str, *, source: str | None,
                      write: Callable[[Path], None], metrics: dict[str, Any], history: dict[str, Any],
                      summary: dict[str, Any], monitor: Any, tracker: Any = None,
                      listener: Callable[[Any], None] | None = None) -> tuple["VersionInfo", dict[str, Any]]:
    """Publish a freshly trained ``component`` as a new version carrying over ``source``'s other components.

    The one publishing path of the entity, sentiment and generator trainings: in a staging directory,
    carry the others over (checksums checked), let ``write(target)`` save the model and its data into
    ``<component>/``, add ``metrics.json`` and ``training_history.json``, then publish with metadata
    ``{"kind", <carried-over metadata>, component: summary, library_versions, hardware}`` and tag the
    MLflow run with the version. Returns the version and the ``carried_over`` record {"from", "components"}."""
    from .training import TrainingEvent, hardware, library_versions

    emit = listener or (lambda event: None)
    emit(TrainingEvent("status", message="saving the version"))
    with registry.staging() as staged:
        merged = carry_over(registry, staged, component, source=source)
        carried = merged["carried_over"]
        if carried["from"]:
            emit(TrainingEvent("status", message=f"carrying over {', '.join(carried['components']) or 'nothing'} "
                                                 f"from {carried['from']}"))
        target = staged / component_paths(component)[0]
        write(target)
        atomic_write_json(target / COMPONENT_METRICS_FILE, metrics)
        atomic_write_json(target / COMPONENT_HISTORY_FILE, history)
        metadata = {"kind": kind, **merged, component: summary, "library_versions": library_versions(),
                    "hardware": hardware(monitor)}
        info = registry.publish(staged, metadata)
    if tracker is not None:
        tracker.set_tags({"hotelbot.version": info.name})
    return info, carried


@dataclass
class FitStats:
    """What every component's fit (classifier, entities, sentiment, generator) reports about its Trainer
    run; their result classes extend it, and :func:`training_summary` reads it."""

    history: list[dict[str, Any]]      # per-epoch validation metrics
    log_history: list[dict[str, Any]]  # the Trainer's log
    steps: int
    epochs_run: float
    best_epoch: float
    duration: float
    frozen: int                        # parameters
    trainable: int

    @staticmethod
    def of(trainer: Any, history: list[dict[str, Any]], best_epoch: float, duration: float, frozen: int,
           trainable: int) -> dict[str, Any]:
        """The FitStats fields of a finished ``trainer`` run, as keyword arguments for a result class."""
        return {"history": history, "log_history": trainer.state.log_history, "steps": trainer.state.global_step,
                "epochs_run": trainer.state.epoch or 0.0, "best_epoch": best_epoch, "duration": duration,
                "frozen": frozen, "trainable": trainable}


def training_summary(fit: FitStats, **extra: Any) -> dict[str, Any]:
    """The "training" block of a component's metadata, from a fit result."""
    return {"duration_seconds": round(fit.duration, 2), "epochs_run": fit.epochs_run, "steps": fit.steps,
            "frozen_parameters": fit.frozen, "trainable_parameters": fit.trainable, **extra}


def adopt_component(registry: "ModelRegistry", base: str, component: str, donor: str) -> "VersionInfo":
    """A version holding ``base``'s components with ``donor``'s copy of ``component``, without training.

    Used by `train --model-type all` when a component is unchanged since an older version that is not the
    chain's current one: its trained files are copied (checksums checked first) instead of training it again.
    Returns ``base`` itself when its copy of ``component`` already has the donor's exact files."""
    base_info, donor_info = registry.get(base), registry.get(donor)
    donor_files: dict[str, str] = donor_info.metadata.get("files") or {}
    wanted = {rel: donor_files[rel] for rel in _check_component_files(donor_info, component)}
    if has_component(base_info, component):
        recorded: dict[str, str] = base_info.metadata.get("files") or {}
        owned = component_paths(component)
        mine = {r: sha for r, sha in recorded.items() if any(r == p or r.startswith(p + "/") for p in owned)}
        if mine == wanted:
            return base_info
    with registry.staging() as staged:
        merged = carry_over(registry, staged, component, source=base)
        for rel in wanted:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(donor_info.path / rel, staged / rel)
        if {rel: sha256_file(staged / rel) for rel in wanted} != wanted:
            raise IntegrityError(f"the {component} of {donor} changed while it was being copied")
        metadata = {**merged, "adopted": {"component": component, "from": donor},
                    "library_versions": donor_info.metadata.get("library_versions"),
                    "hardware": donor_info.metadata.get("hardware")}
        for key in component_metadata_keys(component):
            if key in donor_info.metadata:
                value = copy.deepcopy(donor_info.metadata[key])
                if component != "classifier" and isinstance(value, dict):
                    value.setdefault("carried_from", donor)
                metadata[key] = value
        return registry.publish(staged, metadata)


@dataclass
class ComponentTrainResult:
    """What train_entities / train_sentiment return (the CLI renders it)."""

    component: str
    version: "VersionInfo"
    metrics: dict[str, Any]
    duration_seconds: float
    mlflow_run_id: str | None
    history: list[dict[str, Any]]
    carried_from: str | None
    carried_components: list[str]

    def to_dict(self) -> dict[str, Any]:
        scalar = {k: v for k, v in self.metrics.items() if isinstance(v, (int, float, str)) or v is None}
        return {"component": self.component, "version": self.version.name, "skipped": False,
                "duration_seconds": round(self.duration_seconds, 2), "mlflow_run_id": self.mlflow_run_id,
                "overall_score": self.metrics.get("overall_score"), "metric": self.metrics.get("metric"),
                "metrics": scalar, "per_type": self.metrics.get("per_type"),
                "per_label": self.metrics.get("per_intent"), "history": self.history,
                "components": self.version.metadata.get("components"), "carried_from": self.carried_from,
                "carried_components": self.carried_components}


def find_component_match(registry: "ModelRegistry", component: str, fingerprint: str,
                         config: dict[str, Any]) -> "VersionInfo | None":
    """The newest version whose ``component`` was trained on the same data fingerprint and config."""
    for info in reversed(registry.list_versions()):
        summary = info.metadata.get(component)
        if isinstance(summary, dict) and summary.get("dataset_fingerprint") == fingerprint \
                and summary.get("config") == config:
            return info
    return None


@contextlib.contextmanager
def component_run(settings: "Settings", registry: "ModelRegistry", component: str, experiment: str, prepared: Any,
                  config_record: dict[str, Any], params: dict[str, Any], *,
                  force: bool) -> Iterator[tuple["MlflowTracker", "SystemMonitor"]]:
    """The frame every component's ``train`` shares (entities, sentiment, generator).

    Refuses a repeat first (AlreadyTrainedError naming the version whose ``component`` was trained on
    ``prepared``'s fingerprint with ``config_record``) unless ``force``; then opens one MLflow run in
    ``experiment`` named ``{component}-{fingerprint[:8]}``, logs ``params`` with the split's sizes and
    fingerprint, and yields (tracker, system monitor). The monitor is closed however the block ends."""
    from .training import AlreadyTrainedError, MlflowTracker, SystemMonitor

    if not force:
        match = find_component_match(registry, component, prepared.fingerprint, config_record)
        if match is not None:
            raise AlreadyTrainedError(match.name)
    monitor = SystemMonitor()
    tracker = MlflowTracker(settings.paths.tracking_uri, experiment=experiment)
    try:
        with tracker.run(run_name=f"{component}-{prepared.fingerprint[:8]}", tags={"hotelbot.component": component}):
            tracker.log_params({**params, "component": component, "train_size": len(prepared.train),
                                "validation_size": len(prepared.validation),
                                "dataset_fingerprint": prepared.fingerprint})
            yield tracker, monitor
    finally:
        monitor.close()


__all__ = ["COMPONENT_PATHS", "COMPONENT_METADATA_KEYS", "ComponentTrainResult", "adopt_component", "carry_over",
           "component_metadata_keys", "component_paths", "component_run", "components_of", "find_component_match", "has_component",
           "source_version"]
