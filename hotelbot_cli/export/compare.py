"""Measuring runtimes against each other: accuracy, single-text latency (the export's runtime choice),
and :func:`compare_runtimes` (``hotelbot validate``: a published version's int8 against its fp32).

numpy is imported inside the functions that use it (see export.graph).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from ..registry import VersionInfo
from ..runtime.layout import MODEL_SUBDIR, ONNX_FILES, ONNX_FP32, ONNX_INT8, TORCH
from ..runtime.onnx import OnnxPredictor
from ..runtime.reference import TorchPredictor
from ..runtime.selection import DEFAULT_TOLERANCE_POINTS, read_runtime_spec
from .graph import PROBE_TEXTS


def _accuracy(labels: list[str], truth: list[str]) -> float | None:
    return sum(p == t for p, t in zip(labels, truth)) / len(truth) if truth else None


def _latencies_ms(
    predictors: dict[str, Any], texts: Sequence[str], runs: int, block: int = 10
) -> dict[str, dict[str, float]]:
    """Single-text ``predict`` latency (tokenize + forward + top-k) of each predictor.

    Measured in alternating blocks of ``block`` calls, so that load from other processes hits every
    runtime alike; the first call of each block is not timed (onnxruntime's worker threads keep
    spinning for a moment after a run and would slow whichever runtime comes next).
    """
    import numpy as np  # imported on use (module docstring)

    texts = list(texts) or list(PROBE_TEXTS)
    for predictor in predictors.values():
        for text in texts[:2]:
            predictor.predict([text])
    times: dict[str, list[float]] = {name: [] for name in predictors}
    done = 0
    while done < max(1, runs):
        for name, predictor in predictors.items():
            for i in range(block + 1):
                text = texts[(done + i) % len(texts)]
                start = time.perf_counter()
                predictor.predict([text])
                if i:
                    times[name].append((time.perf_counter() - start) * 1000.0)
        done += block
    return {
        name: {
            "latency_ms_p50": round(float(np.percentile(t, 50)), 3),
            "latency_ms_p90": round(float(np.percentile(t, 90)), 3),
        }
        for name, t in times.items()
    }


def compare_runtimes(
    info: VersionInfo, examples: Sequence[Any], *, include_torch: bool = False, tolerance_points: float | None = None
) -> dict[str, Any]:
    """Accuracy of the version's ONNX fp32 and int8 models (and torch with ``include_torch``) on
    ``examples`` (.text/.intent), the int8 - fp32 difference in points, and whether int8 is within the
    tolerance (default: the one recorded at export). For ``hotelbot validate``; does not write anything.
    """
    model_dir = info.path / MODEL_SUBDIR
    spec = read_runtime_spec(model_dir)
    texts = [e.text for e in examples]
    truth = [e.intent for e in examples]
    tolerance = float(
        tolerance_points
        if tolerance_points is not None
        else (spec or {}).get("tolerance_points", DEFAULT_TOLERANCE_POINTS)
    )
    result: dict[str, Any] = {
        "available": spec is not None,
        "runtime": (spec or {}).get("runtime", TORCH),
        "tolerance_points": tolerance,
        "examples": len(texts),
        "accuracy": {},
        "int8_minus_fp32_points": None,
        "int8_within_tolerance": None,
        "int8_agreement_with_fp32": None,
        "max_abs_prob_diff_int8_vs_fp32": None,
    }
    labels: dict[str, list[str]] = {}
    probs: dict[str, Any] = {}
    names = [n for n in ONNX_FILES if (model_dir / ONNX_FILES[n]).is_file()] if spec is not None else []
    for name in names:
        predictor = OnnxPredictor.from_model_dir(model_dir, name, info.name)
        probs[name] = predictor.probabilities(texts) if texts else None
        labels[name] = predictor.predict_labels(texts) if texts else []
        result["accuracy"][name] = _accuracy(labels[name], truth)
        if predictor.recheck is not None:
            # int8 as it serves (close calls re-run on fp32) above; int8 alone here, for comparison
            plain = predictor.with_recheck(None)
            labels["int8-alone"] = plain.predict_labels(texts) if texts else []
            result["int8_recheck"] = {
                "margin": predictor.recheck.margin,
                "rate": predictor.recheck.rate,
                "accuracy_without": _accuracy(labels["int8-alone"], truth),
            }
    if include_torch:
        torch_predictor = TorchPredictor.from_version(info)
        labels[TORCH] = torch_predictor.predict_labels(texts) if texts else []
        result["accuracy"][TORCH] = _accuracy(labels[TORCH], truth)
    fp32, int8 = result["accuracy"].get(ONNX_FP32), result["accuracy"].get(ONNX_INT8)
    if fp32 is not None and int8 is not None:
        import numpy as np  # imported on use (module docstring)

        delta = 100.0 * (int8 - fp32)
        result["int8_minus_fp32_points"] = round(delta, 4)
        result["int8_within_tolerance"] = -delta <= tolerance + 1e-9
        result["int8_agreement_with_fp32"] = _accuracy(labels[ONNX_INT8], labels[ONNX_FP32])
        if "int8-alone" in labels:
            result["int8_recheck"]["agreement_with_fp32_without"] = _accuracy(labels["int8-alone"], labels[ONNX_FP32])
        result["max_abs_prob_diff_int8_vs_fp32"] = round(float(np.abs(probs[ONNX_INT8] - probs[ONNX_FP32]).max()), 6)
    return result
