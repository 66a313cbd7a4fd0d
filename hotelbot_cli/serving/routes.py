"""The HTTP routes: small handlers that read the app's state (``request.app.state``: ``settings``,
``models``, ``batcher``, ``metrics``) and answer JSON in the shapes of :mod:`.schemas`.

Each handler is declared with :func:`route` and put on an app by :func:`add_routes`, as plain routes of
the app itself (what ``@app.get``/``@app.post`` would make), rather than through an included
``APIRouter``, which this FastAPI version serves through an extra lazily-built routing layer."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Sequence

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..errors import ServeError
from .capture import capture_answers, record_feedback
from .models import LoadedModel, ModelHolder
from .schemas import (
    ERROR_RESPONSES,
    FEEDBACK_RESPONSES,
    AnalyzeRequest,
    BatchAnalysis,
    BatchClassification,
    BatchClassifyRequest,
    Classification,
    ClassifyRequest,
    ErrorBody,
    FeedbackAnswer,
    FeedbackRequest,
    Readiness,
    ReplyAnswer,
    ReplyRequest,
    SearchRequest,
    SearchResults,
)
from .settings import ServeSettings

logger = logging.getLogger(__name__.rpartition(".")[0] + ".models")  # the package's logger: serve shows it

# (method, path, handler, FastAPI route options) of every route, in declaration order.
ROUTES: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = []


def route(method: str, path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a handler (``options``: what ``app.get``/``app.post`` take)."""

    def declare(handler: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append((method, path, handler, options))
        return handler

    return declare


def add_routes(app: FastAPI) -> None:
    for method, path, handler, options in ROUTES:
        app.add_api_route(path, handler, methods=[method], **options)


# The POST routes: the metrics middleware labels a request answered before routing (413) by its path when
# it is one of these, else "unmatched".
POST_PATHS = frozenset({"/classify", "/classify/batch", "/search", "/analyze", "/reply", "/feedback"})

# What each endpoint needs from the loaded version, and the 503 it answers when the part is missing
# ("{version}" is filled in).
NEEDS = {
    "predictor": (
        "no classifier",
        "version {version} holds only a knowledge base; train a classifier (hotelbot train) and deploy it",
    ),
    "analyzer": ("nothing to analyze with", "version {version} has no classifier, entity or sentiment model"),
    "knowledge": (
        "no knowledge base",
        "version {version} has none: run `hotelbot prepare --documents DIR`, "
        "`hotelbot train --model-type embeddings`, then deploy",
    ),
    "replies": (
        "no reply model",
        "version {version} has none: run `hotelbot train --model-type replies` (it "
        "needs a knowledge base), then deploy",
    ),
}


CONVERSATION_HEADER = "X-Conversation-Id"


def conversation_key(body: Any, request: Request) -> str | None:
    """The request's conversation key: its ``conversation_id`` field, else the X-Conversation-Id header."""
    return getattr(body, "conversation_id", None) or request.headers.get(CONVERSATION_HEADER) or None


def require_model(holder: ModelHolder, part: str = "predictor", key: str | None = None) -> LoadedModel:
    """The loaded version that answers conversation ``key`` (the canary's share of keys go to the canary), if it
    has ``part``; else the 503 that says what is missing."""
    model = holder.pick(key, part)
    if model is None:
        raise holder.unavailable()
    if getattr(model, part) is None:
        title, detail = NEEDS[part]
        raise ServeError(503, title, detail.format(version=model.version))
    return model


def served_by(request: Request, model: LoadedModel) -> LoadedModel:
    """Note which version answers this request (the middleware counts it under that version)."""
    request.state.model_version = model.version
    return model


async def with_failover(
    request: Request, model: LoadedModel, endpoint: str, run: Callable[[LoadedModel], Awaitable[Any]]
) -> tuple[LoadedModel, Any]:
    """``await run(model)``; when ``model`` is the canary and it fails (an exception: a broken version), the
    failure is counted against the canary (a 5xx in its live figures, which the judge aborts on) and the
    stable version answers instead, so the guest gets an answer. Returns (the version that answered, the
    answer)."""
    state = request.app.state
    holder: ModelHolder = state.models
    start = time.perf_counter()
    try:
        return model, await run(model)
    except ServeError:
        raise
    except Exception:  # noqa: BLE001 - a canary's failure: answered by the stable version below
        stable = holder.model
        if stable is None or stable is model or model is not holder.canary:
            raise
        logger.warning("canary %s failed a request; answered by %s", model.version, stable.version, exc_info=True)
        state.metrics.versions.observe_request(model.version, endpoint, 500, time.perf_counter() - start)
        stable = served_by(request, stable)
        return stable, await run(stable)


def check_length(settings: ServeSettings, text: str, where: str) -> None:
    if len(text) > settings.max_text_length:
        raise ServeError(
            413, "text too long", f"{where} has {len(text)} characters; the limit is {settings.max_text_length}"
        )


def check_batch(settings: ServeSettings, texts: Sequence[str]) -> None:
    if len(texts) > settings.max_batch_size:
        raise ServeError(413, "batch too large", f"{len(texts)} texts; the limit is {settings.max_batch_size}")
    for i, text in enumerate(texts):
        check_length(settings, text, f"texts[{i}]")


def json_response(document: Any) -> Response:
    """Answers are built by us in the declared shape: serialise them directly (orjson), skipping
    FastAPI's re-validation of the response model, which costs more than the rest of the request."""
    return Response(orjson.dumps(document), media_type="application/json")


@route("GET", "/health", tags=["probes"], summary="The process is up (always 200)")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@route(
    "GET",
    "/ready",
    tags=["probes"],
    response_model=Readiness,
    summary="200 when a model is loaded, else 503",
    responses={503: {"model": ErrorBody, "description": "No model is loaded"}},
)
async def ready(request: Request) -> Any:
    holder: ModelHolder = request.app.state.models
    model = holder.model
    if model is None:
        problem = holder.unavailable()
        return JSONResponse(
            {"ready": False, "model_version": None, "error": problem.message, "detail": problem.detail}, status_code=503
        )
    detector = getattr(model.predictor, "detector", None)
    canary = holder.canary
    return {
        "ready": True,
        "model_version": model.version,
        "out_of_scope_threshold": model.threshold,
        "out_of_scope_detector": detector.to_spec() if detector is not None else None,
        "canary": {"version": canary.version, "weight": holder.canary_weight} if canary is not None else None,
        "last_load_error": holder.last_error or holder.canary_error,
    }


@route(
    "POST",
    "/classify",
    tags=["classify"],
    response_model=Classification,
    responses=ERROR_RESPONSES,
    summary="Classify one message",
)
async def classify(body: ClassifyRequest, request: Request) -> Any:
    state = request.app.state
    check_length(state.settings, body.text, "text")
    model = served_by(request, require_model(state.models, key=conversation_key(body, request)))
    model, (answer,) = await with_failover(
        request, model, "/classify", lambda m: state.batcher.classify(m, [body.text])
    )
    await capture_answers(request, model, "/classify", [body.text], [answer])
    return json_response(answer)


@route(
    "POST",
    "/classify/batch",
    tags=["classify"],
    response_model=BatchClassification,
    responses=ERROR_RESPONSES,
    summary="Classify many messages with one model version",
)
async def classify_batch(body: BatchClassifyRequest, request: Request) -> Any:
    state = request.app.state
    check_batch(state.settings, body.texts)
    model = served_by(request, require_model(state.models, key=conversation_key(body, request)))
    model, answers = await with_failover(
        request, model, "/classify/batch", lambda m: state.batcher.classify(m, body.texts)
    )
    await capture_answers(request, model, "/classify/batch", body.texts, answers)
    return json_response({"model_version": model.version, "predictions": answers})


@route(
    "POST",
    "/analyze",
    tags=["analyze"],
    response_model=BatchAnalysis,
    responses=ERROR_RESPONSES,
    summary="Intent, entities and sentiment of messages, with one model version",
)
async def analyze(body: AnalyzeRequest, request: Request) -> Any:
    state = request.app.state
    check_batch(state.settings, body.texts)
    model = served_by(request, require_model(state.models, "analyzer", conversation_key(body, request)))
    model, answers = await with_failover(
        request, model, "/analyze", lambda m: state.batcher.run(m.analyzer.analyze, body.texts, state.settings.top_k)
    )
    for row in answers:
        state.metrics.versions.observe_answer(
            model.version, row.get("intent"), row.get("confidence"), bool(row.get("fallback"))
        )
    if any(row.get("intent") is not None for row in answers):  # a version with an intent classifier
        await capture_answers(request, model, "/analyze", body.texts, answers)
    return json_response({"model_version": model.version, "predictions": answers})


@route(
    "POST",
    "/search",
    tags=["search"],
    response_model=SearchResults,
    responses=ERROR_RESPONSES,
    summary="Search the hotel knowledge base of the deployed version",
)
async def search(body: SearchRequest, request: Request) -> Any:
    check_length(request.app.state.settings, body.query, "query")
    model = served_by(request, require_model(request.app.state.models, "knowledge", conversation_key(body, request)))
    model, hits = await with_failover(
        request, model, "/search", lambda m: asyncio.to_thread(m.knowledge.search, body.query, body.top_k)
    )
    return json_response({"model_version": model.version, "query": body.query, "results": [h.to_dict() for h in hits]})


@route(
    "POST",
    "/reply",
    tags=["reply"],
    response_model=ReplyAnswer,
    responses=ERROR_RESPONSES,
    summary="Answer a guest message with a grounded, fact-checked reply",
)
async def reply(body: ReplyRequest, request: Request) -> Any:
    check_length(request.app.state.settings, body.text, "text")
    model = served_by(request, require_model(request.app.state.models, "replies", conversation_key(body, request)))
    model, (answer,) = await with_failover(
        request, model, "/reply", lambda m: asyncio.to_thread(m.replies.reply, [body.text])
    )
    answer.pop("message", None)
    answer = {**answer, "model_version": model.version}
    if answer.get("intent") is not None:  # what the classifier answered decides what is captured
        await capture_answers(request, model, "/reply", [body.text], [answer])
    return json_response(answer)


@route(
    "POST",
    "/feedback",
    tags=["feedback"],
    response_model=FeedbackAnswer,
    responses=FEEDBACK_RESPONSES,
    summary="Flag an answer as wrong (or give the right intent): the request is captured for review",
)
async def feedback(body: FeedbackRequest, request: Request) -> Any:
    return json_response(await record_feedback(request, body.request_id, body.intent, body.wrong_answer))


@route("GET", "/metrics", tags=["probes"], response_class=PlainTextResponse, summary="Prometheus metrics")
async def prometheus_metrics(request: Request) -> PlainTextResponse:
    model = request.app.state.models.model
    recheck = getattr(model.predictor, "recheck", None) if model is not None else None
    return PlainTextResponse(
        request.app.state.metrics.render(recheck), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
