"""Text helpers shared by the renderers and the recommendations: numbers, percentages, sizes, durations,
and the summary lines at the top of every report. Package-internal (underscore names)."""

from __future__ import annotations

import math
from typing import Any, Iterable

from .report import METRIC_DIGITS, OVERALL_KEYS, Report


def _f(value: Any, digits: int = METRIC_DIGITS) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _bytes(n: float | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _secs(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min ({value:.0f} s)"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.{METRIC_DIGITS}f}"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _errors_phrase(n: int) -> str:
    return {0: "No validation text is misclassified", 1: "1 validation text is misclassified"}.get(
        n, f"{n} validation texts are misclassified"
    )


def _pairs(items: Iterable[dict[str, Any]]) -> str:
    return ", ".join(f"{d['intent']} ({d['count']})" for d in items) or "-"


def _overall_rows(report: Report) -> list[tuple[str, str]]:
    h = report.headline
    rows = [(k, _f(h.get(k))) for k in OVERALL_KEYS if h.get(k) is not None]
    return rows


def _summary_lines(report: Report) -> list[str]:
    h = report.headline
    label = "staged build, not yet published" if report.version == "staged" else f"version {report.version}"
    lines = [
        label
        + (
            " (deployed)"
            if h["is_deployed"]
            else f" (deployed: {h['deployed_version']})"
            if h["deployed_version"]
            else " (nothing deployed)"
        ),
        f"base model: {h.get('base_model') or '-'}",
        f"created: {h.get('created_at') or '-'}; report generated {report.generated_at}",
        f"validation: {h.get('num_examples') or '-'} texts, {h.get('num_labels')} intents; "
        f"overall_score = {h.get('metric')}",
    ]
    if h.get("out_of_scope_threshold") is not None:
        lines.append(f"out_of_scope threshold: {h['out_of_scope_threshold']:.2f}")
    if str(h.get("out_of_scope_detector") or "").startswith("kNN"):  # softmax: the threshold line says it
        lines.append(f"out_of_scope detector: {h['out_of_scope_detector']}")
    if h.get("mlflow_run_id"):
        lines.append(f"MLflow run: {h['mlflow_run_id']}")
    return lines
