"""The sentiment classifier (negative / neutral / positive): a sentence classifier like the intent one,
without an out-of-scope threshold. Its files live in ``sentiment/``, its summary in ``metadata["sentiment"]``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ...errors import ExportUnavailable, HotelbotError
from ..base import ComponentResult, SplitComponent, TrainRequest, labels_report_section, usable_confidence
from ..exporting import sentence_classifier_hf
from .classifier import (DATA_SUBDIR, EXPERIMENT, SENTIMENT_DIR, SentimentClassifier, evaluate_sentiment,
                         prepare_sentiment, read_prepared_sentiment, train_sentiment, write_prepared_sentiment)

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import VersionInfo


class SentimentComponent(SplitComponent):
    name = "sentiment"
    model_type = "sentiment"
    kind = "sentiment-classifier"
    experiment = EXPERIMENT
    description = "sentiment classifier (negative / neutral / positive)"
    paths = (SENTIMENT_DIR,)
    prepare_hint = "hotelbot prepare --sentiment FILE"
    sample = "sentimiento_es"
    metric = "macro_f1"  # settings.validation.metric
    gated = True
    analyzes = True
    export_formats = ("hf",)

    def prepare_split(self, path: Path, validation_split: float, seed: int) -> Any:
        return prepare_sentiment(path, validation_split, seed)

    def write_split(self, prepared: Any, target: Path) -> None:
        write_prepared_sentiment(prepared, target)

    def fit_and_publish(self, request: TrainRequest, data: Path) -> ComponentResult:
        return train_sentiment(request.settings, data, request.registry, listener=request.listener,
                               force=request.force, source=request.source)

    def score(self, info: "VersionInfo", settings: "Settings") -> dict[str, Any]:
        return evaluate_sentiment(info, settings.validation.metric, model=self.load(info, settings))

    def score_view(self, metrics: dict[str, Any], gate: str) -> dict[str, Any]:
        m = metrics
        return {"line": f"sentiment on {m['num_examples']} texts ({m['data_source']}): accuracy {m['accuracy']:.4f}  "
                        f"macro-F1 {m['macro_f1']:.4f}  overall_score ({m['metric']}) {m['overall_score']:.4f}  "
                        f"{gate}  per label: " + ", ".join(f"{k} {v['f1']:.3f}" for k, v in m["per_intent"].items()),
                "table": None}

    def smoke(self, info: "VersionInfo", settings: "Settings", texts_count: int) -> dict[str, Any]:
        examples = read_prepared_sentiment(info.path / SENTIMENT_DIR / DATA_SUBDIR).validation[:texts_count]
        texts = [e.text for e in examples] or ["hola"]
        model = self.load(info, settings)
        answers = model.predict(texts)
        for text, answer in zip(texts, answers):
            if answer["label"] not in model.labels or not usable_confidence(answer["confidence"]):
                raise HotelbotError(f"{info.name} returned an unusable sentiment for {text!r}: {answer}")
        return {"texts": len(texts), "correct": sum(a["label"] == e.intent for a, e in zip(answers, examples))}

    def load(self, info: "VersionInfo", settings: "Settings | None" = None,
             loaded: dict[str, Any] | None = None) -> Any:
        """Its own model, or in a joint NLU version the classifier's sentiment head (on the classifier already
        in ``loaded`` when there is one: one model in memory, one pass for the three components)."""
        # on use, and only a joint version needs them (nlu.runtime imports the entity tagger)
        from ..nlu import joint_head, joint_runner
        from ..nlu.runtime import JointSentiment  # imports the entity tagger

        if joint_head(info, self.name) is not None:
            return JointSentiment(joint_runner(info, loaded))
        return SentimentClassifier.from_version(info)

    def runs_on(self, info: "VersionInfo") -> str | None:
        from ..nlu import joint_head  # the nlu package imports the component table's modules on use only

        return "classifier" if joint_head(info, self.name) is not None else None

    def export(self, info: "VersionInfo", fmt: str, target: Path, settings: "Settings") -> dict[str, Any]:
        if self.runs_on(info) is not None:
            raise ExportUnavailable(f"the {self.name} of {info.name} is a head of its joint NLU model, which is "
                                    "exported whole with the classifier",
                                    hint=f"hotelbot export {info.name} --component classifier --format {fmt} DIR")
        predictor = SentimentClassifier.from_version(info).predictor
        return sentence_classifier_hf(predictor.model, predictor.tokenizer, target, "sentiment classifier", info.name)

    def empty_analysis(self) -> dict[str, Any]:
        return {"sentiment": None}

    def analysis_text(self, row: dict[str, Any]) -> str:
        s = row["sentiment"]
        return "" if s is None else f"\tsentiment={s['label']} {s['confidence']:.2f}"

    def analyze(self, loaded: Any, texts: Sequence[str], rows: list[dict[str, Any]], *, top_k: int,
                batch_size: int) -> None:
        for row, answer in zip(rows, loaded.predict(texts, batch_size=batch_size)):
            row["sentiment"] = answer

    def report_section(self, path: Path, metadata: dict[str, Any]) -> dict[str, Any] | None:
        return labels_report_section(path, metadata.get(self.name), self.name, "per_intent")


__all__ = ["SentimentComponent"]
