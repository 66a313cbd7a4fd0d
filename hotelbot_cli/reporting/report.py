"""The report document: :class:`Report` (plain data, one attribute per section), its JSON form and the
constants every part of the package agrees on (sections, metric keys, decimals)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


SCHEMA_VERSION = 1

# (id used in HTML anchors and Markdown, title). The JSON key is the id with "-" -> "_".
SECTIONS: tuple[tuple[str, str], ...] = (
    ("data", "Data"),
    ("training", "Training curves"),
    ("confusion", "Confusion matrix"),
    ("per-intent", "Per-intent results"),
    ("confidence", "Confidence"),
    ("resources", "Resource usage"),
    ("performance", "Training time, latency and size"),
    ("comparison", "Comparison with other versions"),
    ("recommendations", "Recommendations"),
)
SECTION_KEYS = tuple(sid.replace("-", "_") for sid, _ in SECTIONS)

METRIC_DIGITS = 4  # every metric is rendered with this many decimals in HTML and Markdown
OVERALL_KEYS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_f1",
    "overall_score",
    "in_scope_accuracy",
    "out_of_scope_recall",
)
SYSTEM_SERIES = {
    "system/cpu_percent": "CPU %",
    "system/ram_used_mb": "RAM used (MB)",
    "system/ram_percent": "RAM %",
    "system/process_rss_mb": "process RSS (MB)",
}


@dataclass
class Report:
    """Everything a report shows; ``to_dict`` is the JSON document (figures by name only)."""

    version: str
    generated_at: str
    source: str
    headline: dict[str, Any]
    data: dict[str, Any]
    training: dict[str, Any]
    confusion: dict[str, Any]
    per_intent: list[dict[str, Any]]
    confidence: dict[str, Any]
    resources: dict[str, Any]
    performance: dict[str, Any]
    comparison: dict[str, Any]
    recommendations: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    mlflow: dict[str, Any] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)  # entities / sentiment (other_components.component_report)
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)

    def section(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "version": self.version,
            "generated_at": self.generated_at,
            "source": self.source,
            "headline": self.headline,
        }
        for key in SECTION_KEYS:
            doc[key] = self.section(key)
        doc["components"] = self.components
        doc["notes"] = list(self.notes)
        doc["mlflow"] = self.mlflow
        doc["figures"] = sorted(self.figures)
        return _jsonable(doc)


def _jsonable(value: Any) -> Any:
    """Plain JSON types only: numpy scalars -> Python, NaN/inf -> None, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalar
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return str(value)


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), ensure_ascii=False, indent=2, allow_nan=False) + "\n"
