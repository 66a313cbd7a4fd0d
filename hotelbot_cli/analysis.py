"""One call for everything a version can say about a message: intent, entities and sentiment.

:class:`Analyzer` loads whatever components a registry version holds (the intent classifier through
:class:`~hotelbot_cli.inference.Predictor`, the :class:`~hotelbot_cli.entities.EntityExtractor`, the
:class:`~hotelbot_cli.sentiment.SentimentClassifier`) and answers, per text::

    {"text", "intent", "confidence", "top_k", "fallback",          # the classifier's (predict's keys)
     "entities": [{"type", "text", "start", "end", "confidence"}],  # offsets into the text AS GIVEN
     "sentiment": {"label", "confidence"}}

A missing component gives ``null`` (intent, confidence, fallback, sentiment) or ``[]`` (top_k,
entities). The classifier and the sentiment model clean their input like their training data; the
entity model reads the raw text (no cleaning, no prefix), so ``text[start:end]`` is always the entity
text of the caller's own string.

Also here, for validate and deploy: :func:`validate_components` (each non-classifier component scored
on its own validation split), :func:`gate_components` and :func:`smoke_check_components`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .components import components_of
from .data import clean_text
from .errors import DataError, HotelbotError, RegistryError

if TYPE_CHECKING:
    from pathlib import Path

    from .registry import ModelRegistry, VersionInfo

ANALYZED_COMPONENTS = ("classifier", "entities", "sentiment")


def _load_classifier(info: "VersionInfo") -> Any:
    from .inference import Predictor

    return Predictor.from_version(info)


class Analyzer:
    """A version's loaded classifier, entity extractor and sentiment model (any of them may be None)."""

    def __init__(self, version: str, classifier: Any = None, entities: Any = None, sentiment: Any = None) -> None:
        self.version = version
        self.classifier = classifier
        self.entities = entities
        self.sentiment = sentiment

    @property
    def components(self) -> list[str]:
        return [name for name in ANALYZED_COMPONENTS if getattr(self, name) is not None]

    @classmethod
    def from_version(cls, info: "VersionInfo", *,
                     classifier_loader: Callable[["VersionInfo"], Any] | None = None) -> "Analyzer":
        """Load the components ``info`` lists (checksums are the caller's business: see from_registry).
        ``classifier_loader`` replaces Predictor.from_version (e.g. inference.load_predictor for ONNX)."""
        from .entities import EntityExtractor
        from .sentiment import SentimentClassifier

        present = components_of(info)
        if not any(c in present for c in ANALYZED_COMPONENTS):
            raise RegistryError(f"version {info.name} has no classifier, entity or sentiment model "
                                f"(components: {', '.join(present) or 'none'})",
                                hint="train one: hotelbot train --model-type classifier|entities|sentiment")
        classifier = (classifier_loader or _load_classifier)(info) if "classifier" in present else None
        entities = EntityExtractor.from_version(info) if "entities" in present else None
        sentiment = SentimentClassifier.from_version(info) if "sentiment" in present else None
        return cls(info.name, classifier, entities, sentiment)

    @classmethod
    def from_registry(cls, registry: "ModelRegistry", version: str | None = None, *, verify: bool = True,
                      classifier_loader: Callable[["VersionInfo"], Any] | None = None) -> "Analyzer":
        """``version`` None: the deployed version, else the newest; refuses a version whose checksums fail."""
        info = registry.resolve(version, verify=verify)
        return cls.from_version(info, classifier_loader=classifier_loader)

    def analyze(self, texts: Sequence[str], top_k: int = 3, batch_size: int = 32) -> list[dict[str, Any]]:
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not clean_text(text):
                raise DataError(f"text {i + 1} is empty")
        texts = list(texts)
        out: list[dict[str, Any]] = [{"text": t, "intent": None, "confidence": None, "top_k": [], "fallback": None,
                                      "entities": [], "sentiment": None} for t in texts]
        if not texts:
            return out
        if self.classifier is not None:
            for row, p in zip(out, self.classifier.predict(texts, top_k=top_k, batch_size=batch_size)):
                row.update(intent=p.intent, confidence=p.confidence, top_k=p.top_k, fallback=p.fallback)
        if self.entities is not None:
            for row, found in zip(out, self.entities.extract(texts, batch_size=batch_size)):
                row["entities"] = found
        if self.sentiment is not None:
            for row, s in zip(out, self.sentiment.predict(texts, batch_size=batch_size)):
                row["sentiment"] = s
        return out


# ---------------------------------------------------------------- validate / deploy helpers


def validate_components(info: "VersionInfo", metric: str = "macro_f1") -> dict[str, dict[str, Any]]:
    """Scores of the version's entity and sentiment models on their own validation splits, reloaded from
    disk: {"entities": entity_metrics(...), "sentiment": classification_metrics(...)} for those present."""
    from .entities import evaluate_entities
    from .sentiment import evaluate_sentiment

    present = components_of(info)
    out: dict[str, dict[str, Any]] = {}
    if "entities" in present:
        out["entities"] = evaluate_entities(info)
    if "sentiment" in present:
        out["sentiment"] = evaluate_sentiment(info, metric)
    return out


def gate_components(info: "VersionInfo", min_score: float, metric: str = "macro_f1") -> dict[str, Any]:
    """The deploy gate for the non-classifier components: each one's overall_score (entities: micro-F1,
    sentiment: ``metric``) on its own validation split must reach ``min_score``."""
    scores = validate_components(info, metric)
    failures = [f"{name} {m['metric']} {m['overall_score']:.4f} < MIN_VALIDATION_SCORE {min_score:.4f}"
                for name, m in scores.items() if m["overall_score"] < min_score]
    return {"components": {name: {"metric": m["metric"], "overall_score": m["overall_score"]}
                           for name, m in scores.items()},
            "failures": failures, "passed": not failures}


def smoke_check_components(info: "VersionInfo", texts_count: int = 20) -> dict[str, dict[str, Any]]:
    """Load the version's entity and sentiment models as predict/serve do and run them on a few of their
    validation texts. Raises (ModelError, RegistryError, HotelbotError) when they cannot load or answer
    something unusable (offsets outside the text, an unknown label, a confidence outside [0, 1])."""
    from .entities import DATA_SUBDIR as ENTITY_DATA, ENTITIES_DIR, EntityExtractor, read_prepared_entities
    from .sentiment import DATA_SUBDIR as SENTIMENT_DATA, SENTIMENT_DIR, SentimentClassifier, read_prepared_sentiment

    present = components_of(info)
    out: dict[str, dict[str, Any]] = {}

    def usable(value: float) -> bool:
        return 0.0 <= float(value) <= 1.0 and not math.isnan(float(value))

    if "entities" in present:
        examples = read_prepared_entities(info.path / ENTITIES_DIR / ENTITY_DATA).validation[:texts_count]
        texts = [e.text for e in examples] or ["Soy Ana, de la habitación 305"]
        extractor = EntityExtractor.from_version(info)
        found = extractor.extract(texts)
        for text, entities in zip(texts, found):
            for ent in entities:
                if not (0 <= ent["start"] < ent["end"] <= len(text)) or text[ent["start"]:ent["end"]] != ent["text"] \
                        or ent["type"] not in extractor.config.labels or not usable(ent["confidence"]):
                    raise HotelbotError(f"{info.name} returned an unusable entity for {text!r}: {ent}")
        gold = sum(len(e.entities) for e in examples)
        hits = sum(len(e.gold() & {(x["type"], x["start"], x["end"]) for x in f}) for e, f in zip(examples, found))
        out["entities"] = {"texts": len(texts), "found": sum(map(len, found)), "gold": gold, "correct": hits}
    if "sentiment" in present:
        examples = read_prepared_sentiment(info.path / SENTIMENT_DIR / SENTIMENT_DATA).validation[:texts_count]
        texts = [e.text for e in examples] or ["hola"]
        model = SentimentClassifier.from_version(info)
        answers = model.predict(texts)
        for text, answer in zip(texts, answers):
            if answer["label"] not in model.labels or not usable(answer["confidence"]):
                raise HotelbotError(f"{info.name} returned an unusable sentiment for {text!r}: {answer}")
        out["sentiment"] = {"texts": len(texts),
                            "correct": sum(a["label"] == e.intent for a, e in zip(answers, examples))}
    return out


def component_report(path: "Path", metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For ``hotelbot report``: the components other than the intent classifier in the version files in
    ``path`` (published or staged) with ``metadata``. {} when the version has none of them.

    Every entry has ``kind`` ("labels" for entities / sentiment, "generation", "retrieval"), ``headline``,
    ``rows``, ``dataset``, ``base_model``, ``training``, ``carried_from`` and ``mlflow_run_id``; a generator
    adds ``baseline`` (the retrieval-only baseline measured in the same run), ``grounding``, ``generation``
    (decoding settings) and ``samples`` (validation messages with reference, generated and baseline reply)."""
    import json
    from pathlib import Path

    out: dict[str, dict[str, Any]] = {}

    def common(summary: dict[str, Any]) -> dict[str, Any]:
        base = summary.get("base_model")
        return {"dataset": summary.get("dataset") or {},
                "base_model": base.get("spec") if isinstance(base, dict) else base,
                "training": summary.get("training") or {}, "carried_from": summary.get("carried_from"),
                "mlflow_run_id": summary.get("mlflow_run_id")}

    for name, per_key in (("entities", "per_type"), ("sentiment", "per_intent")):
        summary = metadata.get(name)
        metrics_path = Path(path) / name / "metrics.json"
        if not isinstance(summary, dict) or not metrics_path.is_file():
            continue
        metrics = json.loads(metrics_path.read_text("utf-8"))
        headline = {k: metrics.get(k) for k in ("overall_score", "metric", "micro_precision", "micro_recall",
                                                 "micro_f1", "macro_precision", "macro_recall", "macro_f1",
                                                 "accuracy", "weighted_f1") if metrics.get(k) is not None}
        out[name] = {
            "kind": "labels", "headline": headline,
            "rows": [{"label": label, **{k: s.get(k) for k in ("precision", "recall", "f1", "support")}}
                     for label, s in (metrics.get(per_key) or {}).items()],
            **common(summary),
        }
    knowledge = metadata.get("knowledge")
    if isinstance(knowledge, dict):
        out["knowledge"] = {
            "kind": "retrieval",
            "headline": {k: knowledge.get(k) for k in ("documents", "chunks", "dim", "embedded_chunks",
                                                       "reused_chunks", "incremental")},
            "rows": [], **common({**knowledge, "base_model": knowledge.get("embedding_model"),
                                  "training": {"duration_seconds": knowledge.get("build_seconds")}}),
        }
    generator = metadata.get("generator")
    metrics_path = Path(path) / "generator" / "metrics.json"
    if isinstance(generator, dict) and metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text("utf-8"))
        g, b = metrics.get("generator") or {}, metrics.get("retrieval_baseline") or {}
        names = (("bleu", "BLEU"), ("rouge_l", "ROUGE-L"), ("relevance", "relevance"),
                 ("exact_match", "exact match"), ("perplexity", "perplexity"))
        out["generator"] = {
            "kind": "generation",
            "headline": {k: g.get(k) for k, _ in names if g.get(k) is not None},
            "baseline": {k: b.get(k) for k, _ in names if b.get(k) is not None},
            "rows": [{"metric": label, "generator": g.get(k), "baseline": b.get(k)} for k, label in names
                     if g.get(k) is not None],
            "architecture": generator.get("architecture"), "grounded": generator.get("grounded"),
            "knowledge_version": generator.get("knowledge_version"), "grounding": metrics.get("grounding"),
            "generation": metrics.get("generation") or generator.get("generation"),
            "num_examples": metrics.get("num_examples"), "bleu_signature": metrics.get("bleu_signature"),
            "samples": (metrics.get("samples") or [])[:5],
            **common(generator),
        }
    return out


__all__ = ["Analyzer", "component_report", "gate_components", "smoke_check_components", "validate_components"]
