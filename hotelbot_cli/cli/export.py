"""hotelbot export"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ..registry import ModelRegistry
from ._errors import handle_errors
from ._options import JsonOpt, RegistryOpt, settings_from
from ._render import message, out, print_json


class ExportFormat(str, Enum):
    pt = "pt"
    hf = "hf"
    onnx = "onnx"


def _size(n: float) -> str:  # a byte count (int), divided down as it goes
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # not reached


@handle_errors
def export_cmd(
    version: Annotated[
        str,
        typer.Argument(
            help="Version to export: a name (v0003) or latest, deployed (current), previous.", show_default=False
        ),
    ],
    output: Annotated[
        Path, typer.Argument(help="Directory to write (created; must be empty unless --force).", show_default=False)
    ],
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="pt (the seed's intent_classifier.pt), hf (a "
            "Hugging Face directory per component) or onnx (the runtime files).",
            case_sensitive=False,
            show_default=False,
        ),
    ],
    component: Annotated[
        Optional[list[str]],
        typer.Option(
            "--component",
            metavar="NAME",
            help="Export only this component (repeatable) [default: every one the format has].",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a non-empty DIR, once the new export is complete.")
    ] = False,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a version's models in formats for the outside world, after checking its checksums.

    pt: DIR/intent_classifier.pt, the seed's self-contained file (torch.load(path, weights_only=True)).
    hf: DIR/<component>/ per component with a transformer: config.json, model.safetensors and tokenizer
    files (AutoConfig, AutoModel, AutoTokenizer load it), the head, and a README.md saying how to compute
    the answer. onnx: DIR/<component>/ with the ONNX graphs and their data, tokenizer, classifier.json and
    runtime.json. Components a format does not cover are listed as skipped. DIR/export.json records what
    was exported and every file's sha256. The export appears complete or not at all; a corrupt version is
    refused (exit 1) and nothing is written.

    Examples:

        hotelbot export current --format pt exports/pt

        hotelbot export v0003 --format hf exports/v0003-hf

        hotelbot export latest --format hf --component classifier exports/classifier --force

        hotelbot export v0003 --format onnx exports/v0003-onnx --json
    """
    from ..pipeline.export import export_version  # loads the component table: kept off `hotelbot --help`'s path

    settings = settings_from(registry=registry)
    if not json_out:
        message(f"exporting {version} as {fmt.value} to {output}...")
    result = export_version(
        ModelRegistry(settings.paths.registry), settings, version, fmt.value, output, force=force, components=component
    )
    if json_out:
        print_json(result.to_dict())
        return
    for item in result.components:
        out.print(
            f"{item['component']:<11} {result.output / item['path'] if item['path'] != '.' else result.output}"
            f"  ({len(item['files'])} files, {_size(item['size_bytes'])}): {item['loads_with']}"
        )
    for item in result.skipped:
        out.print(f"{item['component']:<11} skipped: {item['reason']}")
    replaced = " (replaced its previous content)" if result.replaced else ""
    message(
        f"exported {result.version} as {result.format} to {result.output}{replaced}: {result.files} files, "
        f"{_size(result.size_bytes)} in {result.seconds:.1f}s (record: {result.to_dict()['record']})"
    )
