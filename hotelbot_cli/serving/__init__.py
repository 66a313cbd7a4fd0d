"""Serving: ``create_app(registry) -> FastAPI``, the prediction server behind ``hotelbot serve``.

Three parts, all owned by one app (no module-level state; everything hangs off ``app.state``):

- :class:`ModelHolder` keeps the loaded deployed version (a :class:`LoadedModel`: predictor, version
  name, out-of-scope threshold) and replaces it when the registry's ``current`` symlink moves. The new
  version is loaded beside the old one, checked (checksums + one smoke prediction), then the reference
  is swapped; a request that already took the old model finishes with it. A failed load keeps the old
  model, is logged, and is counted in ``/metrics``.
- :class:`MicroBatcher` groups concurrent requests into one forward pass (bounded wait, bounded size)
  and runs the model in one worker thread, so the event loop never blocks on torch.
- :class:`Metrics` renders Prometheus text: request counts and latency per endpoint, model version,
  micro-batch sizes, forward passes, swaps and failed loads.

The model is loaded with :func:`~hotelbot_cli.runtime.load_predictor`: a version with an ONNX export
is served by onnxruntime + tokenizers and torch/transformers are never imported; otherwise they are
imported through :class:`~hotelbot_cli.runtime.TorchPredictor` when the model is loaded.

Modules: ``settings`` (ServeSettings, HOTELBOT_SERVE_*), ``metrics`` (Prometheus text), ``models``
(LoadedModel, ModelHolder, the registry watcher), ``batching`` (MicroBatcher), ``schemas`` (request and
response models), ``errors`` (ServeError, JSON error bodies, exception handlers), ``middleware`` (request
metrics, body-size limit), ``routes`` (the endpoints), ``app`` (create_app), ``run`` (serve, app_factory).
"""

from __future__ import annotations

from ..data import OUT_OF_SCOPE
from ..errors import ServeError
from .app import create_app
from .batching import MicroBatcher
from .metrics import Metrics
from .models import (
    GENERATOR,
    KNOWLEDGE,
    SMOKE_TEXT,
    THRESHOLD_KEY,
    TRAIN_AND_DEPLOY,
    LoadedModel,
    ModelHolder,
    out_of_scope_threshold,
)
from .run import app_factory, serve
from .schemas import (
    ERROR_RESPONSES,
    Analysis,
    AnalyzeRequest,
    BatchAnalysis,
    BatchClassification,
    BatchClassifyRequest,
    Classification,
    ClassifyRequest,
    Entity,
    ErrorBody,
    RankedIntent,
    Readiness,
    ReplyRequest,
    SearchHitModel,
    SearchRequest,
    SearchResults,
    Sentiment,
    Text,
)
from .settings import DEFAULT_HOST, DEFAULT_PORT, ENV_SERVE, ServeSettings

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENV_SERVE",
    "ERROR_RESPONSES",
    "GENERATOR",
    "KNOWLEDGE",
    "OUT_OF_SCOPE",
    "SMOKE_TEXT",
    "THRESHOLD_KEY",
    "TRAIN_AND_DEPLOY",
    "Analysis",
    "AnalyzeRequest",
    "BatchAnalysis",
    "BatchClassification",
    "BatchClassifyRequest",
    "Classification",
    "ClassifyRequest",
    "Entity",
    "ErrorBody",
    "LoadedModel",
    "Metrics",
    "MicroBatcher",
    "ModelHolder",
    "RankedIntent",
    "Readiness",
    "ReplyRequest",
    "SearchHitModel",
    "SearchRequest",
    "SearchResults",
    "Sentiment",
    "ServeError",
    "ServeSettings",
    "Text",
    "app_factory",
    "create_app",
    "out_of_scope_threshold",
    "serve",
]
