"""Training the entity tagger: :func:`fit_entity_tagger` (the Trainer fit, no registry involved) and
:func:`train_entities` (fit, export to ONNX, publish a version), apart from the tagger's data, model and
inference (:mod:`.tagger`) so that the ONNX runtime (:mod:`.onnx`) sits between the two: tagger <- onnx <- train.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ...errors import HotelbotError
from ...runtime.selection import describe_choice
from ...training.events import TrainingEvent, emitter
from ...training.loop import FitStats, train_best_epoch, training_summary
from ...training.monitor import SystemMonitor
from ..base import ComponentResult, scored_result, training_run
from ..compose import publish_component
from .onnx import export_entity_onnx
from .tagger import (
    COMPONENT,
    DATA_SUBDIR,
    EXPERIMENT,
    IGNORE,
    METRIC,
    SCALARS,
    EntityConfig,
    EntityExample,
    _require_fast,
    bio_tags,
    decode_token_logits,
    entity_metrics,
    load_entity_data,
    new_token_classifier,
    save_entity_model,
    spans_to_tags,
    token_char_spans,
    write_prepared_entities,
)

if TYPE_CHECKING:
    from ...config import Settings, TrainingConfig
    from ...registry import ModelRegistry
    from ...training.events import Listener
    from ...training.tracking import MlflowTracker

log = logging.getLogger("hotelbot.entities")


@dataclass
class EntityFitResult(FitStats):
    model: Any
    tokenizer: Any
    resolved: dict[str, Any]
    labels: list[str]
    metrics: dict[str, Any]
    truncated_entities: int


def _encode(examples: Sequence[EntityExample], tokenizer: Any, config: EntityConfig, tag_to_id: dict[str, int]):
    """(rows for the Trainer, token char spans per example, gold entities lost to truncation)."""
    rows: list[dict[str, Any]] = []
    spans_per_example = []
    lost = 0
    for example in examples:
        enc = tokenizer(
            config.prefix + example.text,
            truncation=True,
            max_length=config.max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        spans = token_char_spans(example.text, enc["offset_mapping"], enc["special_tokens_mask"], len(config.prefix))
        tags = spans_to_tags(example.entities, spans)
        covered = max((s[1] for s in spans if s is not None), default=0)
        lost += sum(1 for s in example.entities if s.end > covered)
        row = {k: list(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        row["labels"] = [IGNORE if t is None else tag_to_id[t] for t in tags]
        rows.append(row)
        spans_per_example.append(spans)
    return rows, spans_per_example, lost


def fit_entity_tagger(
    cfg: TrainingConfig,
    train: Sequence[EntityExample],
    validation: Sequence[EntityExample],
    labels: Sequence[str],
    models_dir: Path,
    *,
    listener: Listener | None = None,
    tracker: MlflowTracker | None = None,
    monitor: SystemMonitor | None = None,
) -> EntityFitResult:
    """Fine-tune one token classifier with the Trainer (no registry involved), keeping the best epoch by
    validation entity micro-F1, with the classifier's callbacks (progress, best epoch, early stopping,
    system metrics) and two learning rates (encoder, head)."""
    import numpy as np

    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from transformers import DataCollatorForTokenClassification, set_seed

    from ...modeling import freeze_bottom_layers, load_base_encoder, resolve_base_model, should_freeze  # imports torch

    emit = emitter(listener)
    monitor = monitor or SystemMonitor()
    set_seed(cfg.seed)
    base = resolve_base_model(cfg.base_model, models_dir)
    tokenizer, encoder = load_base_encoder(base)
    _require_fast(tokenizer, f"base model {cfg.base_model}")
    config = EntityConfig(
        labels=list(labels), max_length=cfg.max_length, prefix="", dropout=cfg.dropout, base_model=cfg.base_model
    )
    tags = config.tags
    tag_to_id = {t: i for i, t in enumerate(tags)}
    model = new_token_classifier(encoder, config)
    frozen = model.freeze_word_embeddings() if should_freeze(cfg.freeze_embeddings, model.encoder) else 0
    frozen += freeze_bottom_layers(model.encoder, cfg.freeze_layers)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    disable_progress_bar()
    train_rows, _, lost_train = _encode(train, tokenizer, config, tag_to_id)
    val_rows, val_spans, lost_val = _encode(validation, tokenizer, config, tag_to_id)
    if lost_train + lost_val:
        emit(
            TrainingEvent(
                "status",
                message=f"{lost_train + lost_val} entities lie beyond max_length "
                f"{config.max_length} tokens (validation counts them as missed)",
            )
        )
    train_ds = Dataset.from_list(train_rows)
    val_ds = Dataset.from_list(val_rows)
    gold = [e.gold() for e in validation]
    val_texts = [e.text for e in validation]

    def compute_metrics(pred) -> dict[str, float]:
        decoded = decode_token_logits(pred.predictions, val_spans, tags, val_texts)
        full = entity_metrics(gold, [{(k, s, e) for k, s, e, _ in d} for d in decoded], labels)
        ids = np.asarray(pred.label_ids)
        mask = ids != IGNORE
        token_acc = float((np.asarray(pred.predictions).argmax(-1)[mask] == ids[mask]).mean()) if mask.any() else 0.0
        return {**{k: full[k] for k in SCALARS}, "accuracy": token_acc}

    run = train_best_epoch(
        cfg,
        model,
        "hotelbot-entities-",
        train_ds,
        val_ds,
        DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE),
        compute_metrics,
        METRIC,
        listener=listener,
        tracker=tracker,
        monitor=monitor,
    )
    output = run.validation
    decoded = decode_token_logits(output.predictions, val_spans, tags, val_texts)
    metrics = entity_metrics(gold, [{(k, s, e) for k, s, e, _ in d} for d in decoded], labels)
    metrics["truncated_entities"] = lost_val
    resolved = {
        "spec": cfg.base_model,
        "location": base.location,
        "prefix": config.prefix,
        "model_query_prefix": base.query_prefix,
    }
    return EntityFitResult(
        model=model,
        tokenizer=tokenizer,
        resolved=resolved,
        labels=list(labels),
        metrics=metrics,
        truncated_entities=lost_train + lost_val,
        **FitStats.of(run.trainer, run.best.history, run.best.best_epoch, run.duration, frozen, trainable),
    )


def train_entities(
    settings: Settings,
    data: Path,
    registry: ModelRegistry,
    listener: Listener | None = None,
    *,
    force: bool = False,
    source: str | None = None,
) -> ComponentResult:
    """Fine-tune the entity extractor on ``data`` (a .jsonl file or a prepared directory) and publish a
    new version carrying over the other components of ``source`` (default: deployed, else newest).

    One MLflow run (experiment ``hotelbot-entities``). Raises AlreadyTrainedError when a version's
    entity model was trained on the same data and config (``force`` trains anyway)."""
    emit = emitter(listener)
    prepared = load_entity_data(Path(data), settings.data)
    cfg = settings.training
    config_record = {"training_config": cfg.to_dict(), "metric": METRIC, "labels": prepared.labels}
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
        fit = fit_entity_tagger(
            cfg,
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
        tracker.log_metrics({f"final_f1_{label}": v["f1"] for label, v in metrics["per_type"].items()}, step=fit.steps)
        summary = {
            "metrics": {
                **{k: metrics[k] for k in SCALARS},
                "overall_score": metrics["overall_score"],
                "metric": METRIC,
                "best_epoch": fit.best_epoch,
                "per_type_f1": {k: v["f1"] for k, v in metrics["per_type"].items()},
            },
            "labels": prepared.labels,
            "tags": bio_tags(prepared.labels),
            "base_model": fit.resolved,
            "max_length": cfg.max_length,
            "prefix": "",
            "dataset_fingerprint": prepared.fingerprint,
            "dataset": {
                "source": prepared.summary.get("source"),
                "train_size": len(prepared.train),
                "validation_size": len(prepared.validation),
                "entities": prepared.summary.get("entities"),
            },
            "config": config_record,
            "training": training_summary(fit, truncated_entities=fit.truncated_entities),
            "mlflow_run_id": tracker.run_id,
        }

        def write(target: Path) -> None:
            save_entity_model(fit.model, fit.tokenizer, target)
            summary["inference"] = _export_onnx(fit, target, prepared.validation, settings, emit)
            write_prepared_entities(prepared, target / DATA_SUBDIR)

        info, carried = publish_component(
            registry,
            COMPONENT,
            "entity-extractor",
            source=source,
            write=write,
            metrics=metrics,
            history={"epochs": fit.history, "log": fit.log_history},
            summary=summary,
            monitor=monitor,
            tracker=tracker,
            listener=listener,
        )
    log.info("trained entities %s: micro-F1 %.4f in %.1fs", info.name, metrics["micro_f1"], fit.duration)
    emit(
        TrainingEvent(
            "end",
            fit.steps,
            fit.steps,
            fit.epochs_run,
            cfg.epochs,
            metrics={k: metrics[k] for k in ("micro_f1", "macro_f1")},
            message=info.name,
        )
    )
    per_type = "  ".join(f"{k} {v['f1']:.3f}" for k, v in metrics["per_type"].items())
    return scored_result(
        COMPONENT,
        info,
        metrics,
        fit.duration,
        tracker.run_id,
        fit.history,
        carried,
        extra_lines=[f"  F1 per type: {per_type}"],
    )


def _export_onnx(
    fit: Any, target: Path, validation: list[EntityExample], settings: Settings, emit: Any
) -> dict[str, Any]:
    """The ONNX export and runtime choice of the staged tagger (entities/onnx.py); a failure is logged and the
    version runs on torch (the PyTorch weights stay the source of truth)."""

    try:
        inference = export_entity_onnx(
            fit.model, fit.tokenizer, target, validation, settings.validation.runtime_tolerance_points
        )
    except (HotelbotError, ImportError) as exc:
        log.warning("ONNX export of the entity model failed (%s); it runs on torch", exc)
        return {"runtime": "torch", "error": str(exc)}
    emit(TrainingEvent("status", message=describe_choice(inference)))
    return inference


__all__ = ["EntityFitResult", "fit_entity_tagger", "train_entities"]
