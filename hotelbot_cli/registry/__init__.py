"""Storage layer: the versioned model registry."""

from .manifest import CarriedOver, Manifest
from .store import ModelRegistry, VersionInfo, check_version_name

__all__ = ["CarriedOver", "Manifest", "ModelRegistry", "VersionInfo", "check_version_name"]
