"""Exceptions raised by the hotelbot library.

The library never prints or exits: it raises a subclass of :class:`HotelbotError`.
The CLI maps each class to one line on stderr and an exit code (see ``cli/_errors.py``).
"""

from __future__ import annotations

from typing import Any


class HotelbotError(Exception):
    """Base class of every error a user can cause or fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(HotelbotError):
    """A configuration file, environment variable or flag has a bad value."""


class DataError(HotelbotError):
    """Input data is unreadable, malformed or fails validation."""


class ModelError(HotelbotError):
    """A base model cannot be resolved, converted or loaded."""


class RegistryError(HotelbotError):
    """The registry is missing something, or a name is invalid."""


class VersionNotFoundError(RegistryError):
    """A named or implied version does not exist."""


class IntegrityError(RegistryError):
    """A version's files do not match their recorded checksums."""


class AlreadyTrainedError(HotelbotError):
    """Same data fingerprint and config as an existing version (train --force retrains). Not a failure:
    the CLI reports it and exits 0."""

    exit_code = 0

    def __init__(self, version: str) -> None:
        super().__init__(
            f"version {version} was trained on the same data with the same config; "
            "nothing to do (use --force to train again)"
        )
        self.version = version


class GateFailedError(HotelbotError):
    """A validation gate failed: the model is not deployed."""

    exit_code = 3


class RolledBackError(HotelbotError):
    """A deploy switched the model, its verification failed, and it was rolled back."""

    exit_code = 4


class DeployVerificationError(HotelbotError):
    """The new current failed its smoke test and auto-rollback is off: it stays deployed."""


class ReportError(HotelbotError):
    """A report cannot be built or written (missing version files, bad format, unwritable output)."""


class ExportError(HotelbotError):
    """An export cannot be written (a non-empty target without --force, a target inside the registry, a
    component or format the version does not have); nothing was written."""


class ExportUnavailable(ExportError):
    """One component has nothing to export in the format asked for (e.g. a classifier trained without its ONNX
    export): `hotelbot export` lists it as skipped with this message as the reason."""


class ServeError(HotelbotError):
    """A request the server answers with a 4xx/5xx JSON body ``{"error": ..., "detail": ...}``."""

    def __init__(self, status_code: int, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail
