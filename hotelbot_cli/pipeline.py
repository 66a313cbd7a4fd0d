"""`hotelbot train --model-type all`: every component whose data is prepared, as one chain of versions
under one MLflow parent run.

Order: the intent classifier (required), then the knowledge base, the entity extractor, the sentiment
classifier and the response generator, each where its prepared data exists. Every step builds a new
version carrying over the previous step's version, so the LAST version of the chain holds every
component. A component whose data and config match an existing version's is not trained again: when that
version is not the chain's current one, its files are copied into the chain (:func:`adopt_component`).

MLflow: one parent run (experiment ``hotelbot-all``, tag ``hotelbot.component=all``); every component's own
run, HPO trials included, is nested under it (:class:`~hotelbot_cli.training.MlflowTracker` nests a run
whenever another is active). The parent records each step's status, version and score, and the final
version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager

if TYPE_CHECKING:
    from .config import Settings
    from .registry import ModelRegistry
    from .training import Listener

EXPERIMENT = "hotelbot-all"
STEPS = ("classifier", "knowledge", "entities", "sentiment", "generator")
PREPARE_HINTS = {"knowledge": "hotelbot prepare --documents DIR", "entities": "hotelbot prepare --entities FILE",
                 "sentiment": "hotelbot prepare --sentiment FILE", "generator": "hotelbot prepare --replies FILE"}

ProgressFactory = Callable[[str], ContextManager["Listener | None"]]


@dataclass
class StepOutcome:
    """One component's step: ``status`` is "trained", "unchanged" (data and config match ``reused_from``)
    or "skipped" (no prepared data); ``version`` is the chain's version after the step."""

    component: str
    status: str
    version: str | None
    message: str = ""
    reused_from: str | None = None
    result: Any = None  # the component's own result object when trained

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"component": self.component, "status": self.status, "version": self.version,
                               "message": self.message, "reused_from": self.reused_from}
        if self.result is not None and hasattr(self.result, "to_dict"):
            doc["result"] = self.result.to_dict()
        return doc


@dataclass
class PipelineResult:
    steps: list[StepOutcome] = field(default_factory=list)
    final_version: str | None = None
    mlflow_run_id: str | None = None

    def step(self, component: str) -> StepOutcome | None:
        return next((s for s in self.steps if s.component == component), None)

    def to_dict(self) -> dict[str, Any]:
        return {"final_version": self.final_version, "mlflow_run_id": self.mlflow_run_id,
                "steps": [s.to_dict() for s in self.steps]}


def available_data(settings: "Settings", documents: Path | None = None) -> dict[str, Path | None]:
    """Per component after the classifier: the prepared data `all` would train it on, or None."""
    from .entities import default_data_dir
    from .generation import default_data_path
    from .knowledge import DEFAULT_DOCUMENTS_OUTPUT

    docs = documents if documents is not None else DEFAULT_DOCUMENTS_OUTPUT
    found: dict[str, Path | None] = {
        "knowledge": docs if documents is not None or (docs / "documents.json").exists() else None}
    for component in ("entities", "sentiment"):
        path = default_data_dir(settings, component)
        found[component] = path if (path / "dataset.json").exists() else None
    generator = default_data_path(settings)
    found["generator"] = generator if generator.is_dir() else None  # the shipped file is not "prepared"
    return found


def train_all(settings: "Settings", registry: "ModelRegistry", *, documents: Path | None = None,
              force: bool = False, classifier_options: dict[str, Any] | None = None,
              progress: ProgressFactory | None = None,
              on_step: Callable[[StepOutcome], None] | None = None) -> PipelineResult:
    """Train the classifier, then every component whose data is prepared (see the module docstring).

    ``classifier_options`` go to :func:`~hotelbot_cli.training.train_classifier` (incremental_from,
    hpo_trials, use_best_config). ``progress(component)`` is entered around each training step and yields its listener (the CLI's live
    progress); ``on_step`` is called after each step. Errors propagate; versions published before the
    failing step stay in the registry (each is a complete version) and the parent run is marked FAILED."""
    from .training import MlflowTracker

    progress = progress or (lambda component: contextlib.nullcontext(None))
    notify = on_step or (lambda outcome: None)
    data = available_data(settings, documents)
    result = PipelineResult()
    tracker = MlflowTracker(settings.paths.tracking_uri, experiment=EXPERIMENT)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    with tracker.run(run_name=f"all-{stamp}", tags={"hotelbot.component": "all"}):
        result.mlflow_run_id = tracker.run_id
        tracker.log_params({"components": ",".join(c for c in STEPS if c == "classifier" or data.get(c)),
                            "force": force, "base_model": settings.training.base_model})
        last: str | None = None
        for component in STEPS:
            if component != "classifier" and data[component] is None:
                outcome = StepOutcome(component, "skipped", last,
                                      f"no prepared {component} data ({PREPARE_HINTS[component]})")
            else:
                with progress(component) as listener:
                    outcome = _run_step(component, settings, registry, data.get(component), last, force, listener,
                                        classifier_options or {})
            last = outcome.version
            result.steps.append(outcome)
            tracker.set_tags({f"hotelbot.{component}.status": outcome.status,
                              f"hotelbot.{component}.version": outcome.version or ""})
            score = _score(outcome)
            if score is not None:
                tracker.log_metrics({score[0]: score[1]}, step=len(result.steps))
            notify(outcome)
        result.final_version = last
        tracker.set_tags({"hotelbot.version": last or ""})
    return result


def train_one(settings: "Settings", registry: "ModelRegistry", component: str, *, force: bool = False,
              source: str | None = None, listener: "Listener | None" = None) -> StepOutcome:
    """Train one component on its prepared data (see :func:`available_data`), carrying over ``source``
    (default: deployed, else newest). Raises DataError when that component's data is not prepared."""
    from .errors import DataError

    if component not in STEPS:
        raise DataError(f"unknown component {component!r}; use one of {', '.join(STEPS)}")
    data = None if component == "classifier" else available_data(settings)[component]
    if component != "classifier" and data is None:
        raise DataError(f"no prepared {component} data", hint=f"run `{PREPARE_HINTS[component]}` first")
    return _run_step(component, settings, registry, data, source, force, listener, {})


def _score(outcome: StepOutcome) -> tuple[str, float] | None:
    """(MLflow metric name, value) of a trained step's headline score: ``<component>_overall_score``, or
    ``generator_relevance`` for the generator (which has no overall score)."""
    metrics = getattr(outcome.result, "metrics", None)
    if not isinstance(metrics, dict):
        return None
    name, value = f"{outcome.component}_overall_score", metrics.get("overall_score")
    if value is None and isinstance(metrics.get("generator"), dict):
        name, value = "generator_relevance", metrics["generator"].get("relevance")
    return (name, float(value)) if isinstance(value, (int, float)) else None


def _run_step(component: str, settings: "Settings", registry: "ModelRegistry", data: Path | None,
              last: str | None, force: bool, listener: "Listener | None", options: dict[str, Any]) -> StepOutcome:
    from .components import adopt_component
    from .training import AlreadyTrainedError

    try:
        trained = _train(component, settings, registry, data, last, force, listener, options)
    except AlreadyTrainedError as exc:
        if last is None or exc.version == last:
            return StepOutcome(component, "unchanged", exc.version, exc.message, reused_from=exc.version)
        chained = adopt_component(registry, last, component, exc.version)
        note = f"unchanged since {exc.version}" + ("" if chained.name == last else f"; copied into {chained.name}")
        return StepOutcome(component, "unchanged", chained.name, note, reused_from=exc.version)
    return StepOutcome(component, "trained", trained.version.name, result=trained)


def _train(component: str, settings: "Settings", registry: "ModelRegistry", data: Path | None, last: str | None,
           force: bool, listener: "Listener | None", options: dict[str, Any]) -> Any:
    if component == "classifier":
        from .training import train_classifier

        return train_classifier(settings, settings.paths.data, registry, listener=listener, force=force, **options)
    if component == "knowledge":
        from .knowledge import train_knowledge_base

        return train_knowledge_base(settings, data, registry, listener=listener, incremental=False, source=last)
    if component == "generator":
        from .generation import train_generator

        return train_generator(settings, data, registry, listener=listener, force=force, source=last)
    if component == "entities":
        from .entities import train_entities as train_fn
    else:
        from .sentiment import train_sentiment as train_fn
    return train_fn(settings, data, registry, listener=listener, force=force, source=last)


__all__ = ["EXPERIMENT", "STEPS", "PipelineResult", "StepOutcome", "available_data", "train_all", "train_one"]
