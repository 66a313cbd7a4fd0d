"""Fitting the joint NLU model: one encoder, three heads (intents, sentiment, entity BIO tags), trained
together with the Hugging Face Trainer on the three prepared data sets (no registry involved).

How the tasks mix: the three training sets (their texts differ) are concatenated into one data set whose
rows say which task they train (``task_ids``). Every epoch visits every row of every task once, in batches
drawn from the whole union (grouped by length, seeded), so a batch mixes the tasks in proportion to their
sizes (on the shipped data about 2 intent rows : 1 sentiment : 1 entity row). A batch's loss is the sum,
over the tasks present in it, of that task's mean loss times its weight (``TrainingConfig`` has none of
these: ``task_weights``, 1.0 each by default, are recorded in classifier.json). The best epoch is the one
with the highest ``nlu_score``: the mean of intent macro-F1, sentiment macro-F1 and entity micro-F1 on
their validation splits.

Every task reads the SAME input as the intent classifier: ``query_prefix + clean_text(text)``. Entity
examples are cleaned with :func:`~hotelbot_cli.data.clean_text_with_offsets` and their spans moved into
the cleaned text (the runtime maps predicted spans back to the caller's raw text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, cast

from ...data import Example, clean_text_with_offsets
from ...errors import DataError
from ...evaluation import classification_metrics
from ...training.calibration import apply_threshold, calibrate_threshold
from ...training.classify import FitResult, _initial_model, _softmax
from ...training.loop import FitStats, train_best_epoch
from ...training.monitor import SystemMonitor
from ..entities.tagger import (
    EntityExample,
    Span,
    bio_tags,
    decode_token_logits,
    entity_metrics,
    spans_to_tags,
    token_char_spans,
)

if TYPE_CHECKING:
    from ...config import TrainingConfig
    from ...training.events import Listener
    from ...training.tracking import MlflowTracker

IGNORE = -100
SCORE = "nlu_score"
DEFAULT_TASK_WEIGHTS = {"intents": 1.0, "sentiment": 1.0, "entities": 1.0}
MIXING = (
    "the three training sets are concatenated and every epoch visits each row once, in seeded random "
    "batches grouped by length, so a batch mixes the tasks in proportion to their sizes; a batch's loss "
    "is the weighted sum of each present task's mean loss"
)


@dataclass
class TaskData:
    """The three prepared splits the joint model trains on (intent and sentiment texts are cleaned; entity
    texts are raw, with character spans)."""

    intents_train: list[Example]
    intents_validation: list[Example]
    intent_labels: list[str]
    sentiment_train: list[Example]
    sentiment_validation: list[Example]
    sentiment_labels: list[str]
    entities_train: list[EntityExample]
    entities_validation: list[EntityExample]
    entity_labels: list[str]


@dataclass
class JointFitResult(FitResult):
    """The intent classifier's FitResult (``metrics``: intents, threshold applied) plus the other tasks."""

    sentiment_metrics: dict[str, Any] = field(default_factory=dict)
    entity_metrics: dict[str, Any] = field(default_factory=dict)
    truncated_entities: int = 0
    dropped_spans: int = 0


def cleaned_entity_example(example: EntityExample) -> tuple[EntityExample, int]:
    """``example`` in cleaned-text coordinates (what the joint model reads), and how many of its spans
    vanished in cleaning (a span of only control characters; none in well-formed data)."""
    cleaned, offsets = clean_text_with_offsets(example.text)
    spans, dropped = [], 0
    for span in example.entities:
        inside = [i for i, (s, e) in enumerate(offsets) if s >= span.start and e <= span.end]
        if not inside:
            dropped += 1
            continue
        spans.append(Span(inside[0], inside[-1] + 1, span.label))
    return EntityExample(cleaned, tuple(spans)), dropped


def _sentence_rows(
    examples: Sequence[Example], tokenizer: Any, prefix: str, max_length: int, label_to_id: dict[str, int], task: int
) -> list[dict[str, Any]]:
    if not examples:
        return []
    enc = tokenizer([prefix + e.text for e in examples], truncation=True, max_length=max_length)
    return [
        {
            "input_ids": list(ids),
            "attention_mask": list(mask),
            "labels": label_to_id[e.intent],
            "task_ids": task,
            "token_labels": [IGNORE] * len(ids),
            "length": len(ids),
        }
        for e, ids, mask in zip(examples, enc["input_ids"], enc["attention_mask"])
    ]


def _entity_rows(
    examples: Sequence[EntityExample], tokenizer: Any, prefix: str, max_length: int, tag_to_id: dict[str, int]
) -> tuple[list[dict[str, Any]], list[list[Any]], int]:
    """(rows, each example's token character spans, gold entities lost to truncation)."""
    from ...modeling import TASK_ENTITIES  # modeling imports torch

    rows, all_spans, lost = [], [], 0
    for example in examples:
        enc = tokenizer(
            prefix + example.text,
            truncation=True,
            max_length=max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        spans = token_char_spans(example.text, enc["offset_mapping"], enc["special_tokens_mask"], len(prefix))
        covered = max((s[1] for s in spans if s is not None), default=0)
        lost += sum(1 for s in example.entities if s.end > covered)
        tags = spans_to_tags(example.entities, spans)
        rows.append(
            {
                "input_ids": list(enc["input_ids"]),
                "attention_mask": list(enc["attention_mask"]),
                "labels": IGNORE,
                "task_ids": TASK_ENTITIES,
                "token_labels": [IGNORE if t is None else tag_to_id[t] for t in tags],
                "length": len(enc["input_ids"]),
            }
        )
        all_spans.append(spans)
    return rows, all_spans, lost


class MultiTaskCollator:
    """Pads input ids (the tokenizer's pad id), attention masks (0) and token labels (-100) to the batch's
    longest row; ``labels``, ``task_ids`` and ``row_ids`` (the row's index: the Trainer's evaluation batches
    are length-grouped, so predictions come back out of order) are one per row. Other keys are dropped."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)

        def padded(key: str, value: int) -> Any:
            return torch.tensor([list(r[key]) + [value] * (width - len(r[key])) for r in rows], dtype=torch.long)

        return {
            "input_ids": padded("input_ids", self.pad_id),
            "attention_mask": padded("attention_mask", 0),
            "token_labels": padded("token_labels", IGNORE),
            "labels": torch.tensor([int(r["labels"]) for r in rows], dtype=torch.long),
            "row_ids": torch.tensor([int(r["row_ids"]) for r in rows], dtype=torch.long),
            "task_ids": torch.tensor([int(r["task_ids"]) for r in rows], dtype=torch.long),
        }


def _initial_joint_model(
    cfg: TrainingConfig, data: TaskData, models_dir: Path, parent_dir: Path | None, task_weights: dict[str, float]
) -> tuple[Any, Any, dict[str, Any]]:
    """The joint model on the base encoder, or (incremental) on the parent's: the parent's intent head
    extended with any new intent (as the classifier's incremental training does), and its sentiment and
    entity heads kept when the parent is a joint model with the same labels."""
    import torch

    from ...modeling import ClassifierConfig, MultiTaskClassifier  # imports torch

    base, tokenizer, resolved = _initial_model(cfg, data.intent_labels, models_dir, parent_dir)
    config = ClassifierConfig(
        **{
            **base.classifier_config.to_dict(),
            "tasks": {
                "sentiment": {"labels": list(data.sentiment_labels)},
                "entities": {"labels": list(data.entity_labels), "tags": bio_tags(data.entity_labels)},
                "task_weights": dict(task_weights),
                "input": "query_prefix + clean_text(text) for every task",
            },
        }
    )
    model = MultiTaskClassifier(base.encoder, config)
    with torch.no_grad():
        model.head.weight.copy_(base.head.weight)
        model.head.bias.copy_(base.head.bias)
    if parent_dir is not None:
        from ...modeling import load_classifier  # modeling imports torch

        parent, _ = load_classifier(parent_dir)
        old = parent.classifier_config.tasks or {}
        # (casts for mypy only: config was built with tasks; a parent with those heads is a joint model)
        tasks, joint_parent = cast("dict[str, Any]", config.tasks), cast(MultiTaskClassifier, parent)
        with torch.no_grad():
            if (old.get("sentiment") or {}).get("labels") == tasks["sentiment"]["labels"]:
                model.sentiment_head.load_state_dict(joint_parent.sentiment_head.state_dict())
            if (old.get("entities") or {}).get("tags") == tasks["entities"]["tags"]:
                model.entity_head.load_state_dict(joint_parent.entity_head.state_dict())
    return model, tokenizer, resolved


def fit_joint(
    cfg: TrainingConfig,
    metric: str,
    data: TaskData,
    models_dir: Path,
    *,
    task_weights: dict[str, float] | None = None,
    listener: Listener | None = None,
    tracker: MlflowTracker | None = None,
    monitor: SystemMonitor | None = None,
    parent_dir: Path | None = None,
) -> JointFitResult:
    """Fine-tune the joint model (see the module docstring) and measure every task on its validation split
    with the best epoch's weights; the intents' out-of-scope threshold is calibrated as the classifier's."""
    import numpy as np

    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from transformers import set_seed

    from ...modeling import TASK_INTENT, TASK_SENTIMENT, freeze_bottom_layers, should_freeze  # imports torch

    if not (data.intents_train and data.sentiment_train and data.entities_train):
        raise DataError("the joint NLU model needs training data for intents, sentiment and entities")
    monitor = monitor or SystemMonitor()
    weights = {**DEFAULT_TASK_WEIGHTS, **(task_weights or {})}
    set_seed(cfg.seed)
    model, tokenizer, resolved = _initial_joint_model(cfg, data, models_dir, parent_dir, weights)
    config = model.classifier_config
    intent_labels = list(config.labels)
    intent_ids = {label: i for i, label in enumerate(intent_labels)}
    sentiment_ids = {label: i for i, label in enumerate(data.sentiment_labels)}
    tags = config.tasks["entities"]["tags"]
    tag_ids = {t: i for i, t in enumerate(tags)}
    frozen = model.freeze_word_embeddings() if should_freeze(cfg.freeze_embeddings, model.encoder) else 0
    frozen += freeze_bottom_layers(model.encoder, cfg.freeze_layers)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.label_smoothing = cfg.label_smoothing  # the intents' loss, as the separate classifier's
    if cfg.class_weights:
        import torch

        counts = np.bincount([intent_ids[e.intent] for e in data.intents_train], minlength=len(intent_labels)).astype(
            "float64"
        )
        model.class_weights = torch.tensor(
            len(data.intents_train) / (len(intent_labels) * np.maximum(counts, 1.0)), dtype=torch.float32
        )
    prefix, max_length = config.query_prefix, cfg.max_length
    cleaned_train: list[EntityExample]
    cleaned_val: list[EntityExample]
    cleaned_train, cleaned_val, dropped = [], [], 0
    for source, target in ((data.entities_train, cleaned_train), (data.entities_validation, cleaned_val)):
        for example in source:
            cleaned, lost_spans = cleaned_entity_example(example)
            target.append(cleaned)
            dropped += lost_spans
    entity_train_rows, _, lost_train = _entity_rows(cleaned_train, tokenizer, prefix, max_length, tag_ids)
    entity_val_rows, val_spans, lost_val = _entity_rows(cleaned_val, tokenizer, prefix, max_length, tag_ids)
    train_rows = (
        _sentence_rows(data.intents_train, tokenizer, prefix, max_length, intent_ids, TASK_INTENT)
        + _sentence_rows(data.sentiment_train, tokenizer, prefix, max_length, sentiment_ids, TASK_SENTIMENT)
        + entity_train_rows
    )
    # Validation in task order (the eval loop is sequential): intents, then sentiment, then entities.
    val_rows = (
        _sentence_rows(data.intents_validation, tokenizer, prefix, max_length, intent_ids, TASK_INTENT)
        + _sentence_rows(data.sentiment_validation, tokenizer, prefix, max_length, sentiment_ids, TASK_SENTIMENT)
        + entity_val_rows
    )
    for i, row in enumerate(train_rows):
        row["row_ids"] = i
    for i, row in enumerate(val_rows):
        row["row_ids"] = i
    n_int, n_sent = len(data.intents_validation), len(data.sentiment_validation)
    intent_truth = [e.intent for e in data.intents_validation]
    sentiment_truth = [e.intent for e in data.sentiment_validation]
    entity_gold = [e.gold() for e in cleaned_val]
    entity_texts = [e.text for e in cleaned_val]
    disable_progress_bar()

    def task_metrics(pred: Any) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
        # The Trainer's evaluation batches are length-grouped too: put the rows back in order by their ids.
        order = np.argsort(np.asarray(pred.label_ids[-1]).reshape(-1), kind="stable")
        intent_logits, sentiment_logits, token_logits = (np.asarray(p)[order] for p in pred.predictions)
        intent_probs = _softmax(np.asarray(intent_logits, dtype="float64")[:n_int])
        sentiment_pred = [
            data.sentiment_labels[i] for i in np.asarray(sentiment_logits)[n_int : n_int + n_sent].argmax(axis=-1)
        ]
        decoded = decode_token_logits(np.asarray(token_logits)[n_int + n_sent :], val_spans, tags, entity_texts)
        intents = classification_metrics(
            intent_truth, apply_threshold(intent_probs, intent_labels, None), intent_labels, metric
        )
        sentiment = classification_metrics(sentiment_truth, sentiment_pred, data.sentiment_labels, metric)
        entities = entity_metrics(entity_gold, [{(k, s, e) for k, s, e, _ in d} for d in decoded], data.entity_labels)
        return intent_probs, intents, sentiment, entities

    def compute_metrics(pred: Any) -> dict[str, float]:
        _, intents, sentiment, entities = task_metrics(pred)
        return {
            "accuracy": intents["accuracy"],
            "macro_f1": intents["macro_f1"],
            "sentiment_macro_f1": sentiment["macro_f1"],
            "entities_micro_f1": entities["micro_f1"],
            SCORE: (intents[metric] + sentiment[metric] + entities["micro_f1"]) / 3,
        }

    heads = ("head.", "sentiment_head.", "entity_head.")
    run = train_best_epoch(
        cfg,
        model,
        "hotelbot-nlu-",
        Dataset.from_list(train_rows),
        Dataset.from_list(val_rows),
        MultiTaskCollator(int(tokenizer.pad_token_id or 0)),
        compute_metrics,
        SCORE,
        listener=listener,
        tracker=tracker,
        monitor=monitor,
        learning_rate_of=lambda name, param: cfg.head_learning_rate if name.startswith(heads) else None,
        label_names=["labels", "token_labels", "row_ids"],
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        length_column_name="length",
    )
    intent_probs, _, sentiment, entities = task_metrics(run.validation)
    threshold, argmax_metrics = (
        calibrate_threshold(intent_probs, intent_truth, intent_labels, metric)
        if cfg.calibrate_oos_threshold
        else (
            None,
            classification_metrics(
                intent_truth, apply_threshold(intent_probs, intent_labels, None), intent_labels, metric
            ),
        )
    )
    config.oos_threshold = threshold
    intents = classification_metrics(
        intent_truth, apply_threshold(intent_probs, intent_labels, threshold), intent_labels, metric
    )
    intents["out_of_scope_threshold"] = threshold
    entities["truncated_entities"] = lost_val
    return JointFitResult(
        model=model,
        tokenizer=tokenizer,
        resolved=resolved,
        labels=intent_labels,
        metrics=intents,
        argmax_metrics=argmax_metrics,
        threshold=threshold,
        sentiment_metrics=sentiment,
        entity_metrics=entities,
        truncated_entities=lost_train + lost_val,
        dropped_spans=dropped,
        **FitStats.of(run.trainer, run.best.history, run.best.best_epoch, run.duration, frozen, trainable),
    )


__all__ = [
    "DEFAULT_TASK_WEIGHTS",
    "JointFitResult",
    "MIXING",
    "MultiTaskCollator",
    "SCORE",
    "TaskData",
    "cleaned_entity_example",
    "fit_joint",
]
