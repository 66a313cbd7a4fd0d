"""One table from library exceptions to a message and an exit code (the huggingface_hub CLI pattern).

Applied per command with :func:`handle_errors`: Typer re-raises inside CliRunner, so a global handler
would not see them in tests. ``HOTELBOT_DEBUG=1`` re-raises to show the traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, TypeVar

import click
import typer

from ..errors import HotelbotError

F = TypeVar("F", bound=Callable[..., Any])

# (exception type, exit code, prefix); first match wins. Library errors carry their own exit code.
ERROR_TABLE: list[tuple[type[BaseException], int | None, str]] = [
    (HotelbotError, None, "error"),
    (PermissionError, 1, "error: permission denied"),
    (OSError, 1, "error"),
]


# Click's usage errors: click's own, and those of the Click that Typer bundles (typer.BadParameter is one of
# those, not a click.ClickException), so that a command's own BadParameter exits 2 with Click's message.
CLICK_ERRORS: tuple[type[BaseException], ...] = tuple(
    {click.ClickException, *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")}
)


def _debug() -> bool:
    return os.environ.get("HOTELBOT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def error_line(message: str) -> None:
    typer.echo(message, err=True)


def handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit) + CLICK_ERRORS:  # (same tuple as a *-splat; mypy reads this)
            raise  # Click's own usage errors (BadParameter...) keep their exit code 2 and message
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - this IS the one place that turns errors into exits
            if _debug():
                raise
            if isinstance(exc, ModuleNotFoundError) and exc.name:
                error_line(missing_module_line(exc.name))
                raise typer.Exit(1) from None
            for kind, code, prefix in ERROR_TABLE:
                if isinstance(exc, kind):
                    exit_code = code if code is not None else getattr(exc, "exit_code", 1)
                    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    error_line(f"{prefix}: {detail}")
                    raise typer.Exit(exit_code) from None
            error_line(f"internal error: {type(exc).__name__}: {exc} (set HOTELBOT_DEBUG=1 for the traceback)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# The modules the `serve` install brings (pyproject.toml); any other missing one is the `train` install's.
SERVE_MODULES = frozenset(
    {
        "onnxruntime",
        "tokenizers",
        "fastapi",
        "starlette",
        "pydantic",
        "pydantic_core",
        "uvicorn",
        "httptools",
        "uvloop",
        "prometheus_client",
        "scipy",
    }
)


def missing_module_line(name: str) -> str:
    """One line for a library an install by role lacks (README "Installs by role")."""
    top = name.partition(".")[0]
    role = "serve" if top in SERVE_MODULES else "train"
    return (
        f"error: this needs the `{role}` install (no module named {top!r}): pip install -c constraints.txt '.[{role}]'"
    )


def is_tty_stderr() -> bool:
    return sys.stderr.isatty()
