"""The feedback loop, simulated on held-out guest messages: capture what the deployed model gets wrong,
label N messages per round, `prepare --add`, `train --incremental` from the deployed version, deploy; beside
a full retrain on the same data each round. Accuracy on the fixed independent test set after each round.

The data: the intent file's first 55 messages per intent (written with the project: how its authors imagined
guests write) train the first model; the other ~50 per intent (colloquial, regional, misspelt, two-topic:
how guests write) are the stream of guest messages, in a seeded random order, never seen by training until
labeled. datasets/hotel_intents_es_test.jsonl is the fixed test set. Each round the deployed model answers
its share of the stream; what `serve --capture` would keep (a fallback, or confidence below 0.6) plus the
wrong answers an agent flags (each with probability --flag-rate) are the candidates, and --per-round of them
(seeded) get their true label, as a person labeling the inbox would. The commands are the CLI's, run as a
user would (each in its own process, in a temporary project): prepare --add, train --incremental, deploy;
and train --force for the full retrain.

    .venv/bin/python benchmarks/feedback_loop.py [--rounds 3] [--per-round 60] [--epochs 4]
        [--incremental-epochs 2] [--plot docs/img/feedback_loop.png] [--json out.json]

This is a benchmark, not a test: it never fails a build on a number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hotelbot_cli.config import load_settings  # noqa: E402
from hotelbot_cli.pipeline.validate import evaluate_test_set  # noqa: E402
from hotelbot_cli.registry import ModelRegistry  # noqa: E402
from hotelbot_cli.runtime import load_predictor  # noqa: E402

DATA = REPO / "datasets" / "hotel_intents_es.json"
TEST = REPO / "datasets" / "hotel_intents_es_test.jsonl"
FIRST_BATCH = 55  # per intent: the messages written with the project (datasets/README.md)
CAPTURE_BELOW = 0.6  # serve --capture's default


def run(work: Path, env: dict[str, str], *args: str) -> tuple[dict, float]:
    """One `hotelbot ARGS --json` in its own process; (its JSON, seconds)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "hotelbot_cli", *args, "--json"], cwd=work, env=env,
                          capture_output=True, text=True)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"hotelbot {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout), seconds


def test_scores(registry: ModelRegistry, settings, version: str) -> dict:
    result = evaluate_test_set(registry, settings, version, TEST)
    return {k: result[k] for k in ("accuracy", "macro_f1", "in_scope_accuracy", "out_of_scope_recall") if k in result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=60, help="messages labeled per round")
    parser.add_argument("--flag-rate", type=float, default=0.3, help="share of confident wrong answers flagged")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the first model and of full retrains")
    parser.add_argument("--incremental-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--base-model", default="packaged:multilingual-e5-small")
    parser.add_argument("--workdir", type=Path, help="keep the project here (default: a temporary directory)")
    parser.add_argument("--plot", type=Path, help="write the accuracy curve as a PNG here")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    intents = json.loads(DATA.read_text("utf-8"))["intents"]
    first = {label: texts[:FIRST_BATCH] for label, texts in intents.items()}
    stream = [(text, label) for label, texts in intents.items() for text in texts[FIRST_BATCH:]]
    rng.shuffle(stream)
    chunk = len(stream) // args.rounds

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "guests.json").write_text(json.dumps({"intents": first}, ensure_ascii=False), "utf-8")
        (work / "guests_test.jsonl").write_text(TEST.read_text("utf-8"), "utf-8")
        env = {**os.environ, "HOTELBOT_HOME": str(work / ".hotelbot"),
               "HOTELBOT_MODEL_CACHE": os.environ.get("HOTELBOT_MODEL_CACHE", str(REPO / ".hotelbot" / "models")),
               "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "HOTELBOT_MLFLOW_REGISTRY": "off",
               "HOTELBOT_BASE_MODEL": args.base_model, "MIN_VALIDATION_SCORE": "0", "PYTHONPATH": str(REPO)}
        settings = load_settings(env=env, path_overrides={"registry": work / "registry"})
        registry = ModelRegistry(work / "registry")

        run(work, env, "prepare", "guests.json")
        trained, seconds = run(work, env, "train", "--epochs", str(args.epochs))
        version = trained["version"]
        run(work, env, "deploy", version, "--tolerance", "1")
        start = test_scores(registry, settings, version)
        rows = [{"round": 0, "labeled": 0, "captured": 0, "incremental": {**start, "version": version,
                 "seconds": round(seconds, 1)}, "full": {**start, "version": version, "seconds": round(seconds, 1)}}]
        print(f"round 0: {sum(map(len, first.values()))} messages, test accuracy {start['accuracy']:.4f} "
              f"({seconds:.0f} s)", file=sys.stderr)
        labeled_total = 0
        for r in range(1, args.rounds + 1):
            messages = stream[(r - 1) * chunk: r * chunk]
            predictor = load_predictor(registry.resolve("deployed"))
            answers = predictor.predict([t for t, _ in messages], top_k=3)
            captured = [(t, y) for (t, y), a in zip(messages, answers) if a.fallback or a.confidence < CAPTURE_BELOW]
            flagged = [(t, y) for (t, y), a in zip(messages, answers)
                       if not (a.fallback or a.confidence < CAPTURE_BELOW) and a.intent != y and rng.random() < args.flag_rate]
            candidates = captured + flagged
            rng.shuffle(candidates)
            chosen = candidates[: args.per_round]
            labeled_total += len(chosen)
            labeled = work / f"labeled-{r}.jsonl"
            labeled.write_text("".join(json.dumps({"text": t, "intent": y}, ensure_ascii=False) + "\n"
                                       for t, y in chosen), "utf-8")
            added, _ = run(work, env, "prepare", "--add", labeled.name)
            incremental, inc_seconds = run(work, env, "train", "--incremental", "--epochs", str(args.incremental_epochs))
            run(work, env, "deploy", incremental["version"], "--tolerance", "1")
            full, full_seconds = run(work, env, "train", "--force", "--epochs", str(args.epochs))
            wrong = sum(1 for (t, y), a in zip(messages, answers) if a.intent != y)
            row = {"round": r, "stream": len(messages), "wrong_answers": wrong, "captured": len(captured),
                   "flagged": len(flagged), "labeled": labeled_total, "added": added["added"],
                   "incremental": {**test_scores(registry, settings, incremental["version"]),
                                   "version": incremental["version"], "seconds": round(inc_seconds, 1)},
                   "full": {**test_scores(registry, settings, full["version"]), "version": full["version"],
                            "seconds": round(full_seconds, 1)}}
            rows.append(row)
            print(f"round {r}: {len(messages)} guest messages, {wrong} answered wrong, {len(captured)} captured + "
                  f"{len(flagged)} flagged, {len(chosen)} labeled; test accuracy incremental "
                  f"{row['incremental']['accuracy']:.4f} ({inc_seconds:.0f} s), full retrain "
                  f"{row['full']['accuracy']:.4f} ({full_seconds:.0f} s)", file=sys.stderr)

    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d"), "args": {k: str(v) for k, v in vars(args).items()},
              "first_model_messages": sum(map(len, first.values())), "stream_messages": len(stream),
              "test_set": str(TEST.relative_to(REPO)), "rounds": rows}
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False), "utf-8")
    if args.plot:
        plot(rows, args.plot, report)


def print_table(rows: list[dict]) -> None:
    print("| round | labeled (total) | captured + flagged | incremental: accuracy / in-scope / OOS recall (s) "
          "| full retrain: accuracy / in-scope / OOS recall (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        cells = []
        for key in ("incremental", "full"):
            m = row[key]
            cells.append(f"{m['accuracy']:.4f} / {m.get('in_scope_accuracy', 0):.4f} / "
                         f"{m.get('out_of_scope_recall', 0):.4f} ({m['seconds']:.0f})")
        caught = f"{row['captured']} + {row['flagged']}" if row["round"] else "-"
        print(f"| {row['round']} | {row['labeled']} | {caught} | {cells[0]} | {cells[1]} |")


def plot(rows: list[dict], path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labeled = [row["labeled"] for row in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(labeled, [100 * row["incremental"]["accuracy"] for row in rows], "o-", label="train --incremental")
    ax.plot(labeled, [100 * row["full"]["accuracy"] for row in rows], "s--", label="full retrain")
    ax.set_xlabel("guest messages labeled from the inbox (total)")
    ax.set_ylabel("accuracy on the independent test set (%)")
    ax.set_title(f"The feedback loop ({report['date']}, {report['machine'].split(',')[1].strip()})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    main()
