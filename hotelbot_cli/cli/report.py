"""hotelbot report"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ..registry import ModelRegistry
from ._errors import handle_errors
from ._options import RegistryOpt, settings_from
from ._render import message, print_json


class ReportFormat(str, Enum):
    html = "html"
    md = "md"
    json = "json"


@handle_errors
def report_cmd(
    version: Annotated[
        Optional[str],
        typer.Argument(
            help="Version to report on (v0003, latest, deployed, previous) "
            "[env: MODEL_VERSION; default: deployed, else newest].",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        ReportFormat,
        typer.Option(
            "--format",
            "-f",
            help="html (one self-contained file), md (plus a <name>_figures/ folder of PNGs) or json.",
            case_sensitive=False,
        ),
    ] = ReportFormat.html,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="File to write [default: "
            "reports/training_reports/VERSION/report.EXT; with --format json "
            "and no --output the JSON goes to stdout].",
            show_default=False,
        ),
    ] = None,
    previous: Annotated[
        int,
        typer.Option(
            "--previous", min=0, help="How many earlier versions to compare with (the deployed one is always included)."
        ),
    ] = 3,
    no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip timing single-text predictions.")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Write a readable report on a version: data, training curves, confusion matrix, per-intent results,
    confidence, resource usage, latency and size, comparison with the deployed and previous versions,
    and recommendations.

    The HTML is one self-contained file (plots embedded, nothing fetched), good to attach to a ticket.
    Paths of written files are printed on stderr.

    Examples:

        hotelbot report

        hotelbot report v0003 --previous 5

        hotelbot report latest --format md --output docs/model-report.md

        hotelbot report --format json | jq '.recommendations'
    """
    # loads the component table: kept off `hotelbot --help`'s path
    from ..reporting import (
        build_report,
        training_report_dir,
        write_report,
    )

    settings = settings_from(registry=registry)
    store = ModelRegistry(settings.paths.registry)
    name = store.resolve(version or settings.model_version).name
    message(f"building the report of {name}...")
    report = build_report(
        store,
        name,
        previous_n=previous,
        measure_latency=not no_latency,
        figures=fmt is not ReportFormat.json,
        min_score=settings.validation.min_validation_score,
    )
    for note in report.notes:
        message(f"note: {note}")
    if fmt is ReportFormat.json and output is None:
        print_json(report.to_dict())
        message(f"report of {report.version} printed to stdout (JSON)")
        return
    target = output or training_report_dir(settings.paths.reports, report.version) / f"report.{fmt.value}"
    written = write_report(report, fmt.value, target)
    message(f"wrote {written[0]}")
    if len(written) > 1:
        message(f"wrote {len(written) - 1} figure(s) to {written[1].parent}")
