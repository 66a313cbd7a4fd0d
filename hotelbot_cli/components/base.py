"""The component interface, the registration table's mechanics, and the one frame and result every
component's training shares.

A component is one trained part of the chatbot (the intent classifier, the knowledge base, the entity
extractor, the sentiment classifier, the response generator, or a new one). Each is a subclass of
:class:`Component` that declares, in one place:

- who it is: ``name`` (its key in version metadata and its directory), ``model_type`` (the value of
  ``train --model-type``), ``kind`` (the metadata "kind" of a version it publishes), ``experiment`` (MLflow);
- what it owns inside a version: ``paths`` (the first is required) and ``metadata_keys``;
- its config: ``config_section`` (the Settings section it reads) and :meth:`default_config`;
- how it prepares its data and where ``train --model-type all`` finds it: ``prepare_hint``,
  :meth:`prepared_data`;
- how it fits and publishes: :meth:`train` (one frame: :func:`training_run`; one publish path:
  :func:`~hotelbot_cli.components.compose.publish_component`; one "already trained" check:
  :func:`find_trained`);
- how it is judged: ``metric`` + ``greater_is_better`` (its primary metric), ``gated`` (whether
  validate/deploy require ``overall_score >= MIN_VALIDATION_SCORE``), :meth:`score`;
- how it is used: :meth:`smoke` (deploy's check that it loads and answers), :meth:`load` and
  :meth:`analyze` (what it adds to predict/analyze and the server), :meth:`report_section` (the report);
- how it leaves the registry: ``export_formats`` and :meth:`export` (`hotelbot export`).

The list of components is :data:`hotelbot_cli.components.BUILTIN` (registration order = training order);
:func:`register` adds one (a plugin, a test's toy component). Everything else iterates over
:func:`registered`. Compare Rasa's GraphComponent (create/load, get_default_config), spaCy's pipeline
components (one ``score`` contract) and sentence-transformers' Module (config keys + save/load).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

from .. import config as config_module
from ..errors import AlreadyTrainedError, DataError
from ..registry.manifest import Manifest
from ..training.monitor import SystemMonitor
from ..training.tracking import MlflowTracker

if TYPE_CHECKING:
    from ..config import Settings
    from ..registry import ModelRegistry, VersionInfo
    from ..training.events import Listener


@dataclass
class TrainRequest:
    """Everything a component's :meth:`Component.train` gets: what to train on and how."""

    settings: Settings
    registry: ModelRegistry
    data: Path | None = None  # the component's prepared data (None: its default)
    source: str | None = None  # the version whose other components are carried over
    force: bool = False  # train even when the same data and config were trained before
    listener: Listener | None = None
    options: dict[str, Any] = field(default_factory=dict)  # component-specific (incremental, hpo_trials, ...)


@dataclass
class ComponentResult:
    """What every component's training returns. ``document`` is the JSON the CLI prints for it (its shape is
    the component's, unchanged across releases); ``lines`` go to stdout and ``notes`` to stderr."""

    component: str
    version: VersionInfo
    metrics: dict[str, Any]
    duration_seconds: float
    mlflow_run_id: str | None
    history: list[dict[str, Any]]
    document: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    score: tuple[str, float] | None = None  # (MLflow metric name, value) of the headline score
    carried_from: str | None = None
    carried_components: list[str] = field(default_factory=list)
    detail: Any = None  # the component's own richer result, for Python callers

    def to_dict(self) -> dict[str, Any]:
        return self.document


class Component:
    """One trained part of the bot; see the module docstring. Subclasses set the class attributes and
    override the methods their component supports."""

    name: ClassVar[str]
    model_type: ClassVar[str]
    kind: ClassVar[str]
    experiment: ClassVar[str]
    description: ClassVar[str] = ""
    paths: ClassVar[tuple[str, ...]] = ()
    metadata_keys: ClassVar[tuple[str, ...]] = ()
    config_section: ClassVar[str] = "training"
    prepare_hint: ClassVar[str | None] = None  # how to prepare its data (None: it needs none prepared)
    required: ClassVar[bool] = False  # `train --model-type all` always trains it
    metric: ClassVar[str | None] = None  # primary metric
    greater_is_better: ClassVar[bool] = True
    gated: ClassVar[bool] = False  # validate/deploy require its score >= MIN_VALIDATION_SCORE
    analyzes: ClassVar[bool] = False  # contributes to predict/analyze
    train_options: ClassVar[tuple[str, ...]] = ()  # `train` flags it takes besides the common ones
    evaluation_key: ClassVar[str | None] = None  # the key of evaluate()'s document in `validate --json`
    primary: ClassVar[bool] = False  # validate's headline metrics (the intent classifier)
    export_formats: ClassVar[tuple[str, ...]] = ()  # what `hotelbot export --format` writes of it: pt, hf, onnx
    # Its fit runs on the Hugging Face Trainer, so every process of a torchrun/accelerate launch takes part
    # (training.distributed); otherwise the main process alone trains it.
    distributed: ClassVar[bool] = False

    # ---------------------------------------------------------------- layout in a version
    def owned_paths(self) -> tuple[str, ...]:
        return self.paths or (self.name,)

    def owned_metadata_keys(self) -> tuple[str, ...]:
        return self.metadata_keys or (self.name,)

    def summary(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """The component's own summary in a version's metadata (``metadata[name]``)."""
        return Manifest(metadata).summary(self.name)

    def provides(self) -> tuple[str, ...]:
        """The components a version gets from this one's training (its own name; the joint NLU model: the
        classifier, entities and sentiment). Carry-over replaces all of them."""
        return (self.name,)

    def in_all(self, settings: Settings) -> bool:
        """Whether `train --model-type all` has a step for it (the joint NLU model: only when
        ``training_config.joint_nlu`` chooses it over the three separate models)."""
        return True

    def runs_on(self, info: VersionInfo) -> str | None:
        """The component whose model this one's answers come from in ``info`` (a head of the joint NLU model:
        "classifier"), None when it has its own. It cannot be carried over into a version that replaces that one."""
        return None

    # ---------------------------------------------------------------- config and data
    def default_config(self) -> dict[str, Any]:
        """The defaults of its config section."""
        section = {
            "training": config_module.TrainingConfig,
            "data": config_module.DataConfig,
            "validation": config_module.ValidationConfig,
        }.get(self.config_section)
        return section().to_dict() if section is not None else {}

    def prepared_data(self, settings: Settings, documents: Path | None = None) -> Path | None:
        """Where ``train --model-type all`` finds this component's prepared data; None when there is none."""
        return None

    # ---------------------------------------------------------------- training
    def train(self, request: TrainRequest) -> ComponentResult:
        raise NotImplementedError(f"{self.name} cannot be trained")

    # ---------------------------------------------------------------- judging and using
    def score(self, info: VersionInfo, settings: Settings) -> dict[str, Any] | None:
        """Metrics on the component's own validation split, with "metric" and "overall_score"; None when
        it has nothing to score."""
        return None

    def recorded_score(self, info: VersionInfo) -> dict[str, Any] | None:
        """The score its training measured on the same validation split with the same (checksummed) files, as
        :meth:`score` returns it; None when none was recorded. The deploy gate reads it instead of loading the
        model a second time (the smoke test after the switch loads and runs it)."""
        return None

    def evaluate(
        self, info: VersionInfo, settings: Settings, options: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """What `hotelbot validate` measures and reports without gating on it (retrieval quality, generation
        metrics): (its document under :attr:`evaluation_key` in `validate --json`, or None; warnings)."""
        return None, []

    def evaluation_lines(self, document: dict[str, Any]) -> dict[str, list[str]]:
        """How `hotelbot validate` shows :meth:`evaluate`'s document, in plain text: {"stdout": [...] (results,
        not with --json), "stderr": [...] (messages), "warnings": [...]}."""
        return {"stdout": [], "stderr": [], "warnings": []}

    def gate_failures(self, metrics: dict[str, Any], validation: config_module.ValidationConfig) -> list[str]:
        """Why :meth:`score`'s ``metrics`` fail the deploy gate (empty: they pass): by default overall_score
        below ``validation.min_validation_score``. A component with other limits adds its own."""
        score, limit = float(metrics["overall_score"]), validation.min_validation_score
        return (
            [f"{self.name} {metrics['metric']} {score:.4f} < MIN_VALIDATION_SCORE {limit:.4f}"] if score < limit else []
        )

    def gate_label(self, validation: config_module.ValidationConfig) -> str:
        """How `hotelbot validate` names this component's gate ("gate 0.80")."""
        return f"gate {validation.min_validation_score:.2f}"

    def score_view(self, metrics: dict[str, Any], gate: str) -> dict[str, Any]:
        """How `hotelbot validate` shows :meth:`score`'s metrics: {"line": one line (``gate`` is the gate's
        "gate 0.80: PASS" text), "table": None or {"title", "columns", "rows"} of plain strings}."""
        source = f" ({metrics['data_source']})" if metrics.get("data_source") else ""
        return {
            "line": f"{self.name}{source}: overall_score ({metrics['metric']}) {metrics['overall_score']:.4f}  {gate}",
            "table": None,
        }

    def smoke(self, info: VersionInfo, settings: Settings, texts_count: int) -> dict[str, Any]:
        """Load the component as predict/serve do and run it on a few texts; raise when it cannot load
        or answers something unusable. Returns what deploy records."""
        return {}

    def load(self, info: VersionInfo, settings: Settings | None = None, loaded: dict[str, Any] | None = None) -> Any:
        """The component loaded for inference (predict/analyze/serve). ``loaded``: the version's components
        loaded before this one (registration order), to share (the generator shares the knowledge base)."""
        raise NotImplementedError(f"{self.name} has no runtime")

    def served(self, info: VersionInfo) -> bool:
        """Whether `serve` loads it for ``info`` (the generator: not when the version's reply model answers
        /reply without it)."""
        return True

    def warm_up(self, loaded: Any, version: str, text: str) -> None:
        """Answer one text with the loaded component before the server swaps to its version (this also
        loads what loads lazily); raise ModelError when the answer is unusable."""

    def analyze(
        self, loaded: Any, texts: Sequence[str], rows: list[dict[str, Any]], *, top_k: int, batch_size: int
    ) -> None:
        """Add this component's answer for each text to ``rows`` (one dict per text)."""

    def empty_analysis(self) -> dict[str, Any]:
        """The keys :meth:`analyze` fills, with their value when the component is absent."""
        return {}

    def person_spans(self, loaded: Any, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Per text, the (start, end) spans of person names this component finds (what `serve --capture`
        masks besides its patterns); none by default."""
        return [[] for _ in texts]

    def analysis_text(self, row: dict[str, Any]) -> str:
        """How `hotelbot predict` shows this component's answer in ``row``: tab-prefixed fields ("" for none)."""
        return ""

    def export(self, info: VersionInfo, fmt: str, target: Path, settings: Settings) -> dict[str, Any]:
        """`hotelbot export --format FMT` (one of :attr:`export_formats`): write this component of the (verified)
        version ``info`` into the new directory ``target`` (hf, onnx: ``DIR/<name>/``; pt: ``DIR`` itself), loaded
        with the component's own loaders, so the export does not depend on how a version lays out its files.
        Returns facts for the export's record: at least ``loads_with`` (how an outside program loads it)."""
        raise NotImplementedError(f"{self.name} has no {fmt} export")

    def report_section(self, path: Path, metadata: dict[str, Any]) -> dict[str, Any] | None:
        """This component's entry in the report's "Other components" section (None: nothing to show), from
        the version files in ``path`` (published or staged) and ``metadata``. The primary component has
        the report's main sections instead."""
        return None


def recorded_metrics(
    info: VersionInfo, component: str, numbers: Sequence[str] = ("overall_score",)
) -> dict[str, Any] | None:
    """``<component>/metrics.json`` of ``info`` as its training wrote it, when it names its "metric" and holds
    a number under each of ``numbers``; else None (not recorded, unreadable, or of another shape)."""
    try:
        metrics = json.loads((info.path / component / "metrics.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(metrics, dict)
        or not isinstance(metrics.get("metric"), str)
        or not all(isinstance(metrics.get(k), (int, float)) for k in numbers)
    ):
        return None
    return metrics


def report_common(summary: dict[str, Any]) -> dict[str, Any]:
    """The facts every component's report section shows: data, base model, training, carried over, MLflow."""
    base_model = summary.get("base_model")
    return {
        "dataset": summary.get("dataset") or {},
        "base_model": base_model.get("spec") if isinstance(base_model, dict) else base_model,
        "training": summary.get("training") or {},
        "carried_from": summary.get("carried_from"),
        "mlflow_run_id": summary.get("mlflow_run_id"),
    }


def labels_report_section(path: Path, summary: Any, name: str, per_key: str) -> dict[str, Any] | None:
    """A report section of kind "labels" (a component scored per label: entities, sentiment) from
    ``<name>/metrics.json``."""
    import json

    metrics_path = Path(path) / name / "metrics.json"
    if not isinstance(summary, dict) or not metrics_path.is_file():
        return None
    metrics = json.loads(metrics_path.read_text("utf-8"))
    headline = {
        k: metrics.get(k)
        for k in (
            "overall_score",
            "metric",
            "micro_precision",
            "micro_recall",
            "micro_f1",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "accuracy",
            "weighted_f1",
        )
        if metrics.get(k) is not None
    }
    return {
        "kind": "labels",
        "headline": headline,
        "rows": [
            {"label": label, **{k: s.get(k) for k in ("precision", "recall", "f1", "support")}}
            for label, s in (metrics.get(per_key) or {}).items()
        ],
        **report_common(summary),
    }


def usable_confidence(value: Any) -> bool:
    """A confidence a caller can use: a number in [0, 1]."""
    import math

    return 0.0 <= float(value) <= 1.0 and not math.isnan(float(value))


def default_data_dir(settings: Settings, component: str) -> Path:
    """Where ``prepare --<component>`` writes by default: beside the intent split (data/processed ->
    data/entities, data/sentiment, ...)."""
    return Path(settings.paths.data).parent / component


class SplitComponent(Component):
    """A component trained on its own prepared split (``hotelbot prepare --<name> FILE`` writes it to
    data/<name>/) or on a .jsonl file given with ``--data``: entities, sentiment. Subclasses set ``sample``
    (the shipped example file's stem) and implement :meth:`fit_and_publish`."""

    sample: ClassVar[str] = ""

    def prepared_data(self, settings: Settings, documents: Path | None = None) -> Path | None:
        path = default_data_dir(settings, self.name)
        return path if (path / "dataset.json").exists() else None

    def train(self, request: TrainRequest) -> ComponentResult:
        path = Path(request.data) if request.data is not None else default_data_dir(request.settings, self.name)
        if not path.exists():
            raise DataError(
                f"no {self.name} data in {path}",
                hint=f"run `hotelbot prepare --{self.name} datasets/{self.sample}.jsonl` or pass --data",
            )
        return self.fit_and_publish(request, path)

    def fit_and_publish(self, request: TrainRequest, data: Path) -> ComponentResult:
        raise NotImplementedError

    def recorded_score(self, info: VersionInfo) -> dict[str, Any] | None:
        """``<name>/metrics.json``: what training measured on the version's own stored validation split."""
        return recorded_metrics(info, self.name)

    def prepare_split(self, path: Path, validation_split: float, seed: int) -> Any:
        """`hotelbot prepare --<name> FILE`: validate and split the file (a prepared split with
        ``to_summary()``, ``warnings`` and ``fingerprint``)."""
        raise NotImplementedError

    def write_split(self, prepared: Any, target: Path) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- the registration table's mechanics

_REGISTERED: dict[str, Component] = {}


def register(component: Component) -> Component:
    """Add a component (after the ones registered before it). Its name and model type must be new."""
    if component.name in _REGISTERED:
        raise ValueError(f"a component named {component.name!r} is already registered")
    if any(c.model_type == component.model_type for c in _REGISTERED.values()):
        raise ValueError(f"a component with model type {component.model_type!r} is already registered")
    _REGISTERED[component.name] = component
    return component


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


@contextlib.contextmanager
def registered_temporarily(component: Component) -> Iterator[Component]:
    """Register ``component`` for the duration of the block (tests, experiments)."""
    register(component)
    try:
        yield component
    finally:
        unregister(component.name)


def registered() -> list[Component]:
    """Every registered component, in registration (= training) order."""
    return list(_REGISTERED.values())


def names() -> list[str]:
    return list(_REGISTERED)


def get(name: str) -> Component:
    """The component called ``name``; DataError naming the known ones otherwise."""
    try:
        return _REGISTERED[name]
    except KeyError:
        raise DataError(f"unknown component {name!r}; use one of {', '.join(_REGISTERED)}") from None


def by_model_type(model_type: str) -> Component:
    """The component ``train --model-type MODEL_TYPE`` trains; DataError naming the known types otherwise."""
    for component in _REGISTERED.values():
        if component.model_type == model_type:
            return component
    raise DataError(f"unknown model type {model_type!r}; use one of {', '.join(model_types())} or all")


def model_types() -> list[str]:
    return [c.model_type for c in _REGISTERED.values()]


def find(name: str) -> Component | None:
    return _REGISTERED.get(name)


# ---------------------------------------------------------------- "already trained": one check


def _summary_of(component: Component | str, metadata: dict[str, Any]) -> dict[str, Any]:
    found = find(component) if isinstance(component, str) else component
    return found.summary(metadata) if found is not None else Manifest(metadata).summary(str(component))


def find_trained(
    registry: ModelRegistry, component: Component | str, fingerprint: str, config: dict[str, Any]
) -> VersionInfo | None:
    """The newest version whose ``component`` (an instance or a registered name) was trained on the same
    data fingerprint and config: the one "already trained" check of every component."""
    wanted = _comparable(config)
    for info in reversed(registry.list_versions()):
        summary = _summary_of(component, info.metadata)
        if summary.get("dataset_fingerprint") == fingerprint and _comparable(summary.get("config")) == wanted:
            return info
    return None


# Config keys added after versions were recorded, at the value that means "as before": a record without them
# and one with them at this value are the same training.
LATER_DEFAULTS: dict[str, Any] = {"precision": "fp32", "label_smoothing": 0.0, "freeze_layers": 0}


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def refuse_repeat(
    registry: ModelRegistry, component: Component | str, fingerprint: str, config: dict[str, Any], force: bool
) -> None:
    """AlreadyTrainedError naming the version that holds the same training, unless ``force``."""
    if not force:
        match = find_trained(registry, component, fingerprint, config)
        if match is not None:
            raise AlreadyTrainedError(match.name)


@contextlib.contextmanager
def training_run(
    settings: Settings,
    registry: ModelRegistry,
    component: str,
    experiment: str,
    prepared: Any,
    config_record: dict[str, Any],
    params: dict[str, Any],
    *,
    force: bool,
    source: Path | None = None,
) -> Iterator[tuple[MlflowTracker, SystemMonitor]]:
    """The frame a component's training shares: refuse a repeat (AlreadyTrainedError naming the version whose
    ``component`` was trained on ``prepared``'s fingerprint with ``config_record``) unless ``force``; open one
    MLflow run in ``experiment`` named ``{component}-{fingerprint[:8]}``, log ``params`` with the split's
    sizes and fingerprint, record the data set (``source``: its path, default data/<component>), and yield
    (tracker, system monitor). The monitor is closed however the block ends."""
    refuse_repeat(registry, component, prepared.fingerprint, config_record, force)
    monitor = SystemMonitor()
    tracker = MlflowTracker(settings.paths.tracking_uri, experiment=experiment)
    try:
        with tracker.run(run_name=f"{component}-{prepared.fingerprint[:8]}", tags={"hotelbot.component": component}):
            tracker.log_params(
                {
                    **params,
                    "component": component,
                    "train_size": len(prepared.train),
                    "validation_size": len(prepared.validation),
                    "dataset_fingerprint": prepared.fingerprint,
                }
            )
            tracker.log_dataset(
                component,
                prepared.fingerprint,
                source or default_data_dir(settings, component),
                {"train": len(prepared.train), "validation": len(prepared.validation)},
            )
            yield tracker, monitor
    finally:
        monitor.close()


def scored_result(
    component: str,
    info: VersionInfo,
    metrics: dict[str, Any],
    duration: float,
    run_id: str | None,
    history: list[dict[str, Any]],
    carried: dict[str, Any],
    extra_lines: Sequence[str] = (),
) -> ComponentResult:
    """The result of a component scored like a classifier (``metrics`` has "metric" and "overall_score";
    entities and sentiment): its JSON document and the lines the CLI shows."""
    scalar = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    components = info.manifest.components or []
    document = {
        "component": component,
        "version": info.name,
        "skipped": False,
        "duration_seconds": round(duration, 2),
        "mlflow_run_id": run_id,
        "overall_score": metrics.get("overall_score"),
        "metric": metrics.get("metric"),
        "metrics": scalar,
        "per_type": metrics.get("per_type"),
        "per_label": metrics.get("per_intent"),
        "history": history,
        "components": info.metadata.get("components"),
        "carried_from": carried.get("from"),
        "carried_components": carried.get("components"),
    }
    lines = [
        f"trained {component} {info.name} in {duration:.1f}s: {metrics['metric']} "
        f"{metrics['overall_score']:.4f}; components {', '.join(components)}"
        + (f" (carried over from {carried['from']})" if carried.get("from") else ""),
        *extra_lines,
    ]
    return ComponentResult(
        component,
        info,
        metrics,
        duration,
        run_id,
        history,
        document,
        lines,
        notes=[f"saved to {info.path}; MLflow run {run_id}"],
        score=(f"{component}_overall_score", float(metrics["overall_score"])),
        carried_from=carried.get("from"),
        carried_components=list(carried.get("components") or []),
    )


__all__ = [
    "Component",
    "ComponentResult",
    "SplitComponent",
    "TrainRequest",
    "default_data_dir",
    "by_model_type",
    "find",
    "find_trained",
    "get",
    "model_types",
    "names",
    "refuse_repeat",
    "register",
    "registered",
    "registered_temporarily",
    "labels_report_section",
    "recorded_metrics",
    "report_common",
    "scored_result",
    "training_run",
    "unregister",
    "usable_confidence",
]
