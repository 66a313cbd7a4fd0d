"""``create_app(registry) -> FastAPI``: one app owning its model holder, micro-batcher and metrics (no
module-level state; everything hangs off ``app.state``), with the routes, error handlers and lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from fastapi import FastAPI

from .. import __version__
from ..registry import ModelRegistry
from .batching import MicroBatcher
from .capture import capture_store
from .docs import add_docs
from .errors import add_error_handlers
from .metrics import Metrics
from .middleware import MetricsMiddleware
from .models import TRAIN_AND_DEPLOY, ModelHolder, watch_registry
from .routes import POST_PATHS, add_routes
from .settings import ServeSettings

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the deployed version, start the micro-batcher and the registry watcher; stop them at shutdown."""
    holder: ModelHolder = app.state.models
    batcher: MicroBatcher = app.state.batcher
    interval = app.state.settings.watch_interval_s
    await asyncio.to_thread(holder.refresh)
    if holder.model is None and holder.last_error is None:
        logger.warning(
            "no version is deployed in %s: serving without a model (%s)", app.state.registry.root, TRAIN_AND_DEPLOY
        )
    batcher.start()
    if app.state.capture is not None:
        policy = app.state.capture.policy
        logger.info(
            "capturing fallbacks, answers below %.2f confidence and flagged requests in %s (masked; kept %d days)",
            policy.below_confidence,
            app.state.capture.root,
            policy.retention_days,
        )
    watcher = (
        asyncio.get_running_loop().create_task(watch_registry(holder, interval), name="hotelbot-model-watcher")
        if interval > 0
        else None
    )
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await batcher.stop()
        if app.state.capture is not None:
            app.state.capture.close()


def create_app(registry: ModelRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The prediction server for ``registry``'s deployed version (see the package docstring)."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    app = FastAPI(
        title="hotelbot",
        version=__version__,
        description="Intent classification for a Spanish-speaking hotel chatbot. Serves the registry's "
        "deployed version and follows deploys and rollbacks without a restart.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,  # serving.docs: the same pages with their assets from this server
    )
    app.state.registry = registry
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.models = ModelHolder(registry, settings, metrics)
    app.state.capture = capture_store(settings)  # None unless `serve --capture DIR`
    app.state.batcher = MicroBatcher(
        max_batch=settings.max_micro_batch,
        wait_s=settings.batch_wait_ms / 1000.0,
        top_k=settings.top_k,
        metrics=metrics,
    )
    app.add_middleware(
        MetricsMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes, post_paths=POST_PATHS
    )
    add_routes(app)
    add_docs(app, settings)
    add_error_handlers(app)
    return app
