"""The server's limits and tuning (:class:`ServeSettings`) and the HOTELBOT_SERVE_* variables that carry
them to ``--workers N`` processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from ..config import _Section
from ..errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

# Environment variables read by app_factory() (how `hotelbot serve --workers N` configures its workers).
ENV_SERVE = {
    "HOTELBOT_SERVE_MAX_TEXT_LENGTH": "max_text_length",
    "HOTELBOT_SERVE_MAX_BATCH_SIZE": "max_batch_size",
    "HOTELBOT_SERVE_BATCH_WAIT_MS": "batch_wait_ms",
    "HOTELBOT_SERVE_MAX_MICRO_BATCH": "max_micro_batch",
    "HOTELBOT_SERVE_WATCH_INTERVAL_S": "watch_interval_s",
    "HOTELBOT_SERVE_TOP_K": "top_k",
    "HOTELBOT_SERVE_TORCH_THREADS": "torch_threads",
}


@dataclass
class ServeSettings(_Section):
    """Limits and tuning of the prediction server (validated on construction)."""

    max_text_length: int = 1000  # characters per text; longer -> 413
    max_batch_size: int = 256  # texts per /classify/batch request; more -> 413
    batch_wait_ms: float = 5.0  # how long the first request of a micro-batch waits for company
    max_micro_batch: int = 64  # texts per forward pass
    watch_interval_s: float = 1.0  # how often the `current` symlink is polled; 0 turns hot swap off
    top_k: int = 3  # ranked intents in each answer
    torch_threads: int = 0  # torch intra-op threads per process; 0 leaves torch's default

    def __post_init__(self) -> None:
        for name in ("max_text_length", "max_batch_size", "max_micro_batch", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.batch_wait_ms <= 60_000:
            raise ConfigError(f"batch_wait_ms must be between 0 and 60000, got {self.batch_wait_ms!r}")
        if not 0 <= self.watch_interval_s <= 3600:
            raise ConfigError(f"watch_interval_s must be between 0 (off) and 3600, got {self.watch_interval_s!r}")
        if self.torch_threads < 0:
            raise ConfigError(f"torch_threads must be >= 0 (0: torch's default), got {self.torch_threads!r}")

    @property
    def max_body_bytes(self) -> int:
        """Largest request body accepted before parsing: a full batch of maximal, fully escaped texts."""
        return self.max_batch_size * (self.max_text_length * 12 + 64) + 64 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeSettings:
        env = os.environ if env is None else env
        values = {key: env[name] for name, key in ENV_SERVE.items() if env.get(name)}
        return cls.from_dict(values, source="environment (HOTELBOT_SERVE_*)")

    def to_env(self) -> dict[str, str]:
        return {name: str(getattr(self, key)) for name, key in ENV_SERVE.items()}
