"""One call for everything a version can say about a message: every registered component that analyzes
(the intent classifier, the entity extractor, the sentiment classifier, ...) answers for each text.

:class:`Analyzer` loads the analyzing components a registry version holds and answers, per text::

    {"text", "intent", "confidence", "top_k", "fallback",          # the classifier's (predict's keys)
     "entities": [{"type", "text", "start", "end", "confidence"}],  # offsets into the text AS GIVEN
     "sentiment": {"label", "confidence"}}

A component the version lacks gives its empty answer (``null`` for intent, confidence, fallback,
sentiment; ``[]`` for top_k, entities). The classifier and the sentiment model clean their input like
their training data; the entity model reads the raw text (no cleaning, no prefix), so ``text[start:end]``
is always the entity text of the caller's own string.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..components import registered
from ..components.compose import components_of
from ..errors import RegistryError
from ..runtime import predictor_from_registry
from ..runtime.prediction import check_texts

if TYPE_CHECKING:
    from ..config import Settings
    from ..registry import ModelRegistry, VersionInfo


class Analyzer:
    """A version's loaded analyzing components, by name (any of them may be missing)."""

    def __init__(self, version: str, loaded: Mapping[str, Any]) -> None:
        self.version = version
        self.loaded = {name: model for name, model in loaded.items() if model is not None}

    def __getattr__(self, name: str) -> Any:
        """``analyzer.<component>``: that component's loaded model, None when the version lacks it."""
        if name.startswith("_") or name in ("version", "loaded"):
            raise AttributeError(name)
        return self.loaded.get(name)

    @property
    def components(self) -> list[str]:
        return [c.name for c in registered() if c.name in self.loaded]

    @staticmethod
    def analyzing_components(info: VersionInfo) -> list[str]:
        present = components_of(info)
        return [c.name for c in registered() if c.analyzes and c.name in present]

    @classmethod
    def from_version(
        cls, info: VersionInfo, settings: Settings | None = None, *, preloaded: Mapping[str, Any] | None = None
    ) -> Analyzer:
        """Load the analyzing components ``info`` holds, each as predict and serve load it (checksums are the
        caller's business: see from_registry). ``preloaded`` supplies components already loaded (serve's
        predictor). RegistryError when the version holds none of them."""
        names = cls.analyzing_components(info)
        if not names:
            analyzing = [c for c in registered() if c.analyzes]
            raise RegistryError(
                f"version {info.name} has no {', '.join(c.name for c in analyzing)} model "
                f"(components: {', '.join(components_of(info)) or 'none'})",
                hint="train one: hotelbot train --model-type " + "|".join(c.model_type for c in analyzing),
            )
        loaded: dict[str, Any] = dict(preloaded or {})
        for c in registered():  # in order, each seeing the ones before (a joint model's heads share the classifier)
            if c.name in names and c.name not in loaded:
                loaded[c.name] = c.load(info, settings, loaded)
        return cls(info.name, {name: loaded[name] for name in names})

    @classmethod
    def from_registry(
        cls,
        registry: ModelRegistry,
        version: str | None = None,
        *,
        verify: bool = True,
        settings: Settings | None = None,
    ) -> Analyzer:
        """``version`` None: the deployed version, else the newest; refuses a version whose checksums fail."""
        info = registry.resolve(version, verify=verify)
        return cls.from_version(info, settings)

    def analyze(self, texts: Sequence[str], top_k: int = 3, batch_size: int = 32) -> list[dict[str, Any]]:
        check_texts(texts)
        texts = list(texts)
        analyzing = [c for c in registered() if c.analyzes]
        out: list[dict[str, Any]] = []
        for text in texts:
            row: dict[str, Any] = {"text": text}
            for component in analyzing:
                row.update(component.empty_analysis())
            out.append(row)
        if not texts:
            return out
        for component in analyzing:
            if component.name in self.loaded:
                component.analyze(self.loaded[component.name], texts, out, top_k=top_k, batch_size=batch_size)
        return out


def analyze_texts(
    registry: ModelRegistry, version: str | None, texts: Sequence[str], *, top_k: int = 3
) -> tuple[str, list[dict[str, Any]]]:
    """`hotelbot predict`: (version, one row per text with every analyzing component's answer). A version
    whose only analyzing component is the primary one (the classifier) is answered by its runtime alone,
    checking only the files that runtime reads (ONNX: torch is never imported); otherwise every component
    is loaded from a fully verified version."""
    info = registry.resolve(version)
    names = Analyzer.analyzing_components(info)
    if any(not c.primary for c in registered() if c.name in names):
        analyzer = Analyzer.from_registry(registry, info.name)
        return analyzer.version, analyzer.analyze(texts, top_k=top_k)
    predictor = predictor_from_registry(registry, info.name)
    empty: dict[str, Any] = {}
    for component in registered():
        if component.analyzes and not component.primary:
            empty.update(component.empty_analysis())
    return predictor.version, [{**p.to_dict(), **empty} for p in predictor.predict(texts, top_k=top_k)]


__all__ = ["Analyzer", "analyze_texts"]
