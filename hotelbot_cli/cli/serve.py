"""hotelbot serve"""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from ._errors import error_line, handle_errors
from ._options import RegistryOpt, settings_from

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@handle_errors
def serve_cmd(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Interface to bind. Keep the loopback default unless a reverse proxy or firewall guards the port.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Server processes; each loads its own copy of the model and gets a share of the CPU cores.",
        ),
    ] = 1,
    registry: RegistryOpt = None,
    max_text_length: Annotated[
        Optional[int],
        typer.Option(
            "--max-text-length",
            min=1,
            show_default=False,
            help="Longest text accepted, in characters; longer gets 413 "
            "[env: HOTELBOT_SERVE_MAX_TEXT_LENGTH; default: 1000].",
        ),
    ] = None,
    max_batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--max-batch-size",
            min=1,
            show_default=False,
            help="Most texts in one /classify/batch request; more gets 413 "
            "[env: HOTELBOT_SERVE_MAX_BATCH_SIZE; default: 256].",
        ),
    ] = None,
    batch_wait_ms: Annotated[
        Optional[float],
        typer.Option(
            "--batch-wait-ms",
            min=0,
            show_default=False,
            help="How long a request may wait for others to share its forward pass "
            "[env: HOTELBOT_SERVE_BATCH_WAIT_MS; default: 5].",
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request on stderr (off by default: /metrics counts them).")
    ] = False,
) -> None:
    """Serve the deployed model over HTTP (FastAPI + uvicorn) until Ctrl+C.

    Endpoints: POST /classify {"text": ...}, POST /classify/batch {"texts": [...]}, GET /health,
    GET /ready, GET /metrics (Prometheus), GET /docs (OpenAPI). The server follows `hotelbot deploy`
    and rollbacks without a restart. With nothing deployed it still starts: /ready and /classify
    answer 503 until a version is deployed.

    Examples:

        hotelbot serve

        hotelbot serve --port 9000 --workers 2

        curl -s localhost:8000/classify -H 'content-type: application/json' -d '{"text": "hola"}'
    """
    from ..serving import ServeSettings, serve  # fastapi + pydantic: only `serve` pays for them

    settings = settings_from(registry=registry)
    limits = ServeSettings.from_env().merged(
        {"max_text_length": max_text_length, "max_batch_size": max_batch_size, "batch_wait_ms": batch_wait_ms},
        source="flag",
    )
    if host not in LOOPBACK_HOSTS:
        error_line(f"warning: binding to {host} exposes the model to the network; the server has no authentication")
    serve(
        settings.paths.registry,
        limits,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
    )
