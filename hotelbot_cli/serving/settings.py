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
    "HOTELBOT_SERVE_CAPTURE_DIR": "capture_dir",
    "HOTELBOT_SERVE_CAPTURE_BELOW": "capture_below",
    "HOTELBOT_SERVE_CAPTURE_RETENTION_DAYS": "capture_retention_days",
    "HOTELBOT_SERVE_CAPTURE_MAX_MB": "capture_max_mb",
    "HOTELBOT_SERVE_CAPTURE_FEEDBACK_HOURS": "capture_feedback_hours",
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
    # `serve --capture DIR` (off when empty): fallbacks, answers below capture_below and flagged requests are
    # kept, masked, in DIR (hotelbot_cli.feedback.capture)
    capture_dir: str = ""
    capture_below: float = 0.6
    capture_retention_days: int = 30
    capture_max_mb: float = 100.0
    capture_feedback_hours: float = 24.0

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
        if not 0 <= self.capture_below <= 1:
            raise ConfigError(f"capture_below must be between 0 and 1, got {self.capture_below!r}")
        if self.capture_retention_days < 1 or self.capture_max_mb <= 0 or self.capture_feedback_hours <= 0:
            raise ConfigError(
                "capture_retention_days must be >= 1, capture_max_mb and capture_feedback_hours above 0; got "
                f"{self.capture_retention_days!r}, {self.capture_max_mb!r}, {self.capture_feedback_hours!r}"
            )

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
