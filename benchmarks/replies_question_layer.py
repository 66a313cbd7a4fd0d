"""Issue 21: the tuned question layers against the frozen cosines, refitted as `train` fits them, in one run.

The sentence ranker's strongest feature is the cosine of the guest's message and a document sentence. Since
stop 41 `train --model-type replies` fine-tunes the top two layers of the knowledge base's encoder on the
message side (hotelbot_cli/components/replies/tuning.py) and the ranker reads their cosine; `--frozen-questions`
trains without them. This script refits a version's reply model both ways on the reply pairs it was trained
with, through the same function train uses (``fit_replies``), and scores each as train scores it:

* ``frozen cosines``: the ranker on the knowledge base's frozen query vector (``--frozen-questions``);
* ``tuned top-2``: the question layers fine-tuned with each ``--seeds`` entry (train uses seed 0), the ranker
  fitted on their cross-fitted cosines, everything through the stored low-rank change (as a version keeps it).

Figures per row: fact accuracy and unsupported-fact rate on the version's reply evaluation set; the ranker's
top-1 on the validation questions; cosine-only top-1; the fine-tuning seconds and the stored change's size.
The version is read, never changed.

    .venv/bin/python benchmarks/replies_question_layer.py --version v0004 [--seeds 0,10,20] [--json out.json]

The variants measured before the layers were built (one layer, all twelve, LoRA, token adapters, a stacked copy
of the top layer, a kNN feature, features not cross-fitted) were measured with this script's earlier form
(commit 73b9d24); docs/components/replies.md keeps their figures.

A benchmark, not a test: it never fails a build on a number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hotelbot_cli.components.generator.data import read_prepared_replies
from hotelbot_cli.components.replies import training as T
from hotelbot_cli.components.replies.pipeline import EVAL_FILE, REPLIES_DIR, ReplyPipeline
from hotelbot_cli.components.replies.tuning import TuningConfig
from hotelbot_cli.config import load_settings
from hotelbot_cli.registry import ModelRegistry


def say(text: str) -> None:
    print(text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="a version with the reply model")
    parser.add_argument("--seeds", default="0", help="comma-separated fine-tuning seeds, one row each")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    settings = load_settings()
    info = ModelRegistry(settings.paths.registry).get(args.version)
    pipeline = ReplyPipeline.from_version(info, settings)
    pairs = read_prepared_replies(info.path / REPLIES_DIR / T.DATA_DIR)
    questions = T.read_eval_file(info.path / REPLIES_DIR / EVAL_FILE)
    shipped = pipeline.model.settings
    say(f"{info.name}: {len(questions)} evaluation questions, {len(pairs.train)} training pairs")

    runs: list[tuple[str, int | None, TuningConfig | None]] = [("frozen cosines", None, None)]
    runs += [("tuned top-2", int(s), TuningConfig(seed=int(s))) for s in args.seeds.split(",") if s.strip()]
    rows: list[dict[str, Any]] = []
    for name, seed, tuning in runs:
        start = time.monotonic()
        pipeline.model.settings = replace(shipped)  # the selection is tuned again from the version's settings
        ranking, _, tuned = T.fit_replies(pipeline, pairs.train, pairs.validation, tuning)
        metrics = T.evaluate_pipeline(pipeline, questions, pairs.train, [])
        row = {
            "row": name,
            "seed": seed,
            "fact_accuracy": metrics["fact_accuracy"],
            "facts_right": round(metrics["fact_accuracy"] * len(questions)),
            "unsupported_fact_rate": metrics["unsupported_fact_rate"],
            "ranker_top1": ranking["top1_accuracy"],
            "cosine_top1": ranking["baseline_cosine_top1"],
            "selection": ranking["selection"]["chosen"],
            "fine_tune_seconds": tuned.get("seconds"),
            "stored_bytes": tuned.get("stored_bytes"),
            "seconds": round(time.monotonic() - start, 1),
        }
        rows.append(row)
        say(f"  {name}{'' if seed is None else f' seed {seed}'}: {row['facts_right']}/{len(questions)} "
            f"({row['seconds']:.0f}s)")

    say("")
    say(f"{'row':16} {'seed':>4} {'facts':>7} {'fact acc':>9} {'unsupp':>7} {'val top1':>9} {'cos top1':>9} "
        f"{'tuning s':>9}  stored")
    for r in rows:
        stored = f"{r['stored_bytes'] / 1e6:.2f} MB" if r["stored_bytes"] else ""
        tuning_s = "" if r["fine_tune_seconds"] is None else f"{r['fine_tune_seconds']:.0f}"
        say(
            f"{r['row']:16} {'' if r['seed'] is None else r['seed']:>4} {r['facts_right']:>4}/{len(questions):<2} "
            f"{r['fact_accuracy']:>9.3f} {r['unsupported_fact_rate']:>7.3f} {r['ranker_top1']:>9.3f} "
            f"{r['cosine_top1']:>9.3f} {tuning_s:>9}  {stored}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"version": info.name, "args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
