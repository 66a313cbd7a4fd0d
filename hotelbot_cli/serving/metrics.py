"""Prometheus text for ``/metrics``: request counts and latency per endpoint, model version, micro-batch
sizes, forward passes, swaps and failed loads (a hand-written registry: see :class:`Metrics`)."""

from __future__ import annotations

import math
import threading
from typing import Any, Sequence


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
