"""Training the generator: :func:`fit_generator` fine-tunes one with the shared Trainer loop
(:func:`~hotelbot_cli.training.loop.train_best_epoch`: token NLL, the lowest validation loss wins) and
:func:`train_generator` publishes a NEW registry version that carries over every other component of the
source version (deployed, else newest) and adds ``generator/``, grounded on the source version's knowledge
base when it has one (see :mod:`.inputs`). The architectures are described in :mod:`.model`."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, cast

from ...errors import IntegrityError
from ...training.events import TrainingEvent, emitter
from ...training.loop import FitStats, train_best_epoch, training_summary
from ...training.monitor import SystemMonitor
from ..base import ComponentResult, training_run
from ..compose import publish_component, source_version
from .data import COMPONENT, EXPERIMENT, ReplyPair, load_reply_data, write_prepared_replies
from .inputs import Collator, Features, passages_text, token_nll
from .model import (
    DATA_SUBDIR,
    GeneratorConfig,
    GeneratorSpec,
    VocabMap,
    build_new_model,
    encoder_of,
    freeze_encoder,
    save_generator,
    should_freeze_encoder,
    standardize_cross_attention,
    standardize_projection,
)
from .responder import Responder, evaluate_generator, relevance_embedder

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import ModelRegistry, VersionInfo
    from ...training.events import Listener
    from ..knowledge.kb import KnowledgeBase, SearchHit

log = logging.getLogger("hotelbot.generation")


@dataclass
class GeneratorFit(FitStats):
    model: Any
    tokenizer: Any
    spec: GeneratorSpec
    vocab: VocabMap | None
    cached_encoder: bool
    frozen_encoder: bool = False


def _encode_cached(
    model: Any,
    sources: Sequence[dict[str, list[int]]],
    pad_id: int,
    batch_size: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """The frozen encoder's last hidden states per example (unpadded, float32, CPU), computed once."""
    import torch  # heavy: imported on use

    encoder = model.get_encoder().eval()
    device = next(encoder.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]["input_ids"]))
    out: list[Any] = [None] * len(sources)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for n, batch in enumerate(batches, 1):
            length = max(len(sources[i]["input_ids"]) for i in batch)
            ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), length), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = sources[i]["input_ids"]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            hidden = encoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            for row, i in enumerate(batch):
                out[i] = hidden[row, : len(sources[i]["input_ids"])].float().cpu().clone()
            if on_batch is not None:
                on_batch(n, len(batches))
    return out


class _ListDataset:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def fit_generator(
    cfg: GeneratorConfig,
    train: Sequence[ReplyPair],
    validation: Sequence[ReplyPair],
    models_dir: Path,
    *,
    knowledge: KnowledgeBase | None = None,
    listener: Listener | None = None,
    tracker: Any = None,
    monitor: Any = None,
) -> tuple[GeneratorFit, list[list[SearchHit]]]:
    """Fine-tune one generator (no registry involved). Returns the fit and the validation pairs' retrieved
    passages (reused by the evaluation)."""
    from transformers import set_seed  # heavy: imported on use

    emit = emitter(listener)
    monitor = monitor or SystemMonitor()
    set_seed(cfg.seed)
    grounded = knowledge is not None and cfg.grounding_passages > 0
    train_hits: list[list[Any]] = [[] for _ in train]
    val_hits: list[list[Any]] = [[] for _ in validation]
    # (the casts below are for mypy only: grounded means knowledge is not None)
    if grounded:
        emit(
            TrainingEvent(
                "status",
                message=f"retrieving {cfg.grounding_passages} passage(s) per message from the "
                f"knowledge base of {cast('KnowledgeBase', knowledge).version}",
            )
        )
        train_hits = cast("KnowledgeBase", knowledge).search_many(
            [p.message for p in train], top_k=cfg.grounding_passages
        )
        val_hits = cast("KnowledgeBase", knowledge).search_many(
            [p.message for p in validation], top_k=cfg.grounding_passages
        )

    def vocab_texts(tokenizer: Any) -> list[list[int]]:
        texts = [p.reply for p in train]
        if grounded:
            texts += [c.text for c in cast("KnowledgeBase", knowledge).chunk_list]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    emit(TrainingEvent("status", message=f"loading the base model {cfg.base_model}"))
    model, tokenizer, spec, vocab = build_new_model(cfg, models_dir, vocab_texts)
    spec.grounded = grounded
    if not grounded:
        spec.grounding_passages = 0
    architecture = spec.architecture
    freeze = should_freeze_encoder(cfg.freeze_encoder) and architecture != "causal"
    frozen = freeze_encoder(model, architecture) if freeze else 0
    encoder: Any = encoder_of(model, architecture)  # None only for "causal"; read below for "encoder-decoder"
    if architecture == "encoder-decoder" and not freeze:
        from ...modeling import should_freeze  # modeling imports torch

        if should_freeze("auto", encoder):  # a 250k-row embedding matrix: frozen, like the classifier's
            weight = encoder.get_input_embeddings().weight
            weight.requires_grad_(False)
            frozen += weight.numel()
    if architecture == "encoder-decoder":
        spec.encoder["saved"] = not (freeze and spec.encoder.get("packaged"))
    # Pretrained weights (a base encoder, a whole hub LM) get pretrained_learning_rate; new ones learning_rate.
    pretrained_ids = {
        id(p) for p in (encoder.parameters() if architecture == "encoder-decoder" else model.parameters())
    }
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    features = Features(tokenizer, spec, vocab)

    def contexts(hits: Sequence[Sequence[Any]]) -> list[str] | None:
        return [passages_text(h, cfg.passage_chars) for h in hits] if grounded else None

    train_src = features.source([p.message for p in train], contexts(train_hits))
    val_src = features.source([p.message for p in validation], contexts(val_hits))
    train_items = [features.example(s, features.target(p.reply)) for s, p in zip(train_src, train)]
    val_items = [features.example(s, features.target(p.reply)) for s, p in zip(val_src, validation)]
    cached = freeze and architecture != "causal"
    if cached:
        emit(TrainingEvent("status", message="encoding the messages once with the frozen encoder"))
        pad = spec.special_ids["pad"]
        for items, src in ((train_items, train_src), (val_items, val_src)):
            states = _encode_cached(model, src, pad, max(cfg.batch_size, 32))
            for item, state in zip(items, states):
                item.pop("input_ids")
                item["encoder_hidden"] = state

    if architecture == "encoder-decoder" and (
        getattr(model, "enc_to_dec_proj", None) is not None or cfg.decoder_init == "encoder"
    ):
        sample = (
            [item["encoder_hidden"] for item in train_items]
            if cached
            else _encode_cached(model, train_src[:256], spec.special_ids["pad"], max(cfg.batch_size, 32))
        )
        standardize_projection(model, sample, cfg.seed) or standardize_cross_attention(model, sample)
    ids = spec.special_ids
    decoder_start = int(model.config.decoder_start_token_id) if architecture != "causal" else ids["bos"]
    collator = Collator(architecture, ids["pad"], vocab.pad if vocab else ids["pad"], decoder_start)

    def batch_loss(model: Any, inputs: Mapping[str, Any]) -> Any:
        """Token-level cross-entropy on aligned labels: the mean over the batch's reply tokens."""
        nll, count = token_nll(model, inputs)
        return nll / count.clamp(min=1)

    def with_perplexity(metrics: Mapping[str, Any]) -> dict[str, float]:
        if "eval_loss" not in metrics:
            return {}
        return {"eval_perplexity": math.exp(min(float(metrics["eval_loss"]), 50.0))}

    with warnings_silenced():
        run = train_best_epoch(
            cfg,
            model,
            "hotelbot-generator-",
            _ListDataset(train_items),
            _ListDataset(val_items),
            collator,
            None,
            "loss",
            listener=listener,
            tracker=tracker,
            monitor=monitor,
            greater_is_better=False,
            derive_metrics=with_perplexity,
            batch_loss=batch_loss,
            predict_validation=False,
            learning_rate_of=lambda name, param: cfg.pretrained_learning_rate if id(param) in pretrained_ids else None,
            logs_per_epoch=1,
            remove_unused_columns=False,
            prediction_loss_only=True,
            max_grad_norm=1.0,
        )
    fit = GeneratorFit(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        vocab=vocab,
        cached_encoder=cached,
        frozen_encoder=freeze and architecture == "encoder-decoder",
        **FitStats.of(run.trainer, run.best.history, run.best.best_epoch, run.duration, frozen, trainable),
    )
    return fit, val_hits


@contextlib.contextmanager
def warnings_silenced() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*use_cache=True.*")
        yield


def generator_result(
    info: VersionInfo,
    metrics: dict[str, Any],
    duration: float,
    run_id: str | None,
    history: list[dict[str, Any]],
    carried: dict[str, Any],
) -> ComponentResult:
    """The generator's training as the one result type: its JSON document and the line the CLI shows."""
    g, b = metrics["generator"], metrics["retrieval_baseline"]
    document = {
        "version": info.name,
        "component": COMPONENT,
        "skipped": False,
        "duration_seconds": round(duration, 2),
        "mlflow_run_id": run_id,
        "metrics": {k: g[k] for k in ("bleu", "rouge_l", "perplexity", "relevance", "exact_match")},
        "retrieval_baseline": {k: b[k] for k in ("bleu", "rouge_l", "relevance", "exact_match")},
        "grounding": metrics.get("grounding"),
        "history": history,
        "carried_from": carried.get("from"),
        "carried_components": carried.get("components"),
    }
    line = (
        f"trained generator {info.name} in {duration:.1f}s: BLEU {g['bleu']:.2f} ROUGE-L {g['rouge_l']:.4f} "
        f"perplexity {g['perplexity']:.2f} relevance {g['relevance']:.4f} (retrieval-only baseline: "
        f"BLEU {b['bleu']:.2f} ROUGE-L {b['rouge_l']:.4f} relevance {b['relevance']:.4f})"
    )
    return ComponentResult(
        COMPONENT,
        info,
        metrics,
        duration,
        run_id,
        history,
        document,
        [line],
        score=("generator_relevance", float(g["relevance"])),
        carried_from=carried.get("from"),
        carried_components=list(carried.get("components") or []),
    )


def _source_knowledge(
    registry: ModelRegistry, source: str | None, models_dir: Path
) -> tuple[VersionInfo | None, KnowledgeBase | None]:
    """The source version and its knowledge base (None without one); the KB's files are checked first, so
    a corrupt index never grounds a training run (carry_over checks them again when copying)."""
    from ..knowledge.kb import INDEX_FILE, KNOWLEDGE_DIR, KnowledgeBase  # kb imports numpy

    src = source_version(registry, source)
    if src is None or not (src.path / KNOWLEDGE_DIR / INDEX_FILE).is_file():
        return src, None
    bad = [p for p in registry.verify(src.name) if p.startswith(f"{src.name}/{KNOWLEDGE_DIR}/")]
    if bad:
        raise IntegrityError(
            f"the knowledge base of {src.name} is corrupt: {bad[0]}",
            hint="deploy or roll back to an intact version first",
        )
    return src, KnowledgeBase.from_version(src, models_dir)


def train_generator(
    settings: Settings,
    data_path: Path,
    registry: ModelRegistry,
    listener: Listener | None = None,
    *,
    force: bool = False,
    source: str | None = None,
    config: GeneratorConfig | None = None,
) -> ComponentResult:
    """Train the response generator on ``data_path`` (a .jsonl file of pairs or a prepared directory) and
    publish a new version carrying over the other components of ``source`` (default: deployed, else newest).

    ``config`` defaults to :meth:`GeneratorConfig.from_settings`. When the source version has a knowledge
    base (and ``grounding_passages`` > 0) the generator is trained grounded on its passages. Intents must
    be ones the source version's classifier knows (when it has one). One MLflow run (experiment
    ``hotelbot-generator``). Raises AlreadyTrainedError when a version's generator was trained on the same
    data, config and knowledge base (``force`` trains anyway)."""
    emit = emitter(listener)
    cfg = config or GeneratorConfig.from_settings(settings)
    models_dir = settings.paths.models_dir
    src, knowledge = _source_knowledge(registry, source, models_dir)
    known = src.metadata.get("labels") if src is not None and isinstance(src.metadata.get("labels"), list) else None
    prepared = load_reply_data(Path(data_path), settings.data, known)
    kb_fingerprint = knowledge.manifest.get("fingerprint") if knowledge is not None and cfg.grounding_passages else None
    config_record = {"generator_config": cfg.to_dict(), "knowledge_fingerprint": kb_fingerprint}
    params = {
        **{k: v for k, v in cfg.to_dict().items() if k != "generation"},
        **{f"generation_{k}": v for k, v in cfg.generation.to_dict().items()},
        "knowledge_version": knowledge.version if knowledge else "",
        "source_version": src.name if src else "",
    }
    with training_run(
        settings, registry, COMPONENT, EXPERIMENT, prepared, config_record, params, force=force, source=Path(data_path)
    ) as (tracker, monitor):
        fit, val_hits = fit_generator(
            cfg,
            prepared.train,
            prepared.validation,
            models_dir,
            knowledge=knowledge,
            listener=listener,
            tracker=tracker,
            monitor=monitor,
        )
        emit(
            TrainingEvent(
                "status",
                message=f"generating {len(prepared.validation)} validation replies and the retrieval-only baseline",
            )
        )
        responder = Responder(
            fit.model, fit.tokenizer, fit.spec, cfg.generation, fit.vocab, knowledge if fit.spec.grounded else None
        )
        embedder = relevance_embedder(
            fit.spec,
            responder.knowledge,
            models_dir,
            tokenizer=fit.tokenizer,
            frozen_encoder=fit.model.get_encoder() if fit.frozen_encoder else None,
        )
        with warnings_silenced():
            metrics = evaluate_generator(responder, prepared.validation, prepared.train, embedder=embedder)
        g, b = metrics["generator"], metrics["retrieval_baseline"]
        tracker.log_metrics(
            {
                **{f"final_{k}": g[k] for k in ("bleu", "rouge_l", "perplexity", "relevance")},
                **{f"baseline_{k}": b[k] for k in ("bleu", "rouge_l", "relevance")},
            },
            step=fit.steps,
        )

        summary = {
            "architecture": fit.spec.architecture,
            "base_model": fit.spec.base_model,
            "encoder_saved": fit.spec.encoder.get("saved", True),
            "decoder_vocab_size": len(fit.vocab) if fit.vocab is not None else None,
            "grounded": fit.spec.grounded,
            # grounded only with a knowledge base
            "knowledge_version": cast("KnowledgeBase", knowledge).version if fit.spec.grounded else None,
            "metrics": {
                **{k: g[k] for k in ("bleu", "rouge_l", "perplexity", "relevance", "exact_match")},
                "best_epoch": fit.best_epoch,
                "baseline": {k: b[k] for k in ("bleu", "rouge_l", "relevance", "exact_match")},
                "grounding_source_hit_rate": (metrics.get("grounding") or {}).get("source_hit_rate"),
            },
            "generation": cfg.generation.to_dict(),
            "dataset_fingerprint": prepared.fingerprint,
            "dataset": {
                "source": prepared.summary.get("source"),
                "train_size": len(prepared.train),
                "validation_size": len(prepared.validation),
            },
            "config": config_record,
            "training": training_summary(fit, cached_encoder_states=fit.cached_encoder),
            "mlflow_run_id": tracker.run_id,
        }

        def write(target: Path) -> None:
            save_generator(fit.model, fit.tokenizer, fit.spec, cfg.generation, fit.vocab, target)
            write_prepared_replies(prepared, target / DATA_SUBDIR)

        info, carried = publish_component(
            registry,
            COMPONENT,
            "response-generator",
            source=src.name if src else None,
            write=write,
            metrics=metrics,
            history={"epochs": fit.history, "log": fit.log_history},
            summary=summary,
            monitor=monitor,
            tracker=tracker,
            listener=listener,
        )
    log.info(
        "trained generator %s: BLEU %.2f ROUGE-L %.4f (baseline BLEU %.2f) in %.1fs",
        info.name,
        g["bleu"],
        g["rouge_l"],
        b["bleu"],
        fit.duration,
    )
    emit(
        TrainingEvent(
            "end",
            fit.steps,
            fit.steps,
            fit.epochs_run,
            cfg.epochs,
            metrics={"bleu": g["bleu"], "rouge_l": g["rouge_l"], "perplexity": g["perplexity"]},
            message=info.name,
        )
    )
    return generator_result(info, metrics, fit.duration, tracker.run_id, fit.history, carried)
