"""The sentiment classifier (negative / neutral / positive): a sentence classifier like the intent one,
without an out-of-scope threshold. Its files live in ``sentiment/``, its summary in ``metadata["sentiment"]``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ...errors import HotelbotError
from ...runtime.layout import CLASSIFIER_FILE, TORCH
from ..base import ComponentResult, SplitComponent, TrainRequest, labels_report_section, usable_confidence
from ..nlu import JointHead
from .classifier import (
    DATA_SUBDIR,
    EXPERIMENT,
    SENTIMENT_DIR,
    SentimentClassifier,
    evaluate_sentiment,
    prepare_sentiment,
    read_prepared_sentiment,
    train_sentiment,
    write_prepared_sentiment,
)

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import VersionInfo


class SentimentComponent(JointHead, SplitComponent):
    name = "sentiment"
    model_type = "sentiment"
    distributed = True  # fits on the Trainer: torchrun / accelerate launch
    kind = "sentiment-classifier"
    experiment = EXPERIMENT
    description = "sentiment classifier (negative / neutral / positive)"
    paths = (SENTIMENT_DIR,)
    prepare_hint = "hotelbot prepare --sentiment FILE"
    sample = "sentimiento_es"
    metric = "macro_f1"  # settings.validation.metric
    gated = True
    analyzes = True
    export_formats = ("hf", "onnx")

    def prepare_split(self, path: Path, validation_split: float, seed: int) -> Any:
        return prepare_sentiment(path, validation_split, seed)

    def write_split(self, prepared: Any, target: Path) -> None:
        write_prepared_sentiment(prepared, target)

    def fit_and_publish(self, request: TrainRequest, data: Path) -> ComponentResult:
        return train_sentiment(
            request.settings,
            data,
            request.registry,
            listener=request.listener,
            force=request.force,
            source=request.source,
        )

    def score(self, info: VersionInfo, settings: Settings) -> dict[str, Any]:
        return evaluate_sentiment(info, settings.validation.metric, model=self.load(info, settings))

    def score_view(self, metrics: dict[str, Any], gate: str) -> dict[str, Any]:
        m = metrics
        return {
            "line": f"sentiment on {m['num_examples']} texts ({m['data_source']}): accuracy {m['accuracy']:.4f}  "
            f"macro-F1 {m['macro_f1']:.4f}  overall_score ({m['metric']}) {m['overall_score']:.4f}  "
            f"{gate}  per label: " + ", ".join(f"{k} {v['f1']:.3f}" for k, v in m["per_intent"].items()),
            "table": None,
        }

    def smoke(self, info: VersionInfo, settings: Settings, texts_count: int) -> dict[str, Any]:
        examples = read_prepared_sentiment(info.path / SENTIMENT_DIR / DATA_SUBDIR).validation[:texts_count]
        texts = [e.text for e in examples] or ["hola"]
        model = self.load(info, settings)
        answers = model.predict(texts)
        for text, answer in zip(texts, answers):
            if answer["label"] not in model.labels or not usable_confidence(answer["confidence"]):
                raise HotelbotError(f"{info.name} returned an unusable sentiment for {text!r}: {answer}")
        return {"texts": len(texts), "correct": sum(a["label"] == e.intent for a, e in zip(answers, examples))}

    def load_own(self, info: VersionInfo) -> Any:
        return SentimentClassifier.from_version(info)

    def joint_view(self, runner: Any) -> Any:
        from ..nlu.runtime import JointSentiment  # on use: a joint version only (it imports the entity tagger)

        return JointSentiment(runner)

    def export(self, info: VersionInfo, fmt: str, target: Path, settings: Settings) -> dict[str, Any]:
        self.refuse_joint_export(info, fmt)
        # the export's machinery: on use
        from ..exporting import onnx_classifier_card, onnx_runtime_export, sentence_classifier_hf

        if fmt == "onnx":
            what = "sentiment classifier"
            graphs = onnx_runtime_export(info.path / SENTIMENT_DIR, target, [CLASSIFIER_FILE], what, info.name)
            return onnx_classifier_card(target, graphs, info.name, what)
        predictor = SentimentClassifier.from_version(info, TORCH).predictor  # the weights, whatever serves
        return sentence_classifier_hf(predictor.model, predictor.tokenizer, target, "sentiment classifier", info.name)

    def empty_analysis(self) -> dict[str, Any]:
        return {"sentiment": None}

    def analysis_text(self, row: dict[str, Any]) -> str:
        s = row["sentiment"]
        return "" if s is None else f"\tsentiment={s['label']} {s['confidence']:.2f}"

    def analyze(
        self, loaded: Any, texts: Sequence[str], rows: list[dict[str, Any]], *, top_k: int, batch_size: int
    ) -> None:
        for row, answer in zip(rows, loaded.predict(texts, batch_size=batch_size)):
            row["sentiment"] = answer

    def report_section(self, path: Path, metadata: dict[str, Any]) -> dict[str, Any] | None:
        return labels_report_section(path, metadata.get(self.name), self.name, "per_intent")


__all__ = ["SentimentComponent"]
