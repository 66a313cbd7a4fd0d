"""Training and validation reports people read: report data, plots, HTML / Markdown / JSON.

A :class:`Report` is plain data built from one version's files (``metrics.json``,
``training_history.json``, ``data/``, ``metadata.json``, the model itself for predictions and latency)
plus its MLflow run and the other versions of the registry. Renderers turn it into:

* one self-contained HTML file (plots are PNG ``data:`` URIs, inline CSS, nothing fetched),
* Markdown (plots written next to it in ``<stem>_figures/``),
* JSON (the same numbers; figure names instead of images).

Two ways in: :func:`build_report` for a published version and :func:`build_report_from_dir` for a
version still being built in the registry's staging directory (so the report can become part of the
immutable version). Nothing here prints; heavy libraries (torch, matplotlib, mlflow, scipy) are
imported inside the functions that need them. Metrics are always taken from ``metrics.json`` (the
version's own record); the model is run on the version's validation split only for what the record
does not hold: example misclassifications, confidences and latency.

Modules, each importing only those listed before it: ``report`` (the Report document, its JSON form,
the section list), ``formatting`` (number and text helpers of the renderers), ``other_components``
(entities / sentiment / knowledge / generator), ``advice`` (the recommendations: rules and their thresholds),
``tracking`` (the version's MLflow run: system metrics, artifacts), ``sections`` (each section's data),
``figures`` (matplotlib plots), ``build`` (run the model, assemble a Report), ``html``, ``markdown``,
``files`` (formats, paths, writing report files).
"""

from ..errors import ReportError
from .advice import recommendations
from .build import build_report, build_report_from_dir
from .files import (
    FORMATS,
    figures_dir_for,
    render,
    training_report_dir,
    write_report,
    write_report_files,
    write_training_report,
)
from .html import render_html
from .markdown import render_markdown
from .report import METRIC_DIGITS, SECTION_KEYS, SECTIONS, Report, render_json
from .sections import confusion_order
from .tracking import log_report_artifacts

__all__ = [
    "FORMATS",
    "SECTIONS",
    "SECTION_KEYS",
    "METRIC_DIGITS",
    "Report",
    "ReportError",
    "build_report",
    "build_report_from_dir",
    "render_html",
    "render_markdown",
    "render_json",
    "render",
    "write_report",
    "write_report_files",
    "write_training_report",
    "training_report_dir",
    "log_report_artifacts",
    "recommendations",
    "confusion_order",
    "figures_dir_for",
]
