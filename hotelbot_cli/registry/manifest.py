"""The typed view of a version's ``metadata.json``: the keys the registry and the composition of
components own, read in one place instead of ``metadata.get(...)`` in every module.

On disk the manifest is unchanged (a JSON object), so every registry written by earlier releases loads as
it is: a version written before ``components`` existed has ``components`` None (the components are then
recognised by their files, :func:`hotelbot_cli.components.compose.components_of`), one without
``carried_over`` has an empty :class:`CarriedOver`. Each component's own summary stays a plain dict under
the keys it owns (:meth:`Manifest.summary`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class CarriedOver:
    """Where a version's other components came from: ``source`` (a version name, or None for a version built
    into an empty registry) and the components copied from it."""

    source: str | None = None
    components: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, value: Any) -> CarriedOver:
        if not isinstance(value, Mapping):
            return cls()
        return cls(value.get("from"), tuple(str(c) for c in value.get("components") or ()))

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.source, "components": list(self.components)}


@dataclass(frozen=True)
class Manifest:
    """A version's metadata, typed where the registry relies on it; ``raw`` is the whole JSON object."""

    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str | None:
        value = self.raw.get("version")
        return str(value) if value is not None else None

    @property
    def created_at(self) -> str | None:
        return self.raw.get("created_at")

    @property
    def corrupt(self) -> bool:
        """metadata.json was missing or unreadable (the registry lists the version all the same)."""
        return bool(self.raw.get("corrupt"))

    @property
    def files(self) -> dict[str, str]:
        """sha256 of every file of the version (but metadata.json), by POSIX path relative to it."""
        value = self.raw.get("files")
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def components(self) -> list[str] | None:
        """The components the version holds, in order; None for a version written before the key existed."""
        value = self.raw.get("components")
        return [str(c) for c in value] if isinstance(value, list) else None

    @property
    def kind(self) -> str | None:
        return self.raw.get("kind")

    @property
    def parent(self) -> str | None:
        return self.raw.get("parent")

    @property
    def carried_over(self) -> CarriedOver:
        return CarriedOver.from_dict(self.raw.get("carried_over"))

    @property
    def library_versions(self) -> dict[str, str] | None:
        return self.raw.get("library_versions")

    @property
    def hardware(self) -> dict[str, Any] | None:
        return self.raw.get("hardware")

    def summary(self, key: str) -> dict[str, Any]:
        """A component's own summary (the dict under ``key``); {} when the version has none."""
        value = self.raw.get(key)
        return value if isinstance(value, dict) else {}


__all__ = ["CarriedOver", "Manifest"]
