"""Grounded replies beside today's generator and the nearest-training-reply baseline, in one run.

On a registry version that holds the reply model (``train --model-type replies``) and, for the generator
rows, a response generator, every way of answering is scored on the same questions in the same process:

* ``generator``: the response generator as `hotelbot reply` used it before the reply pipeline (no check);
* ``nearest training reply``: the reply of the training message nearest by the knowledge base's encoder;
* ``extractive``: the reply pipeline as shipped (intent-aware, ranked document sentences, fact-checked);
* ``pipeline + generator``: the pipeline phrasing informational answers with the generator, each generated
  reply kept only when its facts are in its passages (else the extractive answer is sent).

Figures: on ``datasets/reply_eval_es.jsonl`` (the version's stored copy) fact accuracy (every expected fact
stated), fact recall, unsupported-fact rate (a number, time, price, e-mail, phone, URL or name in the reply
that neither its passages nor the message hold; for the generator, the passages it was given), mean reply
length and in-process milliseconds per reply; on the version's validation reply pairs, relevance (cosine
of reply and reference with the knowledge base's encoder) and ROUGE-L.

With ``--serve``: p50 of ``POST /reply`` (one client, sequential) and the server's RSS once ready and after the
requests, from a `hotelbot serve` of the version, and, with ``--baseline-version V``, of V on the same machine
in the same run: served by ``--baseline-code DIR`` (an older checkout, e.g. ``git archive 4b8681c``), else by
this checkout.

With ``--train-generators scratch,encoder``: a generator is trained per decoder initialisation (today's decoder
from scratch; one warm-started from e5's bottom layers, BERT2BERT), as `train --model-type generator` trains with
its defaults, on the version's reply pairs, into a temporary copy of the registry; each gets the two generator
rows in the same run.

    .venv/bin/python benchmarks/replies.py --registry registry --version v0006 [--serve]
        [--train-generators scratch,encoder]
        [--baseline-code /tmp/base --baseline-version v0005] [--requests 60] [--json out.json]

A benchmark, not a test: it never fails a build on a number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import hotelbot, post_json, process_rss_mb, running_server, say  # noqa: E402 - the benchmarks directory is the script's own path

from hotelbot_cli.components.generator.metrics import corpus_rouge_l  # noqa: E402
from hotelbot_cli.components.replies.pipeline import EVAL_FILE, REPLIES_DIR, ReplyPipeline  # noqa: E402
from hotelbot_cli.components.replies.training import DATA_DIR, NearestReply, _fact_block, read_eval_file  # noqa: E402
from hotelbot_cli.components.generator.data import read_prepared_replies  # noqa: E402
from hotelbot_cli.config import load_settings  # noqa: E402
from hotelbot_cli.registry import ModelRegistry  # noqa: E402


def timed(fn, messages):
    """(replies, per-message passages or None, ms per reply): one message at a time, as /reply gets them."""
    out, passages, start = [], [], time.perf_counter()
    for m in messages:
        reply, given = fn(m)
        out.append(reply)
        passages.append(given)
    return out, passages, (time.perf_counter() - start) * 1000 / max(len(messages), 1)


def score(name, pipeline, questions, val_pairs, answer):
    """One row: facts on the eval questions, relevance and ROUGE-L on the validation pairs."""
    replies, passages, ms = timed(answer, [q.question for q in questions])
    facts = _fact_block(replies, questions, passages, pipeline.model.policy.texts())
    val_replies, _, _ = timed(answer, [p.message for p in val_pairs])
    encode = pipeline.knowledge.embed_queries
    ref = encode([p.reply for p in val_pairs])
    relevance = float(np.mean(np.sum(encode([r or "-" for r in val_replies]) * ref, axis=1)))
    return {"name": name, **facts, "relevance": round(relevance, 6),
            "rouge_l": round(corpus_rouge_l(val_replies, [p.reply for p in val_pairs]), 6),
            "mean_chars": round(sum(map(len, replies)) / len(replies), 1), "ms_per_reply": round(ms, 1),
            "samples": [{"question": q.question, "reply": r} for q, r in list(zip(questions, replies))[:5]]}


def quality(info, settings, generators=()):
    """The rows of ``info`` (nearest reply, extractive, its generator when it has one), plus two rows per
    (label, version) of ``generators``."""
    pipeline = ReplyPipeline.from_version(info, settings)
    questions = read_eval_file(info.path / REPLIES_DIR / EVAL_FILE)
    pairs = read_prepared_replies(info.path / REPLIES_DIR / DATA_DIR)
    chunks = pipeline.knowledge.chunks

    def extractive(message):
        (a,) = pipeline.reply([message])
        return a["reply"], [chunks[s["chunk_id"]].passage() for s in a["sources"]]

    baseline = NearestReply(pipeline.knowledge, pairs.train)

    def nearest(message):
        vec = pipeline.knowledge.embed_queries([message])
        (reply,) = baseline.for_vectors(vec)
        hits = pipeline.knowledge.search_vectors(vec, pipeline.model.settings.candidate_chunks)[0]
        return reply, [h.chunk.passage() for h in hits]

    rows = [score("nearest training reply", pipeline, questions, pairs.validation, nearest),
            score("extractive (replies pipeline)", pipeline, questions, pairs.validation, extractive)]
    if (info.path / "generator").is_dir():
        unchecked, checked = generator_rows(pipeline, info, settings, questions, pairs, "")
        rows = [unchecked, *rows, checked]
    for label, other in generators:  # a version trained from ``info``: the same replies and knowledge base, carried over
        rows += generator_rows(ReplyPipeline.from_version(other, settings), other, settings, questions, pairs,
                               f" {label}")
    return rows, len(questions), len(pairs.validation)


def generator_rows(pipeline, info, settings, questions, pairs, label):
    """The generator of ``info`` answering alone (unchecked, as `reply` did before the reply model), and phrasing
    the pipeline's informational answers (each generated reply fact-checked)."""
    from hotelbot_cli.components.generator.responder import Responder

    chunks = pipeline.knowledge.chunks
    responder = Responder.from_version(info, settings.paths.models_dir, knowledge=pipeline.knowledge)

    def generator(message):
        hits = responder.retrieve([message])
        (g,) = responder.reply([message], hits=hits)
        return g["reply"], [h.chunk.passage() for h in hits[0]]

    unchecked = score(f"generator{label} (unchecked)", pipeline, questions, pairs.validation, generator)
    shipped = pipeline.model.settings
    pipeline.model.settings = replace(shipped, use_generator=True)
    pipeline.responder = responder
    kept = []

    def checked(message):
        (a,) = pipeline.reply([message])
        kept.append(a["kind"] == "generated")
        return a["reply"], [chunks[s["chunk_id"]].passage() for s in a["sources"]]

    try:
        row = score(f"pipeline + generator{label} (checked)", pipeline, questions, pairs.validation, checked)
    finally:
        pipeline.model.settings, pipeline.responder = shipped, None
    row["generated_share"] = round(sum(kept) / max(len(kept), 1), 4)
    return [unchecked, row]


def train_generators(registry: Path, version: str, inits: list[str], work: Path) -> list:
    """Train a generator per decoder initialisation (``GeneratorConfig.decoder_init``), as `train --model-type
    generator` does with its defaults, on ``version``'s reply pairs and knowledge base, into a hard-linked copy of
    ``registry`` under ``work``: [(label, version info, seconds)]."""
    from hotelbot_cli.components.generator.model import GeneratorConfig
    from hotelbot_cli.components.generator.training import train_generator

    scratch = work / "registry"
    subprocess.run(["cp", "-al", str(registry), str(scratch)], check=True)
    settings = load_settings(path_overrides={"registry": scratch})
    store = ModelRegistry(scratch)
    data = store.get(version).path / REPLIES_DIR / DATA_DIR
    trained = []
    for init in inits:
        say(f"training a generator (decoder_init {init}) on {version} ...")
        start = time.monotonic()
        result = train_generator(settings, data, store, source=version, force=True,
                                 config=GeneratorConfig.from_settings(settings, decoder_init=init))
        trained.append((f"[{init}]", result.version, round(time.monotonic() - start, 1)))
        say(f"  {result.version.name}: trained in {trained[-1][2]:.0f}s")
    return trained


def settings_home() -> Path:
    return load_settings().paths.home.resolve()


def serve_p50(code: Path | None, registry: Path, version: str, texts: list[str], requests: int) -> dict:
    """Start `hotelbot serve` (``code``: another checkout's package) on a scratch registry deploying ``version``."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "registry"
        subprocess.run(["cp", "-al", str(registry), str(scratch)], check=True)
        ModelRegistry(scratch).write_current_state({"version": version, "previous": []})
        # absolute home (model cache, MLflow) and a neutral working directory: with `python -m`, the working
        # directory comes first on sys.path, and this checkout's package must not shadow the baseline's
        env = {**os.environ, "HOTELBOT_REGISTRY": str(scratch), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HOTELBOT_HOME": str(settings_home())}
        cmd = [hotelbot(), "serve"]
        if code is not None:
            env["PYTHONPATH"] = str(code)
            cmd = [sys.executable, "-m", "hotelbot_cli", "serve"]
        with running_server(lambda port: [*cmd, "--port", str(port)], env, Path(tmp), timeout=300) as (proc, base, ready):
            loaded = process_rss_mb(proc.pid)
            times = []
            for i in range(requests):  # a non-2xx answer raises (HTTPError): every timed request succeeded
                t = time.perf_counter()
                post_json(base, "/reply", {"text": texts[i % len(texts)]}, timeout=120)
                times.append((time.perf_counter() - t) * 1000)
            measured = sorted(times[5:])
            return {"version": version, "ready_s": round(ready, 2), "p50_ms": round(statistics.median(measured), 1),
                    "p95_ms": round(measured[int(0.95 * (len(measured) - 1))], 1), "requests": len(measured),
                    "ok": len(times), "rss_loaded_mb": round(loaded, 1), "rss_after_mb": round(process_rss_mb(proc.pid), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=Path("registry"))
    parser.add_argument("--version", required=True, help="a version with the reply model")
    parser.add_argument("--serve", action="store_true", help="also measure POST /reply of `hotelbot serve`")
    parser.add_argument("--baseline-code", type=Path, help="an older checkout whose /reply to compare with")
    parser.add_argument("--baseline-version",
                        help="the version the baseline code serves (without --baseline-code: this checkout serves it)")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--train-generators", default="",
                        help="comma-separated decoder initialisations (scratch, encoder): train a generator each on "
                             "the version's pairs (into a temporary copy of the registry) and score it beside the rest")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings = load_settings()
    info = ModelRegistry(args.registry).require_intact(args.version)
    inits = [x.strip() for x in args.train_generators.split(",") if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        trained = train_generators(args.registry, info.name, inits, Path(tmp)) if inits else []
        say(f"scoring the ways of answering on {info.name} ...")
        rows, n_questions, n_pairs = quality(info, settings, [(label, v) for label, v, _ in trained])
    result = {"version": info.name, "eval_questions": n_questions, "validation_pairs": n_pairs, "rows": rows,
              "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
              "trained_generators": [{"label": label, "seconds": seconds, "metrics": v.metadata.get("generator")}
                                     for label, v, seconds in trained]}
    print(f"\n{info.name}: {n_questions} evaluation questions, {n_pairs} validation pairs, {os.cpu_count()} CPUs")
    print(f"{'':44}{'fact acc':>9}{'recall':>8}{'unsupp.':>8}{'relev.':>8}{'ROUGE-L':>8}{'chars':>7}{'ms':>8}")
    for r in rows:
        print(f"{r['name']:44}{r['fact_accuracy']:>9.3f}{r['fact_recall']:>8.3f}{r['unsupported_fact_rate']:>8.3f}"
              f"{r['relevance']:>8.3f}{r['rouge_l']:>8.3f}{r['mean_chars']:>7.0f}{r['ms_per_reply']:>8.1f}")
    if args.serve:
        texts = [q["question"] for q in map(json.loads, (info.path / REPLIES_DIR / EVAL_FILE).read_text("utf-8").splitlines())]
        say("serving the version ...")
        result["serve"] = {"replies": serve_p50(None, args.registry, info.name, texts, args.requests)}
        if args.baseline_version:
            say(f"serving {args.baseline_version} with {args.baseline_code or 'this checkout'} ...")
            result["serve"]["baseline"] = serve_p50(args.baseline_code, args.registry, args.baseline_version, texts,
                                                    args.requests)
        for key, s in result["serve"].items():
            print(f"POST /reply {key:10} {s['version']}: p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, "
                  f"ready {s['ready_s']} s, RSS {s['rss_loaded_mb']} MB loaded / {s['rss_after_mb']} MB after, "
                  f"{s['ok']}/{s['requests'] + 5} ok")
    if args.json:
        args.json.write_text(json.dumps(result, ensure_ascii=False, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
