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
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Mapping, Sequence

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .config import _Section
from .data import clean_text
from .errors import ConfigError, HotelbotError, ModelError
from .registry import ModelRegistry, VersionInfo
from .components import registered
from .components.compose import components_of
from .pipeline.analyze import Analyzer
from .runtime import apply_fallback, load_predictor

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
OUT_OF_SCOPE = "out_of_scope"
THRESHOLD_KEY = "out_of_scope_threshold"
TRAIN_AND_DEPLOY = "run `hotelbot train` then `hotelbot deploy`"
SMOKE_TEXT = "hola"
# The components whose answers /search and /reply return (the other endpoints serve the primary component
# and every analyzing one).
KNOWLEDGE = "knowledge"
GENERATOR = "generator"

# Environment variables read by app_factory() (how `hotelbot serve --workers N` configures its workers).
ENV_SERVE = {
    "HOTELBOT_SERVE_MAX_TEXT_LENGTH": "max_text_length",
    "HOTELBOT_SERVE_MAX_BATCH_SIZE": "max_batch_size",
    "HOTELBOT_SERVE_BATCH_WAIT_MS": "batch_wait_ms",
    "HOTELBOT_SERVE_MAX_MICRO_BATCH": "max_micro_batch",
    "HOTELBOT_SERVE_WATCH_INTERVAL_S": "watch_interval_s",
    "HOTELBOT_SERVE_TOP_K": "top_k",
    "HOTELBOT_SERVE_TORCH_THREADS": "torch_threads",
}


# ---------------------------------------------------------------------------------------- settings
@dataclass
class ServeSettings(_Section):
    """Limits and tuning of the prediction server (validated on construction)."""

    max_text_length: int = 1000  # characters per text; longer -> 413
    max_batch_size: int = 256  # texts per /classify/batch request; more -> 413
    batch_wait_ms: float = 5.0  # how long the first request of a micro-batch waits for company
    max_micro_batch: int = 64  # texts per forward pass
    watch_interval_s: float = 1.0  # how often the `current` symlink is polled; 0 turns hot swap off
    top_k: int = 3  # ranked intents in each answer
    torch_threads: int = 0  # torch intra-op threads per process; 0 leaves torch's default

    def __post_init__(self) -> None:
        for name in ("max_text_length", "max_batch_size", "max_micro_batch", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.batch_wait_ms <= 60_000:
            raise ConfigError(f"batch_wait_ms must be between 0 and 60000, got {self.batch_wait_ms!r}")
        if not 0 <= self.watch_interval_s <= 3600:
            raise ConfigError(f"watch_interval_s must be between 0 (off) and 3600, got {self.watch_interval_s!r}")
        if self.torch_threads < 0:
            raise ConfigError(f"torch_threads must be >= 0 (0: torch's default), got {self.torch_threads!r}")

    @property
    def max_body_bytes(self) -> int:
        """Largest request body accepted before parsing: a full batch of maximal, fully escaped texts."""
        return self.max_batch_size * (self.max_text_length * 12 + 64) + 64 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServeSettings":
        env = os.environ if env is None else env
        values = {key: env[name] for name, key in ENV_SERVE.items() if env.get(name)}
        return cls.from_dict(values, source="environment (HOTELBOT_SERVE_*)")  # type: ignore[return-value]

    def to_env(self) -> dict[str, str]:
        return {name: str(getattr(self, key)) for name, key in ENV_SERVE.items()}


# ---------------------------------------------------------------------------------------- errors
class ServeError(HotelbotError):
    """A request the server answers with a 4xx/5xx JSON body ``{"error": ..., "detail": ...}``."""

    def __init__(self, status_code: int, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


# ---------------------------------------------------------------------------------------- metrics
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_fmt(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum!r}", f"{name}_count{suffix} {self.total}"]
        return out


class Metrics:
    """A few counters and histograms behind one lock, rendered in the Prometheus text format.

    Written by hand rather than with prometheus_client: that library keeps a process-global default
    registry (at odds with one-app-per-factory and with tests building many apps in one process), and
    it needs its multiprocess mode plus a shared directory for ``--workers N``. Each worker here
    reports its own figures, which is what a scraper with one target per process expects.
    """

    LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.batch_sizes = _Histogram(self.BATCH_BUCKETS)
        self.forward_passes = 0
        self.out_of_scope = 0
        self.model_loads = 0
        self.load_failures = 0
        self.model_version: str | None = None

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            self.latency.setdefault(endpoint, _Histogram(self.LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int, out_of_scope: int = 0, passes: int = 1) -> None:
        """A micro-batch of ``size`` texts, run as ``passes`` forward passes (1, or one per text for a
        predictor that answers texts independently)."""
        with self._lock:
            self.batch_sizes.observe(size)
            self.forward_passes += passes
            self.out_of_scope += out_of_scope

    def observe_out_of_scope(self, count: int) -> None:
        with self._lock:
            self.out_of_scope += count

    def model_loaded(self, version: str) -> None:
        with self._lock:
            self.model_loads += 1
            self.model_version = version

    def load_failed(self) -> None:
        with self._lock:
            self.load_failures += 1

    def render(self, recheck: Any = None) -> str:
        """The Prometheus text; ``recheck``: the loaded int8 model's :class:`~hotelbot_cli.runtime.Recheck`
        (its counts since that model was loaded), if it has one."""
        with self._lock:
            lines = [
                "# HELP hotelbot_requests_total HTTP requests by endpoint and status code.",
                "# TYPE hotelbot_requests_total counter",
            ]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(f'hotelbot_requests_total{{endpoint="{_escape(endpoint)}",status="{status}"}} {count}')
            lines += [
                "# HELP hotelbot_request_duration_seconds Time from request received to response sent.",
                "# TYPE hotelbot_request_duration_seconds histogram",
            ]
            for endpoint, hist in sorted(self.latency.items()):
                lines += hist.lines("hotelbot_request_duration_seconds", f'endpoint="{_escape(endpoint)}"')
            lines += [
                "# HELP hotelbot_model_info The model version being served (value 1).",
                "# TYPE hotelbot_model_info gauge",
            ]
            if self.model_version:
                lines.append(f'hotelbot_model_info{{version="{_escape(self.model_version)}"}} 1')
            lines += [
                "# HELP hotelbot_model_loaded 1 when a model is loaded and /classify can answer.",
                "# TYPE hotelbot_model_loaded gauge",
                f"hotelbot_model_loaded {1 if self.model_version else 0}",
                "# HELP hotelbot_model_loads_total Versions loaded (start-up and hot swaps).",
                "# TYPE hotelbot_model_loads_total counter",
                f"hotelbot_model_loads_total {self.model_loads}",
                "# HELP hotelbot_model_load_failures_total Deployed versions that failed to load (old model kept).",
                "# TYPE hotelbot_model_load_failures_total counter",
                f"hotelbot_model_load_failures_total {self.load_failures}",
                "# HELP hotelbot_forward_passes_total Forward passes run by the micro-batcher.",
                "# TYPE hotelbot_forward_passes_total counter",
                f"hotelbot_forward_passes_total {self.forward_passes}",
                "# HELP hotelbot_out_of_scope_total Answers turned into out_of_scope by the version's threshold.",
                "# TYPE hotelbot_out_of_scope_total counter",
                f"hotelbot_out_of_scope_total {self.out_of_scope}",
                "# HELP hotelbot_microbatch_size Texts per forward pass.",
                "# TYPE hotelbot_microbatch_size histogram",
                *self.batch_sizes.lines("hotelbot_microbatch_size"),
            ]
        if recheck is not None:
            lines += ["# HELP hotelbot_int8_rechecks_total int8 answers that were close calls, re-run on fp32 "
                      "(since the model was loaded).",
                      "# TYPE hotelbot_int8_rechecks_total counter",
                      f"hotelbot_int8_rechecks_total {recheck.rerun}",
                      "# HELP hotelbot_int8_texts_total Texts answered by the int8 model (since it was loaded).",
                      "# TYPE hotelbot_int8_texts_total counter",
                      f"hotelbot_int8_texts_total {recheck.checked}"]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- model
def out_of_scope_threshold(metadata: Mapping[str, Any]) -> float | None:
    """The version's ``out_of_scope_threshold`` (a number in [0, 1]), or None when it has none."""
    value = metadata.get(THRESHOLD_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ModelError(f"{THRESHOLD_KEY} in the version's metadata must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One loaded version. Immutable: a hot swap replaces the whole object, never its fields."""

    predictor: Any  # a runtime.Predictor (torch or ONNX); None for a version holding only a knowledge base
    version: str
    threshold: float | None = None
    knowledge: Any = None  # hotelbot_cli.knowledge.KnowledgeBase when the version has one
    analyzer: Any = None  # hotelbot_cli.analysis.Analyzer: classifier + entity + sentiment models (those present)
    responder: Any = None  # hotelbot_cli.generation.Responder when the version has a response generator
    loaded_at: float = field(default_factory=time.time)

    def answer(self, prediction: Any) -> dict[str, Any]:
        """The response object for one prediction, with the out-of-scope fallback applied."""
        if getattr(prediction, "fallback", False):  # the predictor already applied the model's own threshold
            intent, fallback = OUT_OF_SCOPE, True
        else:
            intent, fallback = apply_fallback(prediction.intent, prediction.confidence, self.threshold)
        return {
            "intent": intent,
            "confidence": prediction.confidence,
            "top_k": prediction.top_k,
            "model_version": self.version,
            "fallback": fallback,
        }


def _load_version(info: VersionInfo) -> Any:
    """The version's runtime (runtime.json / HOTELBOT_RUNTIME): ONNX serves without importing torch."""
    return load_predictor(info)


class ModelHolder:
    """The deployed model, reloaded when the registry's ``current`` moves.

    ``model`` is a plain attribute read (atomic under the GIL); only :meth:`refresh` writes it, under a
    lock, after the new version has loaded and answered a smoke prediction.
    """

    def __init__(self, registry: ModelRegistry, settings: ServeSettings, metrics: Metrics,
                 loader: Callable[[VersionInfo], Any] = _load_version) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self._loader = loader
        self._lock = threading.Lock()
        self.model: LoadedModel | None = None
        self.last_error: str | None = None
        self._failed: str | None = None  # the target that failed to load: not retried until current moves
        self._warned: str | None = None

    def refresh(self) -> bool:
        """Load the deployed version if it is not the one loaded. True when the model was replaced."""
        with self._lock:
            loaded = self.model.version if self.model else None
            try:
                target = self.registry.current_name()
            except (HotelbotError, OSError) as exc:  # e.g. unreadable deployed state: keep what we have
                self._warn_once(f"cannot read the deployed version of {self.registry.root} ({exc}); "
                                f"{'still serving ' + loaded if loaded else 'no model is loaded'}")
                if self.model is None:
                    self.last_error = f"cannot read the deployed version: {exc}"
                return False
            if target == loaded:  # includes a rollback to the loaded version after a failed deploy
                self._failed = None
                self._warned = None
                self.last_error = None
                return False
            if target is None:  # nothing deployed (any more): keep answering with what we have, if anything
                if loaded:
                    self._warn_once(f"the registry {self.registry.root} has no deployed version any more; "
                                    f"still serving {loaded}")
                return False
            if target == self._failed:
                return False
            try:
                new = self._load(target)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old model
                self._failed = target
                self.last_error = f"version {target} failed to load: {exc}"
                self.metrics.load_failed()
                logger.error("could not load %s (%s); %s", target, exc,
                             f"still serving {loaded}" if loaded else "no model is loaded")
                return False
            self.model = new
            self._failed = None
            self._warned = None
            self.last_error = None
            self.metrics.model_loaded(target)
            logger.info("serving model %s%s", target, f" (was {loaded})" if loaded else "")
            return True

    def _warn_once(self, message: str) -> None:
        if message != self._warned:  # the watcher polls every second: say it once, not every second
            self._warned = message
            logger.warning(message)

    def _load(self, name: str) -> LoadedModel:
        """Load every registered component the version holds (the primary one through ``loader``), each
        answering one smoke text before the swap (which also loads what loads lazily)."""
        info = self.registry.require_intact(name)
        threshold = out_of_scope_threshold(info.metadata)
        present = components_of(info)
        parts: dict[str, Any] = {}
        for component in registered():
            if component.name not in present:
                continue
            loaded = self._loader(info) if component.primary else component.load(info, None, parts)
            if component.primary and self.settings.torch_threads and getattr(loaded, "_torch", None) is not None:
                loaded._torch.set_num_threads(self.settings.torch_threads)
            component.warm_up(loaded, name, SMOKE_TEXT)
            parts[component.name] = loaded
        analyzing = {c: parts[c] for c in Analyzer.analyzing_components(info)}
        analyzer = Analyzer(info.name, analyzing) if analyzing else None
        primary = next((parts[c.name] for c in registered() if c.primary and c.name in parts), None)
        model = LoadedModel(primary, info.name, threshold, parts.get(KNOWLEDGE), analyzer, parts.get(GENERATOR))
        if primary is not None:
            smoke = primary.predict([SMOKE_TEXT], top_k=self.settings.top_k)
            if len(smoke) != 1 or not 0.0 <= float(smoke[0].confidence) <= 1.0:
                raise ModelError(f"version {name} gave a malformed smoke prediction")
        if analyzer is not None and len(analyzer.analyze([SMOKE_TEXT], top_k=self.settings.top_k)) != 1:
            raise ModelError(f"version {name} gave a malformed smoke analysis")
        return model

    def unavailable(self) -> ServeError:
        detail = (self.last_error + f"; deploy a working version ({TRAIN_AND_DEPLOY})" if self.last_error else
                  f"no version is deployed in the registry {self.registry.root}: {TRAIN_AND_DEPLOY}")
        return ServeError(503, "no model is loaded", detail)


async def _watch(holder: ModelHolder, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(holder.refresh)
        except Exception:  # noqa: BLE001 - the watcher must outlive a bad poll
            logger.exception("model watcher: polling the registry failed")


# ---------------------------------------------------------------------------------------- batching
@dataclass(eq=False)
class _Item:
    model: LoadedModel
    text: str
    future: asyncio.Future
    enqueued: float


class MicroBatcher:
    """Group concurrent requests into forward passes run by one worker thread.

    The first text waiting starts a window of ``wait_s``; the batch leaves when the window closes or
    ``max_batch`` texts are waiting, whichever is first. While a pass runs, new texts queue up and
    leave together in the next one, so batches grow with concurrency. Texts are grouped by the
    :class:`LoadedModel` they were submitted with: after a hot swap, requests that took the old model
    are answered by it. ``forward_passes`` and ``texts`` count what was run.
    """

    def __init__(self, *, max_batch: int = 64, wait_s: float = 0.005, top_k: int = 3,
                 metrics: Metrics | None = None) -> None:
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.top_k = top_k
        self.metrics = metrics
        self.forward_passes = 0
        self.texts = 0
        self._pending: deque[_Item] = deque()
        self._inflight: list[_Item] = []
        self._streaming: set[_Item] = set()  # handed to a streaming predictor, not answered yet
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is not None:
            return
        self._wakeup, self._full = asyncio.Event(), asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hotelbot-model")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hotelbot-microbatcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for item in [*self._inflight, *self._streaming, *self._pending]:
            if not item.future.done():
                item.future.set_exception(ServeError(503, "the server is shutting down"))
        self._pending.clear()
        self._inflight = []
        self._streaming.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def submit(self, model: LoadedModel, texts: Sequence[str]) -> list[asyncio.Future]:
        if self._task is None or self._wakeup is None or self._full is None:
            raise ServeError(503, "the server is not accepting work", "the micro-batcher is not running")
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = []
        for text in texts:
            future = loop.create_future()
            self._pending.append(_Item(model, text, future, now))
            futures.append(future)
        self._wakeup.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        return futures

    async def classify(self, model: LoadedModel, texts: Sequence[str]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*self.submit(model, texts)))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the model worker thread (not batched), so torch never runs two passes at once."""
        if self._executor is None:
            raise ServeError(503, "the server is not accepting work", "the micro-batcher is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run(self) -> None:
        assert self._wakeup is not None and self._full is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if not self._pending:
                self._wakeup.clear()
                continue
            if len(self._pending) < self.max_batch:
                remaining = self._pending[0].enqueued + self.wait_s - loop.time()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), remaining)
            batch: list[_Item] = []
            while self._pending and len(batch) < self.max_batch:
                item = self._pending.popleft()
                if not item.future.done():  # a cancelled request (client went away) is dropped
                    batch.append(item)
            if not self._pending:
                self._wakeup.clear()
            if len(self._pending) < self.max_batch:
                self._full.clear()
            if batch:
                await self._process(loop, batch)

    async def _process(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        groups: dict[int, tuple[LoadedModel, list[_Item]]] = {}
        for item in batch:
            groups.setdefault(id(item.model), (item.model, []))[1].append(item)
        self._inflight = batch
        try:
            for model, items in groups.values():
                if getattr(model.predictor, "streams", False) and await self._stream(loop, model, items):
                    continue
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._forward, model,
                                                          [i.text for i in items])
                except Exception as exc:  # noqa: BLE001 - delivered to the waiting requests
                    outcomes = [exc] * len(items)
                self.forward_passes += 1
                self.texts += len(items)
                if self.metrics is not None:
                    fallbacks = sum(1 for o in outcomes if isinstance(o, dict) and o["fallback"])
                    self.metrics.observe_batch(len(items), fallbacks)
                for item, outcome in zip(items, outcomes):
                    if item.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        item.future.set_exception(outcome)
                    else:
                        item.future.set_result(outcome)
        finally:
            self._inflight = []

    async def _stream(self, loop: asyncio.AbstractEventLoop, model: LoadedModel, items: list[_Item]) -> bool:
        """A predictor that answers texts independently (the int8 ONNX model on parallel lanes): tokenize
        the group at once, hand its texts to the lanes and return without waiting, so the next group forms
        while these run and each request is answered as soon as its own text is done (no batch barrier).
        False when the group could not be handed over (then it runs through :meth:`_forward`)."""
        try:
            futures = await loop.run_in_executor(self._executor, model.predictor.submit_each,
                                                 [i.text for i in items], self.top_k)
        except Exception:  # noqa: BLE001 - e.g. one bad text: _forward isolates it
            return False
        self.forward_passes += len(items)  # one pass per text
        self.texts += len(items)
        if self.metrics is not None:
            self.metrics.observe_batch(len(items), passes=len(items))

        def deliver(item: _Item, done: Any) -> None:
            self._streaming.discard(item)
            if item.future.done():
                return
            error = done.exception()
            if error is not None:
                item.future.set_exception(error)
                return
            answer = model.answer(done.result())
            if self.metrics is not None and answer["fallback"]:
                self.metrics.observe_out_of_scope(1)
            item.future.set_result(answer)

        def hand_back(item: _Item, done: Any) -> None:  # on a lane thread
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown: the item already has its 503
                loop.call_soon_threadsafe(deliver, item, done)

        for item, future in zip(items, futures):
            self._streaming.add(item)
            future.add_done_callback(lambda done, item=item: hand_back(item, done))
        # Keep the lanes fed, not flooded: come back for the next group when about one text per lane is
        # left, so that group holds everything that arrived meanwhile (fewer, larger tokenizer calls).
        lanes = max(1, int(getattr(model.predictor, "lanes", 1)))
        if len(futures) > lanes:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(futures[-lanes - 1])
        return True

    def _forward(self, model: LoadedModel, texts: list[str]) -> list[Any]:
        """Runs in the worker thread. One bad text must not fail its neighbours: retry one by one."""
        try:
            predictions = model.predictor.predict(texts, top_k=self.top_k, batch_size=len(texts))
            return [model.answer(p) for p in predictions]
        except Exception:
            if len(texts) == 1:
                raise
        outcomes: list[Any] = []
        for text in texts:
            try:
                outcomes.append(model.answer(model.predictor.predict([text], top_k=self.top_k)[0]))
            except Exception as exc:  # noqa: BLE001
                outcomes.append(exc)
        return outcomes


# ---------------------------------------------------------------------------------------- API models
def _non_blank(value: str) -> str:
    if not clean_text(value):
        raise PydanticCustomError("blank_text", "text is empty or only whitespace/control characters")
    return value


# A JSON string (never a number or null) that is not blank once cleaned like the training data.
Text = Annotated[StrictStr, AfterValidator(_non_blank)]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "¿a qué hora es el desayuno?"}]})

    text: Text = Field(description="The guest's message (non-empty; at most max_text_length characters).")


class BatchClassifyRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"texts": ["hola", "¿cuál es la clave del wifi?"]}]})

    texts: list[Text] = Field(min_length=1, description="1 to max_batch_size non-empty messages.")


class ReplyRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "¿a qué hora cierra la piscina?"}]})

    text: Text = Field(description="The guest's message (non-empty; at most max_text_length characters).")


class SearchRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"query": "¿aceptan perros?", "top_k": 3}]})

    query: Text = Field(description="The guest's question (non-empty; at most max_text_length characters).")
    top_k: int = Field(5, ge=1, le=50, description="How many ranked chunks to return.")


class SearchHitModel(BaseModel):
    rank: int
    score: float = Field(description="Cosine similarity of the query and the chunk.")
    id: str
    doc: str = Field(description="Source file, relative to the documents folder.")
    heading: str
    headings: list[str]
    start: int = Field(description="Character offset of the chunk in the original file.")
    end: int
    text: str


class SearchResults(BaseModel):
    model_version: str
    query: str
    results: list[SearchHitModel]


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"texts": ["Soy Ana, de la 305: llegamos el 15/08"]}]})

    texts: list[Text] = Field(min_length=1, description="1 to max_batch_size non-empty messages.")


class Entity(BaseModel):
    type: str
    text: str = Field(description="text[start:end] of the message as sent")
    start: int
    end: int
    confidence: float = Field(description="Mean probability of the entity's tokens' tags.")


class Sentiment(BaseModel):
    label: str = Field(description="positive, neutral or negative")
    confidence: float


class RankedIntent(BaseModel):
    intent: str
    confidence: float


class Classification(BaseModel):
    intent: str = Field(description=f"The predicted intent, or {OUT_OF_SCOPE!r} below the version's threshold.")
    confidence: float = Field(description="The model's confidence in its top-ranked intent.")
    top_k: list[RankedIntent] = Field(description="The model's ranking (unchanged by the fallback).")
    model_version: str
    fallback: bool = Field(description="True when the out-of-scope threshold replaced the intent.")


class BatchClassification(BaseModel):
    model_version: str
    predictions: list[Classification]


class Analysis(BaseModel):
    text: str
    intent: str | None = Field(description="As /classify; null when the version has no intent classifier.")
    confidence: float | None
    top_k: list[RankedIntent]
    fallback: bool | None
    entities: list[Entity] = Field(description="[] when the version has no entity model.")
    sentiment: Sentiment | None = Field(description="null when the version has no sentiment model.")


class BatchAnalysis(BaseModel):
    model_version: str
    predictions: list[Analysis]


class Readiness(BaseModel):
    ready: bool
    model_version: str | None = None
    out_of_scope_threshold: float | None = None
    last_load_error: str | None = Field(None, description="Why the newest deploy is not served (old model kept).")


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (413, "A text or the batch is over the server's limit"),
        (422, "Missing, empty or non-string text; body is not JSON"),
        (503, "No model is loaded: train and deploy one"),
    )
}


def _json(document: Any) -> Response:
    """Answers are built by us in the declared shape: serialise them directly (orjson), skipping
    FastAPI's re-validation of the response model, which costs more than the rest of the request."""
    return Response(orjson.dumps(document), media_type="application/json")


def _error(status: int, message: str, detail: Any = None, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status, headers=dict(headers or {}))


# ---------------------------------------------------------------------------------------- middleware
class _MetricsMiddleware:
    """Pure ASGI: count and time every HTTP request; refuse oversized bodies before they are read."""

    def __init__(self, app: Any, metrics: Metrics, max_body_bytes: int, post_paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.post_paths = post_paths

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = _content_length(scope)
            if length is not None and length > self.max_body_bytes:
                response = _error(413, "request body too large",
                                  f"{length} bytes; the limit is {self.max_body_bytes}", {"Connection": "close"})
                await response(scope, receive, send_status)
                return
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or (scope["path"] if scope["path"] in self.post_paths
                                                        else "unmatched")
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------------------------------- the app
def create_app(registry: ModelRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The prediction server for ``registry``'s deployed version (see the module docstring)."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    holder = ModelHolder(registry, settings, metrics)
    batcher = MicroBatcher(max_batch=settings.max_micro_batch, wait_s=settings.batch_wait_ms / 1000.0,
                           top_k=settings.top_k, metrics=metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(holder.refresh)
        if holder.model is None and holder.last_error is None:
            logger.warning("no version is deployed in %s: serving without a model (%s)", registry.root,
                           TRAIN_AND_DEPLOY)
        batcher.start()
        watcher = (asyncio.get_running_loop().create_task(_watch(holder, settings.watch_interval_s),
                                                          name="hotelbot-model-watcher")
                   if settings.watch_interval_s > 0 else None)
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await batcher.stop()

    app = FastAPI(
        title="hotelbot",
        version=__version__,
        description="Intent classification for a Spanish-speaking hotel chatbot. Serves the registry's "
                    "deployed version and follows deploys and rollbacks without a restart.",
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.models = holder
    app.state.batcher = batcher
    app.add_middleware(_MetricsMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       post_paths=frozenset({"/classify", "/classify/batch", "/search", "/analyze", "/reply"}))

    # What each endpoint needs from the loaded version, and the 503 it answers when the part is missing
    # ("{version}" is filled in).
    needs = {
        "predictor": ("no classifier", "version {version} holds only a knowledge base; train a classifier "
                      "(hotelbot train) and deploy it"),
        "analyzer": ("nothing to analyze with", "version {version} has no classifier, entity or sentiment model"),
        "knowledge": ("no knowledge base", "version {version} has none: run `hotelbot prepare --documents DIR`, "
                      "`hotelbot train --model-type embeddings`, then deploy"),
        "responder": ("no response generator", "version {version} has none: run `hotelbot train --model-type "
                      "generator`, then deploy"),
    }

    def require_model(part: str = "predictor") -> LoadedModel:
        model = holder.model
        if model is None:
            raise holder.unavailable()
        if getattr(model, part) is None:
            title, detail = needs[part]
            raise ServeError(503, title, detail.format(version=model.version))
        return model

    def check_length(text: str, where: str) -> None:
        if len(text) > settings.max_text_length:
            raise ServeError(413, "text too long",
                             f"{where} has {len(text)} characters; the limit is {settings.max_text_length}")

    @app.get("/health", tags=["probes"], summary="The process is up (always 200)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["probes"], response_model=Readiness, summary="200 when a model is loaded, else 503",
             responses={503: {"model": ErrorBody, "description": "No model is loaded"}})
    async def ready() -> Any:
        model = holder.model
        if model is None:
            problem = holder.unavailable()
            return JSONResponse({"ready": False, "model_version": None, "error": problem.message,
                                 "detail": problem.detail}, status_code=503)
        return {"ready": True, "model_version": model.version, "out_of_scope_threshold": model.threshold,
                "last_load_error": holder.last_error}

    @app.post("/classify", tags=["classify"], response_model=Classification, responses=ERROR_RESPONSES,
              summary="Classify one message")
    async def classify(body: ClassifyRequest) -> Any:
        check_length(body.text, "text")
        model = require_model()
        (answer,) = await batcher.classify(model, [body.text])
        return _json(answer)

    @app.post("/classify/batch", tags=["classify"], response_model=BatchClassification,
              responses=ERROR_RESPONSES, summary="Classify many messages with one model version")
    async def classify_batch(body: BatchClassifyRequest) -> Any:
        if len(body.texts) > settings.max_batch_size:
            raise ServeError(413, "batch too large",
                             f"{len(body.texts)} texts; the limit is {settings.max_batch_size}")
        for i, text in enumerate(body.texts):
            check_length(text, f"texts[{i}]")
        model = require_model()
        answers = await batcher.classify(model, body.texts)
        return _json({"model_version": model.version, "predictions": answers})

    @app.post("/analyze", tags=["analyze"], response_model=BatchAnalysis, responses=ERROR_RESPONSES,
              summary="Intent, entities and sentiment of messages, with one model version")
    async def analyze(body: AnalyzeRequest) -> Any:
        if len(body.texts) > settings.max_batch_size:
            raise ServeError(413, "batch too large", f"{len(body.texts)} texts; the limit is {settings.max_batch_size}")
        for i, text in enumerate(body.texts):
            check_length(text, f"texts[{i}]")
        model = require_model("analyzer")
        answers = await batcher.run(model.analyzer.analyze, body.texts, settings.top_k)
        return _json({"model_version": model.version, "predictions": answers})

    @app.post("/search", tags=["search"], response_model=SearchResults, responses=ERROR_RESPONSES,
              summary="Search the hotel knowledge base of the deployed version")
    async def search(body: SearchRequest) -> Any:
        check_length(body.query, "query")
        model = require_model("knowledge")
        hits = await asyncio.to_thread(model.knowledge.search, body.query, body.top_k)
        return _json({"model_version": model.version, "query": body.query, "results": [h.to_dict() for h in hits]})

    @app.post("/reply", tags=["reply"], responses=ERROR_RESPONSES, summary="Answer a guest message")
    async def reply(body: ReplyRequest) -> Any:
        check_length(body.text, "text")
        model = require_model("responder")
        (answer,) = await asyncio.to_thread(model.responder.reply, [body.text])
        return _json({"reply": answer["reply"], "sources": answer.get("sources", []), "model_version": model.version})

    @app.get("/metrics", tags=["probes"], response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus_metrics() -> PlainTextResponse:
        model = holder.model
        recheck = getattr(model.predictor, "recheck", None) if model is not None else None
        return PlainTextResponse(metrics.render(recheck), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return _error(exc.status_code, exc.message, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
                  for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in detail):
            message = "request body is not valid JSON"
        elif detail:
            where = ".".join(p for p in detail[0]["loc"] if p != "body") or "body"
            message = f"invalid request: {where}: {detail[0]['msg']}"
        else:
            message = "invalid request"
        return _error(422, message, detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(404, "not found", f"no route {request.method} {request.url.path}; see /docs", exc.headers)
        if exc.status_code == 405:
            return _error(405, "method not allowed", f"{request.method} is not allowed on {request.url.path}",
                          exc.headers)
        return _error(exc.status_code, str(exc.detail), None, exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error", type(exc).__name__)

    return app


def app_factory() -> FastAPI:
    """Build the app from the environment: for ``uvicorn --factory`` and ``hotelbot serve --workers N``.

    The registry root comes from HOTELBOT_REGISTRY (or the config file) through ``load_settings``; the
    server limits from the HOTELBOT_SERVE_* variables (see ``ENV_SERVE``).
    """
    from .config import load_settings

    settings = load_settings()
    return create_app(ModelRegistry(settings.paths.registry), ServeSettings.from_env())


def serve(registry_root: Path, settings: ServeSettings | None = None, *, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, workers: int = 1, access_log: bool = False, log_level: str = "info") -> None:
    """Run the server until interrupted. ``workers > 1`` starts that many processes, each with its own
    model; they get the registry and limits through HOTELBOT_REGISTRY and HOTELBOT_SERVE_*."""
    import uvicorn

    settings = settings or ServeSettings()
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    root = Path(registry_root).resolve()
    # uvicorn's own log format, plus this module's messages (model loads, swaps, failed loads).
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"][__name__] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    common: dict[str, Any] = {"host": host, "port": port, "access_log": access_log, "log_level": log_level,
                              "log_config": log_config, "timeout_graceful_shutdown": 30}
    if workers == 1:
        uvicorn.run(create_app(ModelRegistry(root), settings), **common)
        return
    # Each worker is a separate process: split the cores between them unless told otherwise.
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // workers)
    os.environ.update(settings.merged({"torch_threads": threads}, source="serve").to_env())
    os.environ.setdefault("HOTELBOT_ONNX_THREADS", str(threads))  # the same share for onnxruntime
    os.environ["HOTELBOT_REGISTRY"] = str(root)
    uvicorn.run(f"{__name__}:app_factory", factory=True, workers=workers, **common)
