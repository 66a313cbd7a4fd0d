"""The chatbot's components and THE list of them.

:data:`BUILTIN` is the one place the components are listed; its order is the training order of
`train --model-type all` and the order of every loop over components (carry-over, deploy's smoke test
and gates, validate, analyze, the server, the report). A plugin or a test adds one with
:func:`~hotelbot_cli.components.base.register`. See :mod:`hotelbot_cli.components.base` for the
interface and the README's "Adding a component".
"""

from __future__ import annotations

from .base import (
    Component,
    ComponentResult,
    TrainRequest,
    by_model_type,
    find,
    get,
    model_types,
    names,
    register,
    registered,
    registered_temporarily,
    unregister,
)
from .entities import EntityExtractorComponent
from .generator import GeneratorComponent
from .intents import IntentClassifier
from .knowledge import KnowledgeBaseComponent
from .nlu import NluComponent
from .replies import RepliesComponent
from .sentiment import SentimentComponent

BUILTIN: tuple[Component, ...] = (
    IntentClassifier(),
    NluComponent(),
    KnowledgeBaseComponent(),
    EntityExtractorComponent(),
    SentimentComponent(),
    GeneratorComponent(),
    RepliesComponent(),
)

for _component in BUILTIN:
    if find(_component.name) is None:
        register(_component)

__all__ = [
    "BUILTIN",
    "Component",
    "ComponentResult",
    "TrainRequest",
    "by_model_type",
    "find",
    "get",
    "model_types",
    "names",
    "register",
    "registered",
    "registered_temporarily",
    "unregister",
]
