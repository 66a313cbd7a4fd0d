"""Fine-tuning the question layers (:mod:`.question`) with torch, at training time only.

Each training message is pulled towards the sentences that answer it (the ranker's own labels) against every
other sentence of the knowledge base, whose vectors stay the frozen encoder's: a listwise softmax over the
cosines at a low temperature. Only the encoder's top :data:`~hotelbot_cli.runtime.encoder.UPPER_LAYERS` layers
learn (a copy; the knowledge base's encoder is not touched); dropout is on in the whole copy, as fine-tuning does.

The ranker must not be fitted on cosines from layers that saw its training messages' answers (it learns to
trust an over-fitted cosine: measured at 66-69/86 against 75-77/86 cross-fitted, docs/components/replies.md).
So :func:`tune_question_layers` fine-tunes once on all the messages (what the version keeps) and once per fold
without that fold's messages; a training message's cosine vector comes from the layers that did not see it.

torch is imported on use: importing this module costs nothing.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ...data import clean_text
from ...runtime.encoder import UPPER_LAYERS, upper_blocks, upper_parameters
from .question import QuestionChange, QuestionLayers, compress, layer_record, runs_layers

BATCH = 16


@dataclass(frozen=True)
class TuningConfig:
    """How the question layers are fine-tuned (the figures measured in benchmarks/replies_question_layer.py)."""

    epochs: int = 6
    lr: float = 2e-4
    temperature: float = 0.02
    folds: int = 2
    rank: int = 32
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"layers": UPPER_LAYERS, **asdict(self)}


@dataclass
class TunedQuestions:
    """The layers a version keeps, the cross-fitted cosine vector of each training message, and a summary."""

    layers: QuestionLayers
    cross_fitted: dict[str, np.ndarray]
    summary: dict[str, Any] = field(default_factory=dict)


def can_tune(embedder: Any) -> bool:
    """Whether the encoder has the BERT layers :class:`QuestionLayers` runs."""
    return bool(upper_blocks(embedder.encoder)) and runs_layers(upper_parameters(embedder.encoder), UPPER_LAYERS)


def fine_tune(
    embedder: Any,
    examples: Sequence[tuple[str, list[int]]],
    sentence_vectors: np.ndarray,
    config: TuningConfig,
    seed: int,
    step: Callable[[], None] | None = None,
) -> dict[str, np.ndarray]:
    """The tuned top layers' weights (:func:`~hotelbot_cli.runtime.encoder.upper_parameters`) after fine-tuning a
    copy of ``embedder``'s encoder on ``examples`` [(message, rows of ``sentence_vectors`` that answer it)]."""
    import torch

    from ...modeling import pool  # modeling imports torch

    torch.manual_seed(seed)
    model = copy.deepcopy(embedder.encoder)
    device = next(model.parameters()).device
    for p in model.parameters():
        p.requires_grad = False
    params = [p for block in upper_blocks(model) for p in block.parameters()]
    for p in params:
        p.requires_grad = True
    targets = torch.tensor(np.asarray(sentence_vectors), dtype=torch.float32, device=device)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    steps = config.epochs * ((len(examples) + BATCH - 1) // BATCH)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps)
    )
    rng = np.random.default_rng(seed)
    prefix, pooling = embedder.model.query_prefix, embedder.model.pooling
    model.train(True)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(config.epochs):
            order = rng.permutation(len(examples))
            for i in range(0, len(order), BATCH):
                batch = [examples[j] for j in order[i : i + BATCH]]
                encoded = embedder.tokenizer(
                    [prefix + clean_text(m) for m, _ in batch],
                    padding=True,
                    truncation=True,
                    max_length=embedder.model.max_length,
                    return_tensors="pt",
                )
                encoded.pop("token_type_ids", None)
                encoded = {k: v.to(device) for k, v in encoded.items()}
                hidden = model(**encoded).last_hidden_state
                vectors = torch.nn.functional.normalize(pool(hidden, encoded["attention_mask"], pooling), dim=-1)
                logits = vectors @ targets.T / config.temperature
                target = torch.zeros_like(logits)
                for k, (_, rows) in enumerate(batch):
                    target[k, rows] = 1.0 / len(rows)
                loss = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                if step is not None:
                    step()
    model.eval()
    return upper_parameters(model)


def tune_question_layers(
    knowledge: Any,
    examples: Sequence[tuple[str, list[int]]],
    sentence_vectors: np.ndarray,
    config: TuningConfig = TuningConfig(),
    step: Callable[[int, int], None] | None = None,
) -> TunedQuestions:
    """The question layers fine-tuned on all ``examples``, and each example message's cosine vector from the
    layers fine-tuned without its fold (both through the stored low-rank change, as inference reads them).
    ``step(done, total)`` after each optimizer step. ``knowledge``: the knowledge base whose encoder is tuned."""
    embedder = knowledge.embedder
    base = embedder.upper_weights()
    record = layer_record(
        embedder.encoder.config, base, UPPER_LAYERS, embedder.model.pooling, rank=config.rank, tuning=config.to_dict()
    )
    folds = max(2, config.folds)
    order = np.random.default_rng(1 + config.seed).permutation(len(examples))
    held_out = [set(order[f::folds].tolist()) for f in range(folds)]
    per_run = config.epochs * ((len(examples) + BATCH - 1) // BATCH)
    total = per_run + sum(config.epochs * ((len(examples) - len(h) + BATCH - 1) // BATCH) for h in held_out)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if step is not None:
            step(done, total)

    def layers_from(tuned: dict[str, np.ndarray]) -> QuestionLayers:
        return QuestionChange(compress(tuned, base, config.rank), record).apply(base)

    start = time.monotonic()
    full = layers_from(fine_tune(embedder, examples, sentence_vectors, config, config.seed, tick))
    cross_fitted: dict[str, np.ndarray] = {}
    for f, held in enumerate(held_out):
        kept = [x for i, x in enumerate(examples) if i not in held]
        layers = layers_from(fine_tune(embedder, kept, sentence_vectors, config, config.seed + f + 1, tick))
        messages = [examples[i][0] for i in sorted(held)]
        if messages:
            _, states = knowledge.embed_queries_with_states(messages)
            cross_fitted.update(zip(messages, layers.encode(states)))
    summary = {
        **config.to_dict(),
        "folds": folds,
        "examples": len(examples),
        "seconds": round(time.monotonic() - start, 1),
        "stored_bytes": full.stored.nbytes if full.stored is not None else 0,
    }
    return TunedQuestions(full, cross_fitted, summary)


__all__ = ["TunedQuestions", "TuningConfig", "can_tune", "fine_tune", "tune_question_layers"]
