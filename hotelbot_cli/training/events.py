"""Training progress as events: the library reports, the CLI (Rich) or a test (a list) renders.

Every fit calls ``listener(TrainingEvent)``; nothing in the library prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class TrainingEvent:
    """One thing worth showing: kind is begin, step, evaluate, end or status."""

    kind: str
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    total_epochs: int = 0
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    system: dict[str, float] = field(default_factory=dict)
    message: str = ""


Listener = Callable[[TrainingEvent], None]


def emitter(listener: Listener | None) -> Listener:
    """``listener``, or a no-op when there is none."""
    return listener or (lambda event: None)
