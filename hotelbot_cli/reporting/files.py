"""Where report files go and how they are written: formats, ``report.*`` in a directory (a published
version's training report, or a staging directory before publishing), one format to one path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from ..errors import ReportError
from ..registry import ModelRegistry, check_version_name
from .build import build_report
from .html import render_html
from .markdown import render_markdown
from .report import Report, render_json
from .tracking import log_report_artifacts

log = logging.getLogger("hotelbot.reporting")

TRAINING_REPORTS_DIR = "training_reports"
VALIDATION_REPORTS_DIR = "validation_reports"
REPORT_STEM = "report"
FORMATS = ("html", "md", "json")
EXTENSIONS = {"html": "html", "md": "md", "json": "json"}


def render(report: Report, fmt: str, figures_dir: str | None = None) -> str:
    if fmt == "html":
        return render_html(report)
    if fmt == "md":
        return render_markdown(report, figures_dir)
    if fmt == "json":
        return render_json(report)
    raise ReportError(f"unknown report format {fmt!r}: choose one of {', '.join(FORMATS)}")


def figures_dir_for(markdown_path: Path) -> Path:
    """Where the PNGs of a Markdown report live: ``<stem>_figures/`` next to it."""
    return markdown_path.with_name(f"{markdown_path.stem}_figures")


def write_report(report: Report, fmt: str, path: Path) -> list[Path]:
    """Write one format to ``path`` (atomically); Markdown also writes its PNGs. Returns the paths written."""
    path = Path(path)
    written = []
    try:
        if fmt == "md":
            fig_dir = figures_dir_for(path)
            for name, png in sorted(report.figures.items()):
                atomic_write_bytes(fig_dir / name, png)
                written.append(fig_dir / name)
            text = render_markdown(report, fig_dir.name if report.figures else None)
        else:
            text = render(report, fmt)
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot write the report to {path}: {exc.strerror or exc}") from None
    return [path, *written]


def write_report_files(report: Report, out_dir: Path) -> dict[str, Path]:
    """``report.html``, ``report.md`` (+ ``report_figures/*.png``) and ``report.json`` in ``out_dir``.

    Safe to call on a registry staging directory before publishing: only files below ``out_dir`` are
    written, so they become part of the version and its checksums.
    """
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for fmt in FORMATS:
        target = out_dir / f"{REPORT_STEM}.{EXTENSIONS[fmt]}"
        write_report(report, fmt, target)
        paths[fmt] = target
    if report.figures:
        paths["figures"] = figures_dir_for(out_dir / f"{REPORT_STEM}.md")
    return paths


def training_report_dir(reports_dir: Path, version: str) -> Path:
    return Path(reports_dir) / TRAINING_REPORTS_DIR / check_version_name(version)


def write_training_report(
    registry: ModelRegistry,
    version: str | None,
    reports_dir: Path,
    *,
    report: Report | None = None,
    log_artifact: bool = True,
    **build_options: Any,
) -> dict[str, Path]:
    """Build (unless ``report`` is given) and write ``reports_dir/training_reports/<version>/report.*``.

    The files are also logged as artifacts of the version's MLflow run; a failure there is logged and
    appended to ``report.notes``, never raised.
    """
    if report is None:
        report = build_report(registry, version, **build_options)
    elif version is not None and report.version != version:
        report.version = version  # a report built from a staged directory, now published under this name
        report.headline["version"] = version
    paths = write_report_files(report, training_report_dir(reports_dir, report.version))
    if log_artifact:
        problem = log_report_artifacts(report, paths)
        if problem:
            log.warning("%s", problem)
            report.notes.append(problem)
    return paths
