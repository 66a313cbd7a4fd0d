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
    """Send the library's log records (logger 'hotelbot') to ``path`` for the duration of a command, and its
    warnings to stderr as bare lines (as Python shows them when nothing is configured). They do not propagate
    to the root logger: a library that configures it (onnxruntime's quantizer logs through it) would otherwise
    repeat every INFO record on the terminal ("INFO:hotelbot.training:...")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    logger = logging.getLogger("hotelbot")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.addHandler(to_stderr)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.propagate = propagate
        logger.removeHandler(handler)
        logger.removeHandler(to_stderr)
        handler.close()


def megabytes(n: int) -> str:
    """Bytes as decimal megabytes, the unit of every registry size hotelbot prints: "1,117.2 MB"."""
    return f"{n / 1e6:,.1f} MB"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
