"""Sentiment: positive / neutral / negative, a sentence classifier like the intent model.

Data (``datasets/sentimiento_es.jsonl``): one ``{"text", "label"}`` per line. :func:`prepare_sentiment`
validates (known labels, non-empty texts, a text given two labels), cleans texts like intent data
(:func:`~hotelbot_cli.data.clean_text`), drops exact duplicates and makes a stratified seeded split.

Training reuses :func:`~hotelbot_cli.training.fit_classifier` (the same encoder + pooling + linear head,
Trainer, callbacks and best-epoch keeping) with the out-of-scope threshold turned off, and publishes a
new registry version whose ``sentiment/`` holds the model (the classifier's ``model/`` layout, written by
:func:`~hotelbot_cli.modeling.save_classifier`), ``metrics.json``, ``training_history.json`` and the data
split in ``data/``; the other components are carried over from the source version.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ...data import (
    TRAIN_FILE,
    VALIDATION_FILE,
    Example,
    check_split_fingerprint,
    clean_text,
    fingerprint,
    load_split,
    read_data_text,
    read_manifest,
    stratified_split,
    write_split,
)
from ...errors import DataError, RegistryError
from ...evaluation import classification_metrics
from ...runtime.layout import CLASSIFIER_FILE
from ...runtime.loading import load_dir_predictor
from ...runtime.selection import describe_choice
from ...training.classify import fit_classifier
from ...training.events import TrainingEvent, emitter
from ...training.loop import training_summary
from ..base import ComponentResult, scored_result, training_run
from ..compose import publish_component

if TYPE_CHECKING:
    from ...config import DataConfig, Settings
    from ...registry import ModelRegistry, VersionInfo
    from ...training.events import Listener

log = logging.getLogger("hotelbot.sentiment")

COMPONENT = "sentiment"
SENTIMENT_DIR = "sentiment"
DATA_SUBDIR = "data"
# TRAIN_FILE, VALIDATION_FILE, DATASET_FILE: the prepared split's files, from data.write_split
DATA_FORMAT = "hotelbot-sentiment-data/1"
EXPERIMENT = "hotelbot-sentiment"
SENTIMENT_LABELS = ("negative", "neutral", "positive")
SCALARS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "weighted_f1")


@dataclass
class PreparedSentiment:
    """Examples carry the sentiment label in ``Example.intent`` (the type fit_classifier consumes)."""

    train: list[Example]
    validation: list[Example]
    labels: list[str]
    fingerprint: str
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def to_summary(self) -> dict[str, Any]:
        return {
            "format": DATA_FORMAT,
            "fingerprint": self.fingerprint,
            "labels": self.labels,
            **self.summary,
            "warnings": self.warnings,
        }


def read_sentiment_file(
    path: Path, labels: Sequence[str] = SENTIMENT_LABELS, *, require_labels: bool = True
) -> tuple[list[Example], list[dict[str, str]]]:
    """Read, validate and clean a ``{"text", "label"}`` JSONL file. DataError names the file and line."""
    path = Path(path)
    raw = read_data_text(path, 'a .jsonl file of {"text", "label"} lines')
    out: list[Example] = []
    seen: dict[str, tuple[str, int]] = {}
    duplicates = 0
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(record, dict) or any(k not in record for k in ("text", "label")):
            raise DataError(f'{where}: expected an object with "text" and "label"')
        text, label = record["text"], record["label"]
        if not isinstance(text, str) or not isinstance(label, str):
            raise DataError(f'{where}: "text" and "label" must be strings')
        text = clean_text(text)
        if not text:
            raise DataError(f"{where}: empty text")
        if label not in labels:
            raise DataError(f"{where}: unknown label {label!r}; use one of {', '.join(labels)}")
        if text in seen:
            if seen[text][0] != label:
                raise DataError(
                    f"{where}: text {text!r} is {label!r} here and {seen[text][0]!r} at line {seen[text][1]}"
                )
            duplicates += 1
            continue
        seen[text] = (label, number)
        out.append(Example(text, label))
    present = sorted({e.intent for e in out})
    if require_labels and len(present) < 2:
        raise DataError(f"{path}: found {len(present)} sentiment label(s); at least 2 are needed")
    warnings = []
    if duplicates:
        warnings.append({"code": "duplicates_removed", "message": f"{duplicates} exact duplicate text(s) removed"})
    return out, warnings


def prepare_sentiment(path: Path, validation_split: float = 0.2, seed: int = 42) -> PreparedSentiment:
    """Load, validate, clean and split sentiment data. Raises DataError; writes nothing."""
    examples, warnings = read_sentiment_file(path)
    train, validation = stratified_split(examples, validation_split, seed)
    counts = Counter(e.intent for e in examples)
    labels = [label for label in SENTIMENT_LABELS if counts[label]]
    missing = [label for label in SENTIMENT_LABELS if not counts[label]]
    if missing:
        warnings.append({"code": "missing_labels", "message": f"no examples of {', '.join(missing)}"})
    if max(counts.values()) / min(counts.values()) > 3:
        warnings.append(
            {
                "code": "class_imbalance",
                "message": "class imbalance above 3:1: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
            }
        )
    summary = {
        "source": str(path),
        "examples": len(examples),
        "train_size": len(train),
        "validation_size": len(validation),
        "examples_per_label": {k: counts[k] for k in labels},
        "validation_split": validation_split,
        "seed": seed,
    }
    return PreparedSentiment(train, validation, labels, fingerprint(train, validation), summary, warnings)


def write_prepared_sentiment(prepared: PreparedSentiment, out_dir: Path) -> Path:
    """train.jsonl, validation.jsonl, then dataset.json (the completion marker), each atomically."""

    def records(examples: Sequence[Example]) -> Iterator[dict[str, str]]:
        return ({"text": e.text, "label": e.intent} for e in examples)

    return write_split(out_dir, records(prepared.train), records(prepared.validation), prepared.to_summary())


def read_prepared_sentiment(directory: Path) -> PreparedSentiment:
    directory = Path(directory)
    summary = read_manifest(
        directory, DATA_FORMAT, "sentiment", "run `hotelbot prepare --sentiment datasets/sentimiento_es.jsonl`"
    )
    train, _ = read_sentiment_file(directory / TRAIN_FILE, require_labels=False)
    validation, _ = read_sentiment_file(directory / VALIDATION_FILE, require_labels=False)
    check_split_fingerprint(
        fingerprint(train, validation), summary, directory, "sentiment", "run `hotelbot prepare --sentiment` again"
    )
    labels = list(summary.pop("labels"))
    fp = summary.pop("fingerprint")
    warnings = summary.pop("warnings", [])
    summary.pop("format", None)
    return PreparedSentiment(train, validation, labels, fp, summary, warnings)


def load_sentiment_data(source: Path, data: DataConfig | None = None) -> PreparedSentiment:
    """A prepared directory (has dataset.json) is read; a .jsonl file is validated and split now."""
    return load_split(source, data, read_prepared_sentiment, prepare_sentiment)


def train_sentiment(
    settings: Settings,
    data: Path,
    registry: ModelRegistry,
    listener: Listener | None = None,
    *,
    force: bool = False,
    source: str | None = None,
) -> ComponentResult:
    """Fine-tune the sentiment classifier on ``data`` (a .jsonl file or a prepared directory) and publish a
    new version carrying over the other components of ``source`` (default: deployed, else newest).

    One MLflow run (experiment ``hotelbot-sentiment``); no out-of-scope threshold. Raises
    AlreadyTrainedError when a version's sentiment model was trained on the same data and config."""
    from ...modeling import save_classifier  # imports torch

    emit = emitter(listener)
    prepared = load_sentiment_data(Path(data), settings.data)
    cfg = replace(settings.training, calibrate_oos_threshold=False)
    metric = settings.validation.metric
    config_record = {"training_config": cfg.to_dict(), "metric": metric, "labels": prepared.labels}
    with training_run(
        settings,
        registry,
        COMPONENT,
        EXPERIMENT,
        prepared,
        config_record,
        {**cfg.to_dict(), "labels": ",".join(prepared.labels)},
        force=force,
        source=Path(data),
    ) as (tracker, monitor):
        fit = fit_classifier(
            cfg,
            metric,
            prepared.train,
            prepared.validation,
            prepared.labels,
            settings.paths.models_dir,
            listener=listener,
            tracker=tracker,
            monitor=monitor,
        )
        metrics = fit.metrics
        tracker.log_metrics({f"final_{k}": metrics[k] for k in SCALARS}, step=fit.steps)
        summary = {
            "metrics": {
                **{k: metrics[k] for k in SCALARS},
                "overall_score": metrics["overall_score"],
                "metric": metrics["metric"],
                "best_epoch": fit.best_epoch,
                "per_label_f1": {k: v["f1"] for k, v in metrics["per_intent"].items()},
            },
            "labels": fit.labels,
            "base_model": fit.resolved,
            "max_length": cfg.max_length,
            "dataset_fingerprint": prepared.fingerprint,
            "dataset": {
                "source": prepared.summary.get("source"),
                "train_size": len(prepared.train),
                "validation_size": len(prepared.validation),
            },
            "config": config_record,
            "training": training_summary(fit),
            "mlflow_run_id": tracker.run_id,
        }

        def write(target: Path) -> None:
            save_classifier(fit.model, fit.tokenizer, target)
            # ONNX beside the weights: serving and deploy then never import torch for it. Only the chosen
            # graph is kept, its word embeddings read from the weights' own file (stored once).
            from ..intents.train import export_inference  # the ONNX export (the classifier's): on use

            summary["inference"] = export_inference(
                fit,
                target,
                prepared.validation,
                settings.validation.runtime_tolerance_points,
                recheck_margin=0.0,
                quantize_embeddings=False,
                keep_unchosen=False,
            )
            if "runtimes" in summary["inference"]:
                emit(TrainingEvent("status", message=describe_choice(summary["inference"])))
            write_prepared_sentiment(prepared, target / DATA_SUBDIR)

        info, carried = publish_component(
            registry,
            COMPONENT,
            "sentiment-classifier",
            source=source,
            write=write,
            metrics=metrics,
            history={"epochs": fit.history, "log": fit.log_history},
            summary=summary,
            monitor=monitor,
            tracker=tracker,
            listener=listener,
        )
    log.info("trained sentiment %s: %s %.4f in %.1fs", info.name, metric, metrics["overall_score"], fit.duration)
    emit(
        TrainingEvent(
            "end",
            fit.steps,
            fit.steps,
            fit.epochs_run,
            cfg.epochs,
            metrics={k: metrics[k] for k in SCALARS},
            message=info.name,
        )
    )
    return scored_result(COMPONENT, info, metrics, fit.duration, tracker.run_id, fit.history, carried)


class SentimentClassifier:
    """A version's loaded sentiment model (an :class:`~hotelbot_cli.runtime.TorchPredictor` underneath)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.labels = list(predictor.labels)
        self.version = predictor.version

    @classmethod
    def from_version(cls, info: VersionInfo, runtime: str | None = None) -> SentimentClassifier:
        """The version's own sentiment model (a joint NLU version's head: the component's ``load``), on the
        runtime its ``sentiment/runtime.json`` chose (``runtime`` or HOTELBOT_RUNTIME: another one; a version
        trained before the sentiment model had an ONNX export runs on torch)."""
        path = info.path / SENTIMENT_DIR
        if not (path / CLASSIFIER_FILE).is_file():
            raise RegistryError(
                f"version {info.name} has no sentiment model", hint="train one: hotelbot train --model-type sentiment"
            )
        return cls(load_dir_predictor(path, info.name, f"{info.name}'s sentiment model", runtime))

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """Per text: {"label", "confidence"} (texts are cleaned like the training data)."""
        import numpy as np  # on use: importing the component stays light

        probs = np.asarray(self.predictor.probabilities(texts, batch_size), dtype=np.float32)
        if not len(probs):
            return []
        best = probs.argmax(axis=-1)
        confidence = probs[np.arange(len(probs)), best]
        return [{"label": self.labels[int(i)], "confidence": round(float(c), 6)} for c, i in zip(confidence, best)]

    def predict_labels(self, texts: Sequence[str], batch_size: int = 32) -> list[str]:
        return [p["label"] for p in self.predict(texts, batch_size)]


def evaluate_sentiment(
    info: VersionInfo, metric: str = "macro_f1", data: Path | None = None, model: Any = None
) -> dict[str, Any]:
    """classification_metrics of a version's saved sentiment model on its own validation split (or ``data``:
    a prepared directory's validation split, or all of a .jsonl file)."""
    if data is None:
        examples = read_prepared_sentiment(info.path / SENTIMENT_DIR / DATA_SUBDIR).validation
        source = f"{info.name}/{SENTIMENT_DIR}/{DATA_SUBDIR}/{VALIDATION_FILE}"
    elif Path(data).is_dir():
        examples, source = read_prepared_sentiment(Path(data)).validation, str(data)
    else:
        examples, source = read_sentiment_file(Path(data))[0], str(data)
    model = model if model is not None else SentimentClassifier.from_version(info)
    metrics = classification_metrics(
        [e.intent for e in examples], model.predict_labels([e.text for e in examples]), model.labels, metric
    )
    metrics["data_source"] = source
    return metrics


__all__ = [
    "SENTIMENT_LABELS",
    "PreparedSentiment",
    "SentimentClassifier",
    "evaluate_sentiment",
    "load_sentiment_data",
    "prepare_sentiment",
    "read_prepared_sentiment",
    "read_sentiment_file",
    "train_sentiment",
    "write_prepared_sentiment",
]
