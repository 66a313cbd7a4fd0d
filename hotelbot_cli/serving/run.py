"""Running the server: :func:`serve` (uvicorn, one process or ``workers`` processes) and
:func:`app_factory`, which builds each worker's app from the environment."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ..config import load_settings
from ..errors import ConfigError
from ..registry import ModelRegistry
from .app import create_app
from .capture import capture_store
from .metrics import MULTIPROCESS_ENV, prepare_multiprocess_dir
from .settings import DEFAULT_HOST, DEFAULT_PORT, ServeSettings

# The package: its loggers (model loads, swaps, failed loads) and the import path of app_factory.
PACKAGE = __name__.rpartition(".")[0]


def app_factory() -> FastAPI:
    """Build the app from the environment: for ``uvicorn --factory`` and ``hotelbot serve --workers N``.

    The registry root comes from HOTELBOT_REGISTRY (or the config file) through ``load_settings``; the
    server limits from the HOTELBOT_SERVE_* variables (see ``ENV_SERVE``).
    """
    settings = load_settings()
    return create_app(ModelRegistry(settings.paths.registry), ServeSettings.from_env())


def serve(
    registry_root: Path,
    settings: ServeSettings | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = 1,
    access_log: bool = False,
    log_level: str = "info",
) -> None:
    """Run the server until interrupted. ``workers > 1`` starts that many processes, each with its own
    model; they get the registry and limits through HOTELBOT_REGISTRY and HOTELBOT_SERVE_*."""
    import uvicorn  # heavy, and only needed to serve: create_app users (tests, benchmarks) never load it

    settings = settings or ServeSettings()
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    root = Path(registry_root).resolve()
    store = capture_store(settings)  # the capture directory is created (owner-only) before any worker starts
    if store is not None:
        store.close()
    # uvicorn's own log format, plus this package's messages (model loads, swaps, failed loads).
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"][PACKAGE] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "access_log": access_log,
        "log_level": log_level,
        "log_config": log_config,
        "timeout_graceful_shutdown": 30,
    }
    if workers == 1:
        if os.environ.get(MULTIPROCESS_ENV):  # multiprocess mode asked for: start from empty files all the same
            prepare_multiprocess_dir()
        uvicorn.run(create_app(ModelRegistry(root), settings), **common)
        return
    # Each worker is a separate process: split the cores between them unless told otherwise.
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // workers)
    os.environ.update(settings.merged({"torch_threads": threads}, source="serve").to_env())
    os.environ.setdefault("HOTELBOT_ONNX_THREADS", str(threads))  # the same share for onnxruntime
    os.environ["HOTELBOT_REGISTRY"] = str(root)
    # Per-version metrics summed over the workers: prometheus_client's multiprocess files, in a directory the
    # workers learn before they import it (emptied of an earlier run's; a temporary one is removed after).
    directory, created = prepare_multiprocess_dir()
    before = os.environ.get(MULTIPROCESS_ENV)
    os.environ[MULTIPROCESS_ENV] = directory
    try:
        uvicorn.run(f"{PACKAGE}:app_factory", factory=True, workers=workers, **common)
    finally:
        if before is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        if created:
            shutil.rmtree(directory, ignore_errors=True)
