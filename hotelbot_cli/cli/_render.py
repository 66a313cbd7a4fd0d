"""Rendering helpers: JSON to stdout (orjson), Rich tables to stdout, messages to stderr."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, log_path=False)


def print_json(data: Any) -> None:
    import orjson

    sys.stdout.write(
        orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str).decode("utf-8") + "\n"
    )
    sys.stdout.flush()


def message(text: str) -> None:
    err.print(text)


def warn(text: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {text}")


@contextmanager
def log_to(path: Path) -> Iterator[None]:
    """Send the library's log records (logger 'hotelbot') to ``path`` for the duration of a command."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("hotelbot")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
