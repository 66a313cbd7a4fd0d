"""Which runtime a version serves with: the one its ``model/runtime.json`` names (written by the export,
which measured every runtime and chose with :func:`choose_runtime`), unless ``HOTELBOT_RUNTIME`` asks for
another (:func:`requested_runtime`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError
from .layout import ONNX_FP32, ONNX_INT8, RUNTIME_FILE, RUNTIMES, TORCH

RUNTIME_ENV = "HOTELBOT_RUNTIME"
RUNTIME_FORMAT = "hotelbot-runtime/1"
DEFAULT_TOLERANCE_POINTS = 0.5
SPEED_TIE = 0.10  # latencies within 10 % of the fastest count as equally fast


def requested_runtime(explicit: str | None = None) -> str | None:
    """The runtime asked for by ``explicit`` or ``HOTELBOT_RUNTIME`` (None: use what the version says)."""
    value = explicit if explicit else os.environ.get(RUNTIME_ENV, "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in RUNTIMES:
        raise ConfigError(f"{RUNTIME_ENV} must be one of {', '.join(RUNTIMES)} (or auto), got {value!r}")
    return value


def read_runtime_spec(model_dir: Path) -> dict[str, Any] | None:
    """``model/runtime.json`` as a dict, or None when the version has no ONNX export."""
    try:
        spec = json.loads((Path(model_dir) / RUNTIME_FILE).read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{Path(model_dir) / RUNTIME_FILE} is unreadable: {exc}") from None
    if not isinstance(spec, dict) or spec.get("runtime") not in RUNTIMES:
        raise ModelError(f"{Path(model_dir) / RUNTIME_FILE} names no known runtime")
    return spec


def choose_runtime(measurements: dict[str, dict[str, Any]], tolerance_points: float = DEFAULT_TOLERANCE_POINTS) -> str:
    """The fastest runtime whose accuracy is within ``tolerance_points`` (percentage points) of torch's.

    ``measurements[name]`` holds ``accuracy`` (0..1 or None), ``latency_ms_p50`` and optionally
    ``usable`` (False: never chosen, e.g. an fp32 export that does not reproduce PyTorch). Torch is the
    reference and always qualifies. Without a torch accuracy (no validation data), only the numerically
    checked fp32 export can replace torch: int8 changes predictions, and nothing measured says by how much.
    """
    if tolerance_points < 0:
        raise ConfigError(f"tolerance_points must be >= 0, got {tolerance_points}")
    candidates = [TORCH] + [name for name in (ONNX_FP32, ONNX_INT8) if _qualifies(measurements, name, tolerance_points)]

    def speed(name: str) -> float:
        value = (measurements.get(name) or {}).get("latency_ms_p50")
        return float("inf") if value is None else float(value)

    # Latencies within SPEED_TIE of the fastest are a tie (timing noise on a shared machine): the
    # smaller model (int8, then fp32) wins it: less memory, faster to load.
    fastest = min(speed(n) for n in candidates)
    order = {ONNX_INT8: 0, ONNX_FP32: 1, TORCH: 2}
    return min((n for n in candidates if speed(n) <= fastest * (1.0 + SPEED_TIE)), key=lambda n: (order[n], speed(n)))


def _qualifies(measurements: dict[str, dict[str, Any]], name: str, tolerance_points: float) -> bool:
    """Whether runtime ``name`` may replace torch: usable, and its accuracy within the gate (see choose_runtime).

    Also the export's test of int8 alone (export.onnx calls it through this module, so that one patch of
    ``selection._qualifies`` reaches both)."""
    reference = (measurements.get(TORCH) or {}).get("accuracy")
    m = measurements.get(name)
    if not m or m.get("usable") is False:
        return False
    if reference is None or m.get("accuracy") is None:
        return name == ONNX_FP32 and reference is None
    return 100.0 * (reference - m["accuracy"]) <= tolerance_points + 1e-9


def describe_choice(spec: dict[str, Any]) -> str:
    """One line on the runtime a version got, and why int8 was not chosen when it was not (its accuracy
    against torch's and the gate), since that decides how fast `serve` is."""
    runtimes = spec.get("runtimes") or {}
    chosen = spec.get("runtime") or TORCH
    torch_acc = (runtimes.get(TORCH) or {}).get("accuracy")

    def delta(name: str) -> str:
        acc = (runtimes.get(name) or {}).get("accuracy")
        return "" if acc is None or torch_acc is None else f"{100 * (acc - torch_acc):+.2f} points vs torch"

    facts = []
    ms = (runtimes.get(chosen) or {}).get("latency_ms_p50")
    if ms is not None:
        facts.append(f"{ms:.1f} ms per text")
    if chosen != TORCH and delta(chosen):
        facts.append(delta(chosen))
    recheck = (runtimes.get(chosen) or {}).get("recheck") if chosen == ONNX_INT8 else None
    if recheck and recheck.get("rate") is not None:
        facts.append(f"{100 * recheck['rate']:.1f}% of validation texts were close calls re-run on fp32")
    line = f"runtime {chosen}" + (f" ({', '.join(facts)})" if facts else "")
    int8 = runtimes.get(ONNX_INT8)
    if chosen != ONNX_INT8 and int8 and int8.get("accuracy") is not None and torch_acc is not None:
        line += (
            f"; int8 was {delta(ONNX_INT8)}, outside the {spec.get('tolerance_points')}-point gate, so serve "
            f"runs {chosen} (slower); HOTELBOT_RUNTIME_TOLERANCE widens the gate"
        )
    return line
