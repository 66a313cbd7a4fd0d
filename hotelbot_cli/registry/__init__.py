"""Storage layer: the versioned model registry."""

from .store import ModelRegistry, VersionInfo, check_version_name

__all__ = ["ModelRegistry", "VersionInfo", "check_version_name"]
