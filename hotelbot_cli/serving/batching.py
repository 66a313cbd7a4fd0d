"""The micro-batcher: concurrent /classify requests share forward passes, run in one model worker
thread so the event loop never blocks on torch (see :class:`MicroBatcher`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import ServeError
from .metrics import Metrics
from .models import LoadedModel


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

    def __init__(
        self, *, max_batch: int = 64, wait_s: float = 0.005, top_k: int = 3, metrics: Metrics | None = None
    ) -> None:
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
                    outcomes = await loop.run_in_executor(self._executor, self._forward, model, [i.text for i in items])
                except Exception as exc:  # noqa: BLE001 - delivered to the waiting requests
                    outcomes = [exc] * len(items)
                self.forward_passes += 1
                self.texts += len(items)
                if self.metrics is not None:
                    fallbacks = sum(1 for o in outcomes if isinstance(o, dict) and o["fallback"])
                    self.metrics.observe_batch(len(items), fallbacks)
                for item, outcome in zip(items, outcomes):
                    if not item.future.done():
                        if isinstance(outcome, BaseException):
                            item.future.set_exception(outcome)
                        else:
                            item.future.set_result(outcome)
                    self._observe(model, outcome)
        finally:
            self._inflight = []

    async def _stream(self, loop: asyncio.AbstractEventLoop, model: LoadedModel, items: list[_Item]) -> bool:
        """A predictor that answers texts independently (the int8 ONNX model on parallel lanes): tokenize
        the group at once, hand its texts to the lanes and return without waiting, so the next group forms
        while these run and each request is answered as soon as its own text is done (no batch barrier).
        False when the group could not be handed over (then it runs through :meth:`_forward`)."""
        try:
            futures = await loop.run_in_executor(
                self._executor, model.predictor.submit_each, [i.text for i in items], self.top_k
            )
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
            self._observe(model, answer)

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

    def _observe(self, model: LoadedModel, outcome: Any) -> None:
        """One answer in its version's live metrics (an exception is counted by its request's status)."""
        if self.metrics is not None and isinstance(outcome, dict):
            self.metrics.versions.observe_answer(
                model.version, outcome.get("intent"), outcome.get("confidence"), bool(outcome.get("fallback"))
            )  # never raises (see there)

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
