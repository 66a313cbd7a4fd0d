"""The intent classifier: an encoder + linear head over the hotel's intents, with the out-of-scope
threshold calibrated on validation. Its files predate components and live at the top of a version
(model/, metrics.json, training_history.json, data/, report/; versions written before
``hotelbot export`` also hold intent_classifier.pt), and so does its summary in the metadata (labels,
metrics, config, ...)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ...data import VALIDATION_FILE, read_jsonl_examples
from ...errors import HotelbotError
from ...runtime import TorchPredictor, load_predictor
from ...runtime.detector import MEMORY_FILE
from ...runtime.layout import CLASSIFIER_FILE, MODEL_SUBDIR
from ..base import Component, ComponentResult, TrainRequest

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import VersionInfo


class IntentClassifier(Component):
    name = "classifier"
    model_type = "classifier"
    distributed = True  # fits on the Trainer: torchrun / accelerate launch
    kind = "intent-classifier"
    experiment = "hotelbot-classifier"
    description = "intent classifier (encoder + linear head, out-of-scope threshold)"
    paths = ("model", "intent_classifier.pt", "metrics.json", "training_history.json", "data", "report")
    metadata_keys = (
        "labels",
        "base_model",
        "out_of_scope_threshold",
        "out_of_scope_detector",
        "dataset_fingerprint",
        "dataset",
        "config",
        "metrics",
        "training",
        "mlflow_run_id",
        "mlflow_tracking_uri",
        "kind",
        "nlu",
        "inference",
    )
    train_options = ("incremental", "hpo")
    prepare_hint = "hotelbot prepare FILE"
    required = True
    primary = True  # validate's headline metrics and per-intent regression check are the classifier's
    metric = "macro_f1"  # settings.validation.metric chooses the one a training optimises
    gated = True
    analyzes = True
    export_formats = ("pt", "hf", "onnx")

    def summary(self, metadata: dict[str, Any]) -> dict[str, Any]:
        return metadata  # top-level keys: the classifier predates per-component summaries

    def prepared_data(self, settings: Settings, documents: Path | None = None) -> Path | None:
        return Path(settings.paths.data)

    def train(self, request: TrainRequest) -> ComponentResult:
        from .train import train  # (the same package) the fit and the export: on use

        return train(request)

    def smoke(self, info: VersionInfo, settings: Settings, texts_count: int) -> dict[str, Any]:
        examples = read_jsonl_examples(info.path / "data" / VALIDATION_FILE)[:texts_count]
        texts = [e.text for e in examples] or ["hola"]
        predictor = load_predictor(info)
        predictions = predictor.predict(texts, top_k=1)
        labels = set(predictor.labels)
        for p in predictions:
            if p.intent not in labels or not (0.0 <= p.confidence <= 1.0) or math.isnan(p.confidence):
                raise HotelbotError(
                    f"{info.name} returned an unusable prediction for {p.text!r}: {p.intent} {p.confidence}"
                )
        correct = sum(p.intent == e.intent for p, e in zip(predictions, examples))
        return {"texts": len(texts), "correct": correct if examples else None}

    def load(self, info: VersionInfo, settings: Settings | None = None, loaded: dict[str, Any] | None = None) -> Any:
        return load_predictor(info)

    def export(self, info: VersionInfo, fmt: str, target: Path, settings: Settings) -> dict[str, Any]:
        # the export's machinery: on use (predict and serve import this module)
        from ..exporting import onnx_classifier_card, onnx_runtime_export, sentence_classifier_hf

        if fmt == "onnx":
            what = "intent classifier"
            graphs = onnx_runtime_export(
                info.path / MODEL_SUBDIR, target, [CLASSIFIER_FILE, MEMORY_FILE], what, info.name
            )
            return onnx_classifier_card(target, graphs, info.name, what)
        predictor = TorchPredictor.from_version(info)  # modeling.load_classifier of the version's model
        if fmt == "pt":
            from ...modeling import PT_FILE, save_torch_file  # modeling imports torch

            target.mkdir(parents=True, exist_ok=True)
            save_torch_file(predictor.model, target / PT_FILE)
            return {
                "loads_with": f"torch.load('{PT_FILE}', weights_only=True) (the seed's format; "
                "hotelbot_cli.modeling.load_torch_file builds the model)",
                **_knn_memory(info, target),
            }
        facts = sentence_classifier_hf(predictor.model, predictor.tokenizer, target, "intent classifier", info.name)
        facts.update(_knn_memory(info, target))
        if getattr(predictor.config, "tasks", None):  # a joint NLU model: the hf layout has one head
            facts["note"] = (
                "the joint model's sentiment and entity heads are not in this format; "
                "--format pt and --format onnx carry all three"
            )
        return facts

    def empty_analysis(self) -> dict[str, Any]:
        return {"intent": None, "confidence": None, "top_k": [], "fallback": None}

    def analysis_text(self, row: dict[str, Any]) -> str:
        others = ", ".join(f"{t['intent']} {t['confidence']:.2f}" for t in row["top_k"][1:])
        intent = "-" if row["intent"] is None else f"{row['intent']}\t{row['confidence']:.3f}"
        return f"\t{intent}" + (f"\t({others})" if others else "")

    def analyze(
        self, loaded: Any, texts: Sequence[str], rows: list[dict[str, Any]], *, top_k: int, batch_size: int
    ) -> None:
        from ..nlu.runtime import JointRunner  # on use: it imports the entity tagger

        runner = JointRunner.attached(loaded)  # a joint model whose other heads are loaded: one pass for all
        predictions = (
            [a.prediction for a in runner.run(texts, top_k)]
            if runner is not None
            else loaded.predict(texts, top_k=top_k, batch_size=batch_size)
        )
        for row, p in zip(rows, predictions):
            row.update(intent=p.intent, confidence=p.confidence, top_k=p.top_k, fallback=p.fallback)
            if getattr(p, "similarity", None) is not None:  # a kNN out-of-scope detector's score
                row["out_of_scope_similarity"] = p.similarity


def _knn_memory(info: VersionInfo, target: Path) -> dict[str, Any]:
    """A kNN out-of-scope detector's memory copied beside an export (its spec is in classifier.json / head.json)."""
    source = info.path / MODEL_SUBDIR / MEMORY_FILE
    if not source.is_file():
        return {}
    shutil.copyfile(source, target / MEMORY_FILE)
    return {"out_of_scope_memory": MEMORY_FILE}


__all__ = ["IntentClassifier"]
