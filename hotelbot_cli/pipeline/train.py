"""Training, the one library entry point: `hotelbot train --model-type X` and `ModelTrainer().train_models(X)`
both call :func:`train`.

``X`` is a registered component's model type (one component, carrying the others over from the deployed
version, else the newest) or ``all``: every registered component in registration order, the required ones
always and the others where their prepared data exists, as one chain of versions under one MLflow parent
run. Every step builds a new version carrying over the previous step's version, so the LAST version of the
chain holds every component. A component whose data and config match an existing version's is not trained
again: when that version is not the chain's current one, its files are copied into the chain
(:func:`~hotelbot_cli.components.compose.adopt_component`).

MLflow for ``all``: one parent run (experiment ``hotelbot-all``, tag ``hotelbot.component=all``); every
component's own run, HPO trials included, is nested under it. The parent records each step's status,
version and score, and the final version.

The classifier's training report is written here (:class:`TrainingReporter`): the report reads every
component's section, so it sits above the components.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from ..components import Component, TrainRequest, by_model_type, registered
from ..components.compose import adopt_component, orphaned, refuse_orphans, source_version
from ..errors import AlreadyTrainedError
from ..registry.blobs import IngestStats, disk_usage
from ..reporting import build_report_from_dir, write_report_files, write_training_report
from ..training.distributed import SecondaryProcess, is_main_process, share_from_main
from ..training.loop import check_precision
from ..training.tracking import MlflowTracker

if TYPE_CHECKING:
    from ..config import Settings
    from ..registry import ModelRegistry
    from ..training.events import Listener

log = logging.getLogger("hotelbot.training")
EXPERIMENT = "hotelbot-all"
ALL = "all"
SECONDARY = "secondary"  # a step's status on a process other than the main one (training.distributed)

ProgressFactory = Callable[[str], ContextManager["Listener | None"]]


@dataclass
class StepOutcome:
    """One component's step: ``status`` is "trained", "unchanged" (data and config match ``reused_from``),
    "skipped" (no prepared data), "provided" (trained by another step: the joint NLU model's heads) or
    "secondary" (a process other than the main one under torchrun/accelerate);
    ``version`` is the chain's version after the step."""

    component: str
    status: str
    version: str | None
    message: str = ""
    reused_from: str | None = None
    result: Any = None  # the component's ComponentResult when trained

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "component": self.component,
            "status": self.status,
            "version": self.version,
            "message": self.message,
            "reused_from": self.reused_from,
        }
        if self.result is not None and hasattr(self.result, "to_dict"):
            doc["result"] = self.result.to_dict()
        return doc


@dataclass
class PipelineResult:
    """What :func:`train` returns: the steps it ran and the version at the end of the chain."""

    model_type: str = ALL
    steps: list[StepOutcome] = field(default_factory=list)
    final_version: str | None = None
    mlflow_run_id: str | None = None  # the parent run of `all`
    storage: dict[str, Any] | None = None  # what the versions published by this run stored (storage_summary)

    def step(self, component: str) -> StepOutcome | None:
        return next((s for s in self.steps if s.component == component), None)

    @property
    def trained(self) -> bool:
        return any(s.status == "trained" for s in self.steps)

    @property
    def secondary(self) -> bool:
        """This process took part in the fits of a torchrun/accelerate launch; the main one published."""
        return not is_main_process()

    def to_dict(self) -> dict[str, Any]:
        return {
            "final_version": self.final_version,
            "mlflow_run_id": self.mlflow_run_id,
            "steps": [s.to_dict() for s in self.steps],
            "storage": self.storage,
        }


def storage_summary(registry: ModelRegistry, published: list[str]) -> dict[str, Any]:
    """What the versions ``published`` (by this run) added to the registry: bytes and files stored anew,
    bytes and files shared with what it held already (each version's ``metadata["storage"]``, written by
    publish), and the registry's size on disk now."""
    total = IngestStats()
    for name in published:
        recorded = registry.get(name).metadata.get("storage")
        if isinstance(recorded, dict):
            total.add(IngestStats(**{k: int(recorded.get(k, 0)) for k in total.to_dict()}))
    return {"versions": published, **total.to_dict(), "registry_bytes": disk_usage(registry.root)}


class TrainingReporter:
    """Writes the classifier's training report into the staged version (report/, covered by its checksums)
    and, once published, under ``reports/training_reports/`` (and as MLflow artifacts). A failing report
    never loses a trained model: it is logged and the version is published without one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def staged(self, staged: Path, metadata: dict[str, Any], registry: ModelRegistry) -> Any:
        try:
            report = build_report_from_dir(
                staged, metadata, registry, min_score=self.settings.validation.min_validation_score
            )
            write_report_files(report, staged / "report")
        except Exception as exc:  # noqa: BLE001 - a report must never lose a trained model
            log.warning("training report failed: %s", exc)
            return None
        return report

    def published(self, registry: ModelRegistry, name: str, report: Any) -> None:
        write_training_report(registry, name, self.settings.paths.reports, report=report)


def available_data(settings: Settings, documents: Path | None = None) -> dict[str, Path | None]:
    """Per registered component that `all` trains (:meth:`Component.in_all`): its prepared data, or None."""
    return {c.name: c.prepared_data(settings, documents) for c in registered() if c.in_all(settings)}


def train(
    settings: Settings,
    registry: ModelRegistry,
    model_type: str = ALL,
    *,
    data: Path | None = None,
    documents: Path | None = None,
    source: str | None = None,
    force: bool = False,
    options: dict[str, Any] | None = None,
    progress: ProgressFactory | None = None,
    on_step: Callable[[StepOutcome], None] | None = None,
) -> PipelineResult:
    """Train ``model_type`` (a registered component's model type, or "all"): see the module docstring.

    ``data`` is the component's own data (one component only); ``documents`` the knowledge base's documents;
    ``source`` the version whose other components are carried over (one component only; default: deployed,
    else newest); ``options`` go to the component (the classifier's incremental_from, hpo_trials,
    use_best_config; the knowledge base's incremental). ``progress(component)`` is entered around each
    training step and yields its listener (the CLI's live progress); ``on_step`` is called after each step.

    A component trained before on the same data and config is "unchanged" (no error). Errors propagate;
    versions published before a failing step stay in the registry (each is a complete version) and the
    parent run is marked FAILED."""
    check_precision(settings.training)  # --fp16 without CUDA: refused before anything is trained or logged
    before = {v.name for v in registry.list_versions()}
    result = _train(settings, registry, model_type, data, documents, source, force, options, progress, on_step)
    if is_main_process():
        published = [s.version for s in result.steps if s.version and s.version not in before]
        result.storage = storage_summary(registry, list(dict.fromkeys(published)))
    return result


def _train(
    settings: Settings,
    registry: ModelRegistry,
    model_type: str,
    data: Path | None,
    documents: Path | None,
    source: str | None,
    force: bool,
    options: dict[str, Any] | None,
    progress: ProgressFactory | None,
    on_step: Callable[[StepOutcome], None] | None,
) -> PipelineResult:
    progress = progress or (lambda component: contextlib.nullcontext(None))
    notify = on_step or (lambda outcome: None)
    options = {"reporter": TrainingReporter(settings), **(options or {})}
    if model_type != ALL:
        component = by_model_type(model_type)
        refuse_orphans(registry, component.name, source)  # before the training, not after it
        if data is None:
            data = component.prepared_data(settings, documents)
        with progress(component.name) as listener:
            outcome = _run_step(
                component, TrainRequest(settings, registry, data, source, force, listener, options), adopt=False
            )
        notify(outcome)
        return PipelineResult(model_type, [outcome], outcome.version)
    return _train_all(settings, registry, documents, force, options, progress, notify)


def _train_all(
    settings: Settings,
    registry: ModelRegistry,
    documents: Path | None,
    force: bool,
    options: dict[str, Any],
    progress: ProgressFactory,
    notify: Callable[[StepOutcome], None],
) -> PipelineResult:
    data = available_data(settings, documents)
    result = PipelineResult(ALL)
    tracker = MlflowTracker(settings.paths.tracking_uri, experiment=EXPERIMENT)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    with tracker.run(run_name=f"all-{stamp}", tags={"hotelbot.component": ALL}):
        result.mlflow_run_id = tracker.run_id
        steps = [c for c in registered() if c.name in data]
        tracker.log_params(
            {
                "components": ",".join(c.name for c in steps if c.required or data.get(c.name)),
                "force": force,
                "base_model": settings.training.base_model,
            }
        )
        last: str | None = None
        # A component trained as part of another's training (the joint NLU model's heads) is not trained alone.
        provided_by = {
            name: c.name for c in steps if data.get(c.name) is not None for name in c.provides() if name != c.name
        }
        for component in steps:
            if component.name in provided_by:
                outcome = StepOutcome(
                    component.name, "provided", last, f"trained by the {provided_by[component.name]} step"
                )
            elif not component.required and data[component.name] is None:
                outcome = StepOutcome(
                    component.name, "skipped", last, f"no prepared {component.name} data ({component.prepare_hint})"
                )
            else:
                with progress(component.name) as listener:
                    # --incremental in `all` is the classifier's (its parent version), never the others'
                    own = options if component.primary else {**options, "incremental": False}
                    # the source's joint-model heads that training this one orphans: left out when this chain
                    # trains them next (their data is prepared), else the step refuses (compose.orphaned)
                    src = source_version(registry, last)
                    orphans = orphaned(src, component.name) if src is not None else []
                    own = {**own, "drop_joint_heads": bool(orphans) and all(data.get(o) is not None for o in orphans)}
                    outcome = _run_step(
                        component, TrainRequest(settings, registry, data[component.name], last, force, listener, own)
                    )
            # under torchrun/accelerate every process starts the next step from the main process's version
            outcome.version = share_from_main(outcome.version)
            last = outcome.version
            result.steps.append(outcome)
            tracker.set_tags(
                {
                    f"hotelbot.{component.name}.status": outcome.status,
                    f"hotelbot.{component.name}.version": outcome.version or "",
                }
            )
            score = headline_score(outcome)
            if score is not None:
                tracker.log_metrics({score[0]: score[1]}, step=len(result.steps))
            notify(outcome)
        result.final_version = last
        tracker.set_tags({"hotelbot.version": last or ""})
    return result


def headline_score(outcome: StepOutcome) -> tuple[str, float] | None:
    """(MLflow metric name, value) of a trained step's headline score: the component's own choice
    (``<component>_overall_score``, the generator's relevance); None when it has none or did not train."""
    return getattr(outcome.result, "score", None)


def _run_step(component: Component, request: TrainRequest, *, adopt: bool = True) -> StepOutcome:
    """Train one component. Already trained on the same data and config: "unchanged", and (``adopt``, in a
    chain) that version's files are copied into the chain's current version.

    Under torchrun/accelerate (:mod:`~hotelbot_cli.training.distributed`), a process other than the main one
    takes part in the fit of a component trained on the Trainer and skips the others; its step is
    "secondary" (no version: the main process publishes)."""
    if not is_main_process() and not component.distributed:
        return StepOutcome(component.name, SECONDARY, None, "trained by the main process alone")
    try:
        trained = component.train(request)
    except SecondaryProcess as exc:
        return StepOutcome(component.name, SECONDARY, None, str(exc))
    except AlreadyTrainedError as exc:
        last = request.source
        if not adopt or last is None or exc.version == last or not is_main_process():
            return StepOutcome(component.name, "unchanged", exc.version, exc.message, reused_from=exc.version)
        chained = adopt_component(request.registry, last, component.name, exc.version)
        note = f"unchanged since {exc.version}" + ("" if chained.name == last else f"; copied into {chained.name}")
        return StepOutcome(component.name, "unchanged", chained.name, note, reused_from=exc.version)
    return StepOutcome(component.name, "trained", trained.version.name, result=trained)


__all__ = [
    "ALL",
    "EXPERIMENT",
    "SECONDARY",
    "PipelineResult",
    "StepOutcome",
    "TrainingReporter",
    "available_data",
    "headline_score",
    "train",
]
