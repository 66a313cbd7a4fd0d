"""The joint NLU model: ``train --model-type nlu`` trains ONE encoder with three heads (intents with the
out-of-scope threshold, sentiment, entity BIO tags) and publishes a version whose intent classifier,
entity extractor and sentiment classifier are those heads (:mod:`.train`). It is a training-only
component: a version lists ``classifier``, ``entities`` and ``sentiment`` (validated, gated, deployed,
reported, served as always) and records the joint training under ``metadata["nlu"]``; at run time one
encoder pass answers the three (:mod:`.runtime`).

Modules: fit.py (the multi-task Trainer fit), train.py (publishing), runtime.py (one pass, three answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ...errors import ExportUnavailable
from ..base import Component, ComponentResult, TrainRequest, find

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import VersionInfo

PROVIDES = ("classifier", "entities", "sentiment")
HEADS = PROVIDES[1:]  # the components that are heads beside the classifier's, each trained on its own split


class NluComponent(Component):
    name = "nlu"
    model_type = "nlu"
    distributed = True  # fits on the Trainer: torchrun / accelerate launch
    kind = "nlu-model"
    experiment = "hotelbot-nlu"
    description = "joint NLU model: one encoder, intent + entity + sentiment heads (trains those three components)"
    train_options = ("incremental",)
    prepare_hint = "hotelbot prepare FILE, --entities FILE and --sentiment FILE"

    def provides(self) -> tuple[str, ...]:
        return PROVIDES

    # What a version gets from it (adopt_component copies these when `all` finds it unchanged): the files and
    # metadata keys of the three components it trains, and its own summary ("nlu", a classifier key).
    def owned_paths(self) -> tuple[str, ...]:
        return tuple(p for name in PROVIDES for p in self._component(name).owned_paths())

    def owned_metadata_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for name in PROVIDES for k in self._component(name).owned_metadata_keys()))

    @staticmethod
    def _component(name: str) -> Component:
        found = find(name)
        if found is None:
            raise RuntimeError(f"the joint NLU model needs the {name} component registered")
        return found

    def summary(self, metadata: dict[str, Any]) -> dict[str, Any]:
        summary = metadata.get("nlu")
        return summary if isinstance(summary, dict) else {}

    def in_all(self, settings: Settings) -> bool:
        return bool(settings.training.joint_nlu)

    def prepared_data(self, settings: Settings, documents: Path | None = None) -> Path | None:
        """The intent split, when the entity and sentiment splits are prepared too; else None."""
        intents = Path(settings.paths.data)
        ready = all(self._component(task).prepared_data(settings) is not None for task in HEADS)
        return intents if ready and (intents / "dataset.json").exists() else None

    def train(self, request: TrainRequest) -> ComponentResult:
        from .train import train_nlu  # the fit imports the Trainer stack

        return train_nlu(request)

    def load(self, info: VersionInfo, settings: Settings | None = None, loaded: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError("the joint NLU model runs as the classifier, entities and sentiment components")


def joint_head(info: VersionInfo, component: str) -> dict[str, Any] | None:
    """``<component>/joint.json`` of a version whose ``component`` is a head of the classifier's joint model;
    None when the component has its own model."""
    import json

    from .runtime import JOINT_FILE  # on use: the runtime imports the entity tagger, this module must stay light

    path = info.path / component / JOINT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def joint_runner(info: VersionInfo, loaded: dict[str, Any] | None = None) -> Any:
    """The :class:`~.runtime.JointRunner` of ``info``'s classifier: on the classifier already loaded in
    ``loaded`` (predict, serve: one model in memory for the three components), else loaded now with the
    version's runtime (ONNX where it has one)."""
    # on use: the runtime factory and the joint runner (which imports the entity tagger)
    from ...runtime import load_predictor
    from .runtime import JointRunner  # imports the entity tagger

    predictor = (loaded or {}).get("classifier")
    return JointRunner.of(predictor if predictor is not None else load_predictor(info))


class JointHead:
    """What a component that may be a head of the joint model shares (entities, sentiment; mixed in before
    :class:`~..base.SplitComponent`): in a joint version it runs on the classifier (:meth:`runs_on`), loads as
    a view of the classifier's :class:`~.runtime.JointRunner` (:meth:`joint_view`) and is exported whole with
    the classifier; otherwise :meth:`load_own` and the component's own export."""

    name: ClassVar[str]  # the component's (see base.Component)

    def runs_on(self, info: VersionInfo) -> str | None:
        return "classifier" if joint_head(info, self.name) is not None else None

    def load(self, info: VersionInfo, settings: Settings | None = None, loaded: dict[str, Any] | None = None) -> Any:
        """Its own model, or in a joint version the classifier's head (on the classifier already in ``loaded``
        when there is one: one model in memory, one pass for the three components)."""
        if self.runs_on(info) is not None:
            return self.joint_view(joint_runner(info, loaded))
        return self.load_own(info)

    def joint_view(self, runner: Any) -> Any:
        raise NotImplementedError

    def load_own(self, info: VersionInfo) -> Any:
        raise NotImplementedError

    def refuse_joint_export(self, info: VersionInfo, fmt: str) -> None:
        """ExportUnavailable for a head of the joint model (its weights are the classifier's)."""
        if self.runs_on(info) is not None:
            raise ExportUnavailable(
                f"the {self.name} of {info.name} is a head of its joint NLU model, which is "
                "exported whole with the classifier",
                hint=f"hotelbot export {info.name} --component classifier --format {fmt} DIR",
            )


__all__ = ["JointHead", "NluComponent", "PROVIDES", "joint_head", "joint_runner"]
