"""Prometheus text for ``/metrics``.

- :class:`Metrics` (hand-written, per process): request counts and latency per endpoint, the loaded model
  version, micro-batch sizes, forward passes, swaps and failed loads.
- :class:`VersionMetrics` (prometheus_client): the live figures of each model version that answers
  (``hotelbot_version_*``: requests, errors, latency, answers, out-of-scope fallbacks, confidence, intents),
  which a canary is judged by. Under ``serve --workers N`` they use prometheus_client's multiprocess mode
  (``PROMETHEUS_MULTIPROC_DIR``, which ``serve`` sets up): every worker writes its own file and a scrape of
  any worker returns the sums over all of them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
from typing import Any, Iterator, Mapping, Sequence


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

    Written by hand: each worker reports its own figures (what a scraper with one target per process
    expects). The per-version figures that must add up over workers are :class:`VersionMetrics`'.
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
        self.versions = VersionMetrics()  # per model version, summed over workers (see the module docstring)
        self.references: dict[str, Any] = {}  # version -> its validation split's intents (serving.drift)

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
            lines += [
                "# HELP hotelbot_int8_rechecks_total int8 answers that were close calls, re-run on fp32 "
                "(since the model was loaded).",
                "# TYPE hotelbot_int8_rechecks_total counter",
                f"hotelbot_int8_rechecks_total {recheck.rerun}",
                "# HELP hotelbot_int8_texts_total Texts answered by the int8 model (since it was loaded).",
                "# TYPE hotelbot_int8_texts_total counter",
                f"hotelbot_int8_texts_total {recheck.checked}",
            ]
        try:
            versions = self.versions.render(self.references)
        except Exception as exc:  # noqa: BLE001 - e.g. the multiprocess directory removed: the rest still renders
            versions = f"# per-version metrics unavailable: {type(exc).__name__}: {exc}\n".replace("\n", " ") + "\n"
        return "\n".join(lines) + "\n" + versions


MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
PROMETHEUS_FILE = re.compile(r"^(counter|histogram|summary|gauge_[a-z]+)_\d+\.db$")
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class VersionMetrics:
    """Per model version live metrics with prometheus_client, on a registry of its own (not the library's
    process-global default, so that every app built in one process starts from zero); in multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported, as ``serve --workers N`` does)
    the values live in that directory's per-process files and :meth:`render` sums every worker's."""

    def __init__(self) -> None:
        import os

        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics  # serve only

        disable_created_metrics()  # no *_created series: half the text, nothing a dashboard reads
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        self._failed = False
        self.registry = CollectorRegistry()
        labels = ("model_version",)
        common: dict[str, Any] = {"registry": None if self.multiprocess else self.registry}
        self.requests = Counter(
            "hotelbot_version_requests",
            "Requests answered by a model version, by endpoint and status.",
            labels + ("endpoint", "status"),
            **common,
        )
        self.errors = Counter(
            "hotelbot_version_errors", "Requests a model version failed (status 5xx).", labels + ("endpoint",), **common
        )
        self.latency = Histogram(
            "hotelbot_version_request_duration_seconds",
            "Request time by model version.",
            labels + ("endpoint",),
            buckets=Metrics.LATENCY_BUCKETS,
            **common,
        )
        self.answers = Counter("hotelbot_version_answers", "Messages classified by a model version.", labels, **common)
        self.fallbacks = Counter(
            "hotelbot_version_fallbacks",
            "Answers its out-of-scope detector turned into out_of_scope.",
            labels,
            **common,
        )
        self.confidence = Histogram(
            "hotelbot_version_confidence", "The top intent's confidence.", labels, buckets=CONFIDENCE_BUCKETS, **common
        )
        self.intents = Counter(
            "hotelbot_version_intents", "Answers by intent (out_of_scope included).", labels + ("intent",), **common
        )

    def observe_request(self, version: str, endpoint: str, status: int, seconds: float) -> None:
        with self._guard():
            self.requests.labels(version, endpoint, str(status)).inc()
            if status >= 500:
                self.errors.labels(version, endpoint).inc()
            self.latency.labels(version, endpoint).observe(seconds)

    def observe_answer(self, version: str, intent: str | None, confidence: float | None, fallback: bool) -> None:
        if intent is None:
            return
        with self._guard():
            self.answers.labels(version).inc()
            if fallback:
                self.fallbacks.labels(version).inc()
            if confidence is not None:
                self.confidence.labels(version).observe(float(confidence))
            self.intents.labels(version, intent).inc()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """A metric that cannot be written (e.g. the multiprocess directory removed under a running server) is
        logged once and skipped: counting must never fail or delay an answer."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - metrics are best effort
            if not self._failed:
                self._failed = True
                logging.getLogger(__name__).error("per-version metrics cannot be written (%s); answers go on", exc)

    def _collected(self) -> Any:
        """The registry to read: this app's, or (multiprocess) one merging every worker's files."""
        if not self.multiprocess:
            return self.registry
        from prometheus_client import CollectorRegistry, multiprocess  # on use: serve only

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return merged

    def render(self, references: Mapping[str, Any] | None = None) -> str:
        """The counters and histograms; with ``references`` ({version: its validation reference}) also each
        version's drift gauges (serving.drift), computed from the same merged counters."""
        from prometheus_client import generate_latest  # on use: serve only

        text = generate_latest(self._collected()).decode("utf-8")
        if references:
            from .drift import gauge_lines  # drift imports nothing heavy, but metrics stays the leaf module

            text += "\n".join(gauge_lines(self.snapshot(), references)) + "\n"
        return text

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per version (summed over workers): {"requests", "errors", "answers", "fallbacks", "confidence_sum",
        "latency_buckets": [(upper bound, cumulative count), ...] over every endpoint} for the canary's judge."""
        out: dict[str, dict[str, Any]] = {}

        def entry(version: str) -> dict[str, Any]:
            return out.setdefault(
                version,
                {
                    "requests": 0.0,
                    "errors": 0.0,
                    "answers": 0.0,
                    "fallbacks": 0.0,
                    "confidence_sum": 0.0,
                    "latency_buckets": {},
                    "intents": {},
                },
            )

        names = {
            "hotelbot_version_requests_total": "requests",
            "hotelbot_version_errors_total": "errors",
            "hotelbot_version_answers_total": "answers",
            "hotelbot_version_fallbacks_total": "fallbacks",
            "hotelbot_version_confidence_sum": "confidence_sum",
        }
        for family in self._collected().collect():
            for sample in family.samples:
                version = sample.labels.get("model_version")
                if not version:
                    continue
                if sample.name in names:
                    entry(version)[names[sample.name]] += sample.value
                elif sample.name == "hotelbot_version_intents_total":
                    intents = entry(version)["intents"]
                    intents[sample.labels["intent"]] = intents.get(sample.labels["intent"], 0.0) + sample.value
                elif sample.name == "hotelbot_version_request_duration_seconds_bucket":
                    bound = float(sample.labels["le"])
                    buckets = entry(version)["latency_buckets"]
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
        for figures in out.values():
            figures["latency_buckets"] = sorted(figures["latency_buckets"].items())
        return out


def prepare_multiprocess_dir() -> tuple[str, bool]:
    """For ``serve --workers N``: the directory of prometheus_client's multiprocess files, emptied of an earlier
    run's (its counters would carry over): ``PROMETHEUS_MULTIPROC_DIR`` when set, else a new temporary one;
    (path, whether it was created here, so the caller removes it after the run)."""
    import os
    import tempfile
    from pathlib import Path

    given = os.environ.get(MULTIPROCESS_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):  # prometheus_client's own files only (counter_<pid>.db, ...)
            if PROMETHEUS_FILE.match(stale.name):
                stale.unlink(missing_ok=True)
        return given, False
    return tempfile.mkdtemp(prefix="hotelbot-metrics-"), True
