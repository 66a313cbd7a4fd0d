"""`serve --capture DIR`: each classified message gets a request id; fallbacks and low-confidence answers
are captured (masked) in the capture directory, and ``POST /feedback`` captures a request the client flags.
See :mod:`hotelbot_cli.feedback.capture` for what is written and how long it is kept."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import Request

from ..components import registered
from ..errors import ServeError
from ..feedback.capture import CapturePolicy, CaptureStore, new_request_id
from .settings import ServeSettings

logger = logging.getLogger(__name__.rpartition(".")[0] + ".models")  # the package's logger: serve shows it


def capture_store(settings: ServeSettings) -> CaptureStore | None:
    """The capture store ``settings`` ask for (None: capture is off, the default)."""
    if not settings.capture_dir:
        return None
    policy = CapturePolicy(
        below_confidence=settings.capture_below,
        retention_days=settings.capture_retention_days,
        max_bytes=int(settings.capture_max_mb * 1024 * 1024),
        feedback_hours=settings.capture_feedback_hours,
    )
    return CaptureStore(Path(settings.capture_dir), policy)


def person_finder(model: Any) -> Callable[[str], list[tuple[int, int]]] | None:
    """Person-name spans from the version's analyzing components that find them (the entity model), or None."""
    analyzer = getattr(model, "analyzer", None)
    loaded = getattr(analyzer, "loaded", None) or {}
    finders = [(c, loaded[c.name]) for c in registered() if c.name in loaded]

    def find(text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for component, component_model in finders:
            spans += component.person_spans(component_model, [text])[0]
        return spans

    return find if finders else None


def _observe(store: CaptureStore, model: Any, endpoint: str, texts: Sequence[str], answers: Sequence[dict]) -> None:
    find = person_finder(model)
    for text, answer in zip(texts, answers):
        try:
            store.observe(answer["request_id"], endpoint, model.version, text, answer, find)
        except Exception:  # noqa: BLE001 - a capture failure never fails the guest's request
            logger.warning("capture failed for a request to %s", endpoint, exc_info=True)
    notice = store.dropped_warning()
    if notice is not None:
        logger.warning(notice)


async def capture_answers(
    request: Request, model: Any, endpoint: str, texts: Sequence[str], answers: Sequence[dict[str, Any]]
) -> None:
    """With capture on: give each answer its ``request_id``, remember it for feedback and capture it when its
    answer calls for it (in a thread: it writes). With capture off, nothing (answers carry no request id)."""
    store: CaptureStore | None = request.app.state.capture
    if store is None:
        return
    for answer in answers:
        answer["request_id"] = new_request_id()
    await asyncio.to_thread(_observe, store, model, endpoint, texts, answers)


async def record_feedback(request: Request, request_id: str, intent: str | None, wrong_answer: bool) -> dict:
    store: CaptureStore | None = request.app.state.capture
    if store is None:
        raise ServeError(503, "capture is off", "start the server with `hotelbot serve --capture DIR` to take feedback")
    model = request.app.state.models.model
    find = person_finder(model) if model is not None else None
    record = await asyncio.to_thread(store.feedback, request_id, intent, wrong_answer, find)
    if record is None:
        raise ServeError(
            404,
            "unknown request id",
            f"no request {request_id!r} answered by this server in the last {store.policy.feedback_hours:g} hours",
        )
    return {"captured": True, "request_id": request_id, "reason": "feedback", "model_version": record["model_version"]}
