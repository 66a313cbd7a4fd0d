"""Issue 21: a question encoder whose top layer(s) are fine-tuned to find the answering sentence, beside the
shipped reply pipeline, in one run.

The shipped sentence ranker reads the cosine of the guest's message and each candidate sentence, both
embedded with the knowledge base's frozen encoder (e5-small). Measured at stops 38-39, that cosine is
the ranker's limit. Here the message side gets its own encoder: the base encoder with its top
``--layers`` transformer layers fine-tuned on the reply pairs' training split. Each training message is
pulled towards the sentences that answer it (the ranker's own labels, :func:`answer_labels`) against
every other sentence of the knowledge base, whose vectors stay the shipped ones (a listwise softmax at
temperature ``--temperature``). The sentence vectors and the chunk retrieval do not change; only the
ranker's cosine features are computed with the tuned message vector.

The ranker is then refitted on the training split as `train` fits it. Its features for a training
message come from an encoder fine-tuned without that message (``--folds`` cross-fitting); otherwise
the ranker would learn to trust a cosine that has seen its answers. Validation messages and the
evaluation questions get the encoder fine-tuned on the whole training split.

The selection settings are tuned as `train` tunes them, and everything is scored as `train` scores it.
Rows:

* ``shipped``: the version's pipeline, its ranker refitted in this run (the same procedure as train);
* ``tuned top-N``: the tuned message encoder, one row per ``--seeds`` entry;
* ``stacked top-layer copy`` (``--stacked``): instead, the frozen encoder plus a copy of its top layer
  applied once more to its last hidden state, the copy fine-tuned (a runtime would need only the
  ``last_hidden_state`` the ONNX query encoder already returns);
* ``tuned top-N, delta rank R`` (``--rank R``): the same encoder with each weight matrix's change from
  the base model cut to rank R (truncated SVD). That is what a version could store: the base model
  is already in the model cache, so a version would keep only the low-rank change, its size printed.

Figures per row: fact accuracy and unsupported-fact rate on the version's reply evaluation set; the
ranker's top-1 on the validation questions; cosine-only top-1 with the row's encoder; the chosen
selection. The version is read, never changed.

    .venv/bin/python benchmarks/replies_question_layer.py --version v0004 [--layers 1 | --stacked]
        [--seeds 0,10,20] [--rank 32] [--epochs 6] [--lr 2e-4] [--folds 2] [--json out.json]

A benchmark, not a test: it never fails a build on a number.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hotelbot_cli.components.generator.data import read_prepared_replies
from hotelbot_cli.components.replies import training as T
from hotelbot_cli.components.replies.pipeline import EVAL_FILE, REPLIES_DIR, ReplyPipeline
from hotelbot_cli.config import load_settings
from hotelbot_cli.data import clean_text
from hotelbot_cli.modeling import pool
from hotelbot_cli.registry import ModelRegistry

BATCH = 16


def say(text: str) -> None:
    print(text, flush=True)


class QuestionEncoder:
    """The knowledge base's torch encoder with its top ``layers`` layers trainable (a deep copy), or, with
    ``stacked``, the frozen encoder plus a trainable copy of its top layer applied to its last hidden state."""

    def __init__(self, embedder: Any, layers: int, stacked: bool = False) -> None:
        self.embedder = embedder
        self.stacked = stacked
        if stacked:
            self.model = embedder.encoder.eval()  # frozen, shared, no dropout; only the extra layer trains
            self.extra = copy.deepcopy(embedder.encoder.encoder.layer[-1])
            self.trained: torch.nn.Module = self.extra
            self.base_of = dict(embedder.encoder.encoder.layer[-1].named_parameters())
            for p in self.extra.parameters():
                p.requires_grad = True
        else:
            self.model = copy.deepcopy(embedder.encoder)
            blocks = self.model.encoder.layer
            for p in self.model.parameters():
                p.requires_grad = False
            for i in range(len(blocks) - layers, len(blocks)):
                for p in blocks[i].parameters():
                    p.requires_grad = True
            self.trained = self.model
            self.base_of = dict(embedder.encoder.named_parameters())

    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.trained.parameters() if p.requires_grad]

    def train(self, on: bool) -> None:
        """Dropout in what trains (the frozen encoder of ``stacked`` stays in eval mode)."""
        self.trained.train(on)

    def encode(self, texts: list[str], grad: bool = False) -> torch.Tensor:
        e = self.embedder
        batch = e.tokenizer(
            [e.model.query_prefix + clean_text(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=e.model.max_length,
            return_tensors="pt",
        )
        batch.pop("token_type_ids", None)
        mask = batch["attention_mask"]
        with torch.set_grad_enabled(grad and not self.stacked):
            hidden = self.model(**batch).last_hidden_state
        with torch.set_grad_enabled(grad):
            if self.stacked:
                additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
                out = self.extra(hidden, attention_mask=additive)
                hidden = out[0] if isinstance(out, tuple) else out
            return torch.nn.functional.normalize(pool(hidden, mask, e.model.pooling), dim=-1)

    def vectors(self, texts: list[str]) -> np.ndarray:
        self.train(False)
        with torch.no_grad():
            return np.concatenate([self.encode(texts[i : i + 64]).numpy() for i in range(0, len(texts), 64)])

    def compress(self, rank: int) -> int:
        """Cut each tuned weight matrix's change from the base (for ``stacked``: from the top layer it copied)
        to ``rank`` (truncated SVD); returns the parameters a version would store (the factors, plus the full
        change of the vectors: biases, norms)."""
        stored = 0
        with torch.no_grad():
            for name, p in self.trained.named_parameters():
                if not p.requires_grad:
                    continue
                base = self.base_of[name]
                delta = p - base
                if delta.dim() == 2 and rank < min(delta.shape):
                    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                    p.copy_(base + (u[:, :rank] * s[:rank]) @ vh[:rank])
                    stored += rank * sum(delta.shape)
                else:
                    stored += delta.numel()
        return stored


def fine_tune(embedder, layers, examples, vectors, *, epochs, lr, temperature, seed, stacked=False) -> QuestionEncoder:
    torch.manual_seed(seed)
    enc = QuestionEncoder(embedder, layers, stacked)
    enc.train(True)  # dropout on, as fine-tuning does
    optimizer = torch.optim.AdamW(enc.params(), lr=lr, weight_decay=0.01)
    steps = epochs * ((len(examples) + BATCH - 1) // BATCH)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps)
    )
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(examples))
        for i in range(0, len(order), BATCH):
            batch = [examples[j] for j in order[i : i + BATCH]]
            logits = enc.encode([m for m, _ in batch], grad=True) @ vectors.T / temperature
            target = torch.zeros_like(logits)
            for k, (_, rows) in enumerate(batch):
                target[k, rows] = 1.0 / len(rows)
            loss = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    enc.train(False)
    return enc


class TunedCosines:
    """Makes a pipeline compute its sentence cosines with message vectors from ``vector_of`` (the chunk
    retrieval keeps the knowledge base's own query vector)."""

    def __init__(self, pipeline: ReplyPipeline, vector_of) -> None:
        self.pipeline, self.vector_of = pipeline, vector_of
        self.original = ReplyPipeline.candidates

    def __enter__(self):
        original, vector_of = self.original, self.vector_of

        def candidates(pipe, message, intent, vector, chunks=None, hits=None):
            sentences = pipe.model.vectors
            tuned = vector_of(message)

            class Rows:  # `self.model.vectors[rows] @ vector` in candidates(): the tuned message vector
                def __getitem__(self, rows):
                    return _Product(sentences[rows], tuned)

            pipe.model.vectors = Rows()
            try:
                return original(pipe, message, intent, vector, chunks, hits)
            finally:
                pipe.model.vectors = sentences

        ReplyPipeline.candidates = candidates
        return self

    def __exit__(self, *exc) -> None:
        ReplyPipeline.candidates = self.original


class _Product:
    def __init__(self, matrix, vector) -> None:
        self.matrix, self.vector = matrix, vector

    def __matmul__(self, _ignored):
        return self.matrix @ self.vector


def score(pipeline, pairs, questions, settings) -> dict[str, Any]:
    """Refit the ranker and the selection as train does, then score as train scores."""
    pipeline.model.settings = settings
    ranking, _ = T.fit_ranking(pipeline, pairs.train, pairs.validation)
    metrics = T.evaluate_pipeline(pipeline, questions, pairs.train, [])
    return {
        "fact_accuracy": metrics["fact_accuracy"],
        "facts_right": round(metrics["fact_accuracy"] * len(questions)),
        "unsupported_fact_rate": metrics["unsupported_fact_rate"],
        "ranker_top1": ranking["top1_accuracy"],
        "cosine_top1": ranking["baseline_cosine_top1"],
        "selection": ranking["selection"]["chosen"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="a version with the reply model")
    parser.add_argument("--layers", type=int, default=1, help="top layers fine-tuned")
    parser.add_argument("--seeds", default="0", help="comma-separated fine-tuning seeds, one row each")
    parser.add_argument(
        "--stacked", action="store_true", help="train a copy of the top layer on the frozen output instead"
    )
    parser.add_argument("--rank", type=int, default=0, help="also score each change cut to this rank (0: no)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--temperature", type=float, default=0.02)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    settings = load_settings()
    info = ModelRegistry(settings.paths.registry).get(args.version)
    pipeline = ReplyPipeline.from_version(info, settings)
    pairs = read_prepared_replies(info.path / REPLIES_DIR / T.DATA_DIR)
    questions = T.read_eval_file(info.path / REPLIES_DIR / EVAL_FILE)
    shipped_settings = pipeline.model.settings
    say(f"{info.name}: {len(questions)} evaluation questions, {len(pairs.train)} training pairs")

    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    rows.append({"row": "shipped", **score(pipeline, pairs, questions, shipped_settings)})
    say(f"  shipped scored in {time.monotonic() - start:.0f}s")

    # the training messages with their answering sentences (rows of the version's sentence vectors)
    row_of = {s.id: i for i, s in enumerate(pipeline.model.sentences)}
    pipeline.model.settings = shipped_settings
    groups, found, answered = T.ranking_groups(pipeline, pairs.train)
    examples = [
        (pair.message, [row_of[f.sentences[i].id] for i in labels])
        for (_, labels), f, pair in zip(groups, found, answered)
    ]
    vectors = torch.tensor(np.asarray(pipeline.model.vectors), dtype=torch.float32)
    embedder = pipeline.knowledge.embedder
    say(f"  {len(examples)} training messages with an answering sentence; {len(vectors)} sentences compete")

    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        start = time.monotonic()
        options = dict(epochs=args.epochs, lr=args.lr, temperature=args.temperature, stacked=args.stacked)
        full = fine_tune(embedder, args.layers, examples, vectors, seed=seed, **options)
        folds = []
        order = np.random.default_rng(1 + seed).permutation(len(examples))
        for f in range(args.folds):
            held = set(order[f :: args.folds].tolist())
            kept = [x for i, x in enumerate(examples) if i not in held]
            folds.append((held, fine_tune(embedder, args.layers, kept, vectors, seed=seed + f + 1, **options)))
        seconds = time.monotonic() - start
        variants = [("", None)] + ([(f", delta rank {args.rank}", args.rank)] if args.rank else [])
        for label, rank in variants:
            stored = None
            if rank:
                stored = full.compress(rank)
                for _, enc in folds:
                    enc.compress(rank)
            cache: dict[str, np.ndarray] = {}
            own = {examples[i][0]: enc for held, enc in folds for i in held}

            def vector_of(message, cache=cache, own=own, full=full):
                if message not in cache:
                    cache[message] = own.get(message, full).vectors([message])[0]
                return cache[message]

            with TunedCosines(pipeline, vector_of):
                result = score(pipeline, pairs, questions, shipped_settings)
            name = "stacked top-layer copy" if args.stacked else f"tuned top-{args.layers}"
            row = {"row": f"{name}{label}", "seed": seed, "fine_tune_seconds": round(seconds, 1)}
            if stored is not None:
                row["stored_parameters"] = stored
                row["stored_mb_fp16"] = round(stored * 2 / 1e6, 2)
            rows.append({**row, **result})
            say(f"  {row['row']} seed {seed}: {result['facts_right']}/{len(questions)} ({seconds:.0f}s fine-tuning)")

    say("")
    say(f"{'row':32} {'seed':>4} {'facts':>7} {'fact acc':>9} {'unsupp':>7} {'val top1':>9} {'cos top1':>9}  stored")
    for r in rows:
        say(
            f"{r['row']:32} {r.get('seed', ''):>4} {r['facts_right']:>4}/{len(questions):<2} {r['fact_accuracy']:>9.3f} "
            f"{r['unsupported_fact_rate']:>7.3f} {r['ranker_top1']:>9.3f} {r['cosine_top1']:>9.3f}  "
            + (f"{r['stored_mb_fp16']} MB" if "stored_mb_fp16" in r else "")
        )
    if args.json:
        args.json.write_text(
            json.dumps({"version": info.name, "args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
