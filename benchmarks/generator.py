"""The response generator on the shipped pairs, beside a retrieval-only baseline in the same run.

One run, through the project's library exactly as `hotelbot train --model-type embeddings` and
`hotelbot train --model-type generator` do (into a temporary registry): build the knowledge base of
datasets/documentos/ with the packaged multilingual-e5-small, then train the offline default generator
(the frozen e5 encoder + a small decoder trained from scratch on a restricted vocabulary, grounded on the
top knowledge-base passages) on datasets/respuestas_es.jsonl (seeded 80/20 split stratified by intent),
and score the validation split:

* BLEU: sacrebleu corpus BLEU (intl tokenization), 0-100;
* ROUGE-L: mean LCS F1 over Unicode words, 0-1;
* perplexity: exp of the mean token NLL of the reference replies (teacher forcing; the generator only);
* relevance: mean cosine of the e5 embeddings of the generated and the reference reply;
* the retrieval-only baseline answers with the reply of the training message nearest by e5 cosine.

    .venv/bin/python benchmarks/generator.py [--epochs 12] [--decoder-layers 3] [--no-grounding]
                                             [--threads N] [--limit N] [--json out.json]

Bounded for two busy CPU cores: a frozen encoder (its states are computed once), a few epochs. This is a
benchmark, not a test: it never fails a build on a number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hotelbot_cli.config import load_settings  # noqa: E402
from hotelbot_cli.components.generator.data import read_reply_file
from hotelbot_cli.components.generator.model import GeneratorConfig
from hotelbot_cli.components.generator.training import train_generator
from hotelbot_cli.components.knowledge.kb import train_knowledge_base
from hotelbot_cli.registry import ModelRegistry  # noqa: E402

PAIRS = REPO / "datasets" / "respuestas_es.jsonl"
DOCUMENTS = REPO / "datasets" / "documentos"


def progress(event) -> None:
    if event.kind == "status":
        print(f"[{time.strftime('%H:%M:%S')}] {event.message}", file=sys.stderr, flush=True)
    elif event.kind == "evaluate":
        loss = event.metrics.get("loss")
        print(f"[{time.strftime('%H:%M:%S')}] epoch {event.epoch:.0f}: validation loss {loss:.4f}"
              + (f" ({event.message})" if event.message else ""), file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="packaged:multilingual-e5-small")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--decoder-layers", type=int, default=3)
    parser.add_argument("--passages", type=int, default=2, help="knowledge-base passages per message")
    parser.add_argument("--no-grounding", action="store_true", help="train without the knowledge base")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N pairs (a quick look)")
    parser.add_argument("--json", type=Path, help="also write the metrics as JSON here")
    parser.add_argument("--samples", type=int, default=5, help="sample replies to print")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = os.environ.get("HOTELBOT_MODEL_CACHE") or (str(REPO / ".cache" / "models")
                                                       if (REPO / ".cache" / "models").is_dir() else "")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "HOTELBOT_HOME": str(work / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
               **({"HOTELBOT_MODEL_CACHE": cache} if cache else {})}
        settings = load_settings(env=env, overrides={"training_config": {"base_model": args.base_model}},
                                 path_overrides={"registry": work / "registry"})
        registry = ModelRegistry(settings.paths.registry)
        data = PAIRS
        if args.limit:
            pairs, _ = read_reply_file(PAIRS)
            data = work / "pairs.jsonl"
            data.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs[:args.limit]),
                            "utf-8")
        kb_seconds = 0.0
        if not args.no_grounding:
            start = time.monotonic()
            train_knowledge_base(settings, DOCUMENTS, registry, progress)
            kb_seconds = time.monotonic() - start
        cfg = GeneratorConfig.from_settings(
            settings, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
            decoder_layers=args.decoder_layers, grounding_passages=0 if args.no_grounding else args.passages,
            freeze_encoder="yes", generation={"num_beams": args.num_beams})
        result = train_generator(settings, data, registry, progress, config=cfg)
        summary = result.version.metadata["generator"]
    total = time.monotonic() - started

    m = result.metrics
    g, b = m["generator"], m["retrieval_baseline"]
    print(f"\n{m['num_examples']} validation pairs ({summary['dataset']['train_size']} training); base "
          f"{args.base_model} (frozen) + {args.decoder_layers}-layer decoder from scratch, decoder vocabulary "
          f"{summary['decoder_vocab_size']} pieces; {args.epochs} epochs (best {summary['metrics']['best_epoch']:.0f}); "
          f"grounding: {'off' if args.no_grounding else f'top {args.passages} passages'}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, Python "
          f"{platform.python_version()}; knowledge base {kb_seconds:.0f}s, training {result.duration_seconds:.0f}s, "
          f"whole run {total:.0f}s; {g['seconds_per_reply'] * 1000:.0f} ms per reply (beam {args.num_beams})\n")
    header = f"{'':<34}{'BLEU':>8}{'ROUGE-L':>10}{'relevance':>11}{'exact':>8}{'perplexity':>12}"
    print(header)
    print("-" * len(header))
    print(f"{'generator':<34}{g['bleu']:>8.2f}{g['rouge_l']:>10.4f}{g['relevance']:>11.4f}{g['exact_match']:>8.3f}"
          f"{g['perplexity']:>12.2f}")
    print(f"{'retrieval-only (nearest message)':<34}{b['bleu']:>8.2f}{b['rouge_l']:>10.4f}{b['relevance']:>11.4f}"
          f"{b['exact_match']:>8.3f}{'-':>12}")
    print(f"\nBLEU signature: {m['bleu_signature']}; relevance model: {m['relevance_model']}")
    if m.get("grounding"):
        print(f"the pair's source document is among the retrieved passages for "
              f"{m['grounding']['source_hit_rate']:.1%} of the {m['grounding']['pairs_with_source']} validation pairs "
              "that name one")
    if "reference_oov_rate" in g:
        print(f"reference reply pieces outside the decoder vocabulary: {g['reference_oov_rate']:.2%}")
    for sample in m["samples"][:args.samples]:
        print(f"\n  message:   {sample['message']}\n  reference: {sample['reference']}\n  generated: "
              f"{sample['generated']}\n  baseline:  {sample['baseline']}\n  sources:   "
              + ", ".join(f"{s['doc']} > {s['heading']}" for s in sample["sources"]))
    if args.json:
        args.json.write_text(json.dumps({"metrics": m, "summary": summary, "seconds": round(total, 1)},
                                        ensure_ascii=False, indent=2), "utf-8")


if __name__ == "__main__":
    main()
