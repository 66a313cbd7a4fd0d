"""Fine-tune a sentence classifier (encoder + linear head) with the shared Trainer loop: used by the intent
classifier's training, HPO trials, cross-validation folds and the sentiment component."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from ..config import TrainingConfig
from ..data import Example
from ..errors import DataError
from ..evaluation import classification_metrics
from .calibration import apply_threshold, calibrate_threshold
from .events import Listener
from .loop import FitStats, check_precision, train_best_epoch
from .monitor import SystemMonitor
from .tracking import MlflowTracker

SCALAR_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "weighted_f1")


def _tokenized(examples, tokenizer, prefix: str, max_length: int, label_to_id: dict[str, int]):
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # the Rich bar is the progress display; stderr stays readable in CI logs
    ds = Dataset.from_dict(
        {"text": [prefix + e.text for e in examples], "label": [label_to_id[e.intent] for e in examples]}
    )

    def encode(batch):
        out = tokenizer(batch["text"], truncation=True, max_length=max_length)
        out["length"] = [len(ids) for ids in out["input_ids"]]  # for group_by_length; the collator drops it
        return out

    return ds.map(encode, batched=True, remove_columns=["text"])


@dataclass
class FitResult(FitStats):
    model: Any
    tokenizer: Any
    resolved: Any
    labels: list[str]
    metrics: dict[str, Any]  # with the out-of-scope threshold applied
    argmax_metrics: dict[str, Any]  # plain argmax, for comparison
    threshold: float | None


def _softmax(logits: Any) -> Any:
    import numpy as np

    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _initial_model(cfg: TrainingConfig, labels: list[str], models_dir: Path, parent_dir: Path | None):
    """A fresh classifier on the base model, or (incremental) the parent's weights with its head extended."""
    import torch

    # modeling imports torch at import time: only a fit pays for it
    from ..modeling import ClassifierConfig, SentenceClassifier, load_base_encoder, load_classifier, resolve_base_model

    if parent_dir is not None:
        parent, tokenizer = load_classifier(parent_dir)
        old = parent.classifier_config
        missing = [label for label in old.labels if label not in labels]
        if missing:
            raise DataError(
                f"incremental training keeps every intent of the parent; missing from the data: {', '.join(missing)}"
            )
        new_labels = list(old.labels) + [label for label in labels if label not in old.labels]
        model = SentenceClassifier(
            parent.encoder,
            ClassifierConfig(
                labels=new_labels,
                pooling=old.pooling,
                query_prefix=old.query_prefix,
                max_length=cfg.max_length,
                dropout=cfg.dropout,
                base_model=old.base_model,
            ),
        )
        with torch.no_grad():  # old rows kept, new rows freshly initialised
            model.head.weight[: len(old.labels)] = parent.head.weight
            model.head.bias[: len(old.labels)] = parent.head.bias
        resolved = {
            "spec": old.base_model,
            "location": str(parent_dir),
            "query_prefix": old.query_prefix,
            "pooling": old.pooling,
        }
        return model, tokenizer, resolved
    base = resolve_base_model(cfg.base_model, models_dir)
    tokenizer, encoder = load_base_encoder(base)
    model = SentenceClassifier(
        encoder,
        ClassifierConfig(
            labels=list(labels),
            pooling=cfg.pooling or base.pooling,
            query_prefix=base.query_prefix,
            max_length=cfg.max_length,
            dropout=cfg.dropout,
            base_model=cfg.base_model,
        ),
    )
    resolved = {
        "spec": cfg.base_model,
        "location": base.location,
        "query_prefix": base.query_prefix,
        "pooling": cfg.pooling or base.pooling,
    }
    return model, tokenizer, resolved


def fit_classifier(
    cfg: TrainingConfig,
    metric: str,
    train: list[Example],
    validation: list[Example],
    labels: list[str],
    models_dir: Path,
    *,
    listener: Listener | None = None,
    tracker: MlflowTracker | None = None,
    monitor: SystemMonitor | None = None,
    parent_dir: Path | None = None,
    extra_callbacks: Sequence[Any] = (),
) -> FitResult:
    """Fine-tune one classifier (no registry involved): used by train, HPO trials and CV folds.

    ``extra_callbacks`` are further Trainer callbacks (benchmarks use one to snapshot each epoch).
    """
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, set_seed

    from ..modeling import freeze_bottom_layers, should_freeze  # imports torch

    monitor = monitor or SystemMonitor()
    cfg = replace(cfg, precision=check_precision(cfg, auto_bf16=True))  # auto: bf16 on a CPU with native bf16
    set_seed(cfg.seed)
    model, tokenizer, resolved = _initial_model(cfg, labels, models_dir, parent_dir)
    labels = list(model.classifier_config.labels)
    label_to_id = {label: i for i, label in enumerate(labels)}
    frozen = model.freeze_word_embeddings() if should_freeze(cfg.freeze_embeddings, model.encoder) else 0
    frozen += freeze_bottom_layers(model.encoder, cfg.freeze_layers, auto=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.label_smoothing = cfg.label_smoothing
    if cfg.class_weights:
        counts = np.bincount([label_to_id[e.intent] for e in train], minlength=len(labels)).astype("float64")
        weights = len(train) / (len(labels) * np.maximum(counts, 1.0))
        model.class_weights = torch.tensor(weights, dtype=torch.float32)
    prefix = model.classifier_config.query_prefix
    train_ds = _tokenized(train, tokenizer, prefix, cfg.max_length, label_to_id)
    val_ds = _tokenized(validation, tokenizer, prefix, cfg.max_length, label_to_id)

    def compute_metrics(pred) -> dict[str, float]:
        y_pred = [labels[i] for i in pred.predictions.argmax(axis=-1)]
        y_true = [labels[i] for i in pred.label_ids]
        full = classification_metrics(y_true, y_pred, labels, metric)
        return {k: full[k] for k in SCALAR_METRICS}

    run = train_best_epoch(
        cfg,
        model,
        "hotelbot-trainer-",
        train_ds,
        val_ds,
        DataCollatorWithPadding(tokenizer),
        compute_metrics,
        metric,
        listener=listener,
        tracker=tracker,
        monitor=monitor,
        extra_callbacks=extra_callbacks,
        # Random batches padded to their longest text spend ~1.5x the real tokens on short chatbot
        # messages; grouping similar lengths (still shuffled, seeded) trains on fewer pad tokens.
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        length_column_name="length",
    )
    output = run.validation
    probs = _softmax(np.asarray(output.predictions, dtype="float64"))
    y_true = [labels[i] for i in output.label_ids]
    threshold, argmax_metrics = (
        calibrate_threshold(probs, y_true, labels, metric)
        if cfg.calibrate_oos_threshold
        else (None, classification_metrics(y_true, apply_threshold(probs, labels, None), labels, metric))
    )
    model.classifier_config.oos_threshold = threshold
    metrics = classification_metrics(y_true, apply_threshold(probs, labels, threshold), labels, metric)
    metrics["out_of_scope_threshold"] = threshold
    return FitResult(
        model=model,
        tokenizer=tokenizer,
        resolved=resolved,
        labels=labels,
        metrics=metrics,
        argmax_metrics=argmax_metrics,
        threshold=threshold,
        **FitStats.of(run.trainer, run.best.history, run.best.best_epoch, run.duration, frozen, trainable),
    )
