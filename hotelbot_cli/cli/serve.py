"""hotelbot serve"""

from __future__ import annotations

from pathlib import Path
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
    capture: Annotated[
        Optional[Path],
        typer.Option(
            "--capture",
            show_default=False,
            help="Keep what the model got wrong for review (`hotelbot inbox`): fallbacks, answers below "
            "--capture-below and requests flagged with POST /feedback, personal data masked, in this directory "
            "(created owner-only) [env: HOTELBOT_SERVE_CAPTURE_DIR; default: off].",
        ),
    ] = None,
    capture_below: Annotated[
        Optional[float],
        typer.Option(
            "--capture-below",
            min=0,
            max=1,
            show_default=False,
            help="Capture answers less confident than this [env: HOTELBOT_SERVE_CAPTURE_BELOW; default: 0.6].",
        ),
    ] = None,
    capture_retention_days: Annotated[
        Optional[int],
        typer.Option(
            "--capture-retention-days",
            min=1,
            show_default=False,
            help="Delete captured days older than this [env: HOTELBOT_SERVE_CAPTURE_RETENTION_DAYS; default: 30].",
        ),
    ] = None,
    capture_max_mb: Annotated[
        Optional[float],
        typer.Option(
            "--capture-max-mb",
            min=0.01,
            show_default=False,
            help="Most megabytes of captured messages; the oldest days go first "
            "[env: HOTELBOT_SERVE_CAPTURE_MAX_MB; default: 100].",
        ),
    ] = None,
    capture_feedback_hours: Annotated[
        Optional[float],
        typer.Option(
            "--capture-feedback-hours",
            min=0.01,
            show_default=False,
            help="How long after its answer POST /feedback can flag a request (its masked text is kept that "
            "long) [env: HOTELBOT_SERVE_CAPTURE_FEEDBACK_HOURS; default: 24].",
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request on stderr (off by default: /metrics counts them).")
    ] = False,
) -> None:
    """Serve the deployed model over HTTP (FastAPI + uvicorn) until Ctrl+C.

    Endpoints: POST /classify {"text": ...}, POST /classify/batch {"texts": [...]}, POST /analyze,
    POST /search, POST /reply, POST /feedback (with --capture), GET /health, GET /ready, GET /metrics
    (Prometheus), GET /docs (OpenAPI). The server follows `hotelbot deploy`
    and rollbacks without a restart. With nothing deployed it still starts: /ready and /classify
    answer 503 until a version is deployed.

    Examples:

        hotelbot serve

        hotelbot serve --port 9000 --workers 2

        hotelbot serve --capture capture/    # then: hotelbot inbox --capture capture/

        curl -s localhost:8000/classify -H 'content-type: application/json' -d '{"text": "hola"}'
    """
    from ..serving import ServeSettings, serve  # fastapi + pydantic: only `serve` pays for them

    settings = settings_from(registry=registry)
    limits = ServeSettings.from_env().merged(
        {
            "max_text_length": max_text_length,
            "max_batch_size": max_batch_size,
            "batch_wait_ms": batch_wait_ms,
            "capture_dir": str(capture.resolve()) if capture is not None else None,
            "capture_below": capture_below,
            "capture_retention_days": capture_retention_days,
            "capture_max_mb": capture_max_mb,
            "capture_feedback_hours": capture_feedback_hours,
        },
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
