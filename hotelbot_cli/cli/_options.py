"""Options shared by several commands, and the settings they build."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from typing_extensions import Annotated

from ..config import Settings, load_settings

RegistryOpt = Annotated[
    Optional[Path],
    typer.Option("--registry", help="Registry root [env: HOTELBOT_REGISTRY; default: registry/].", show_default=False),
]
ConfigOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        "-c",
        help="JSON config file (training_config, data_config, validation_config) [env: HOTELBOT_CONFIG].",
        show_default=False,
    ),
]
ProfileOpt = Annotated[
    Optional[str],
    typer.Option(
        "--profile",
        help="dev (fast, 1 epoch) or prod (8 epochs, stricter gate): documented defaults.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
DataDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--data", help="Prepared data directory [env: HOTELBOT_DATA; default: data/processed].", show_default=False
    ),
]


# Paths given as root options (`hotelbot --reports DIR train ...`). Reset by the root callback on every
# invocation, so nothing leaks between commands run in one process (tests, the Python API).
ROOT_PATHS: dict[str, Any] = {}


def settings_from(
    config: Path | None = None,
    profile: str | None = None,
    registry: Path | None = None,
    data: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    return load_settings(
        config_file=config,
        profile=profile,
        overrides=overrides,
        path_overrides={**ROOT_PATHS, "registry": registry or ROOT_PATHS.get("registry"), "data": data},
    )
