"""Joint NLU model vs the three separate models, in one run on the shipped data.

Two fresh registries in a scratch directory, the same prepared splits (same seeds) for both:

- separate: `train --model-type classifier`, then `entities`, then `sentiment` (three fine-tuned encoders);
- joint:    `train --model-type nlu` (one encoder, three heads).

For each it prints, side by side: per task, the scores training measured on the validation splits (intent
macro-F1, in-scope accuracy and out-of-scope recall with the threshold, entity micro-F1, sentiment macro-F1)
and the same scores as SERVED (`hotelbot predict --json` answers on the validation texts, with the runtime
each version runs on); intent macro-F1 on the shipped holdout file; training time (the fits' own seconds and
the CLI's wall time); disk (the registry's stored bytes after training); and `hotelbot serve` of the deployed
version: seconds to ready, RSS after 50 /analyze requests, /analyze p50 for one text. Then whether the joint
model is within ``--margin`` points (default 0.5) of the separate ones on every task, which is the rule for
making it `train --model-type all`'s default. It measures and prints; it never fails on a timing.

    python benchmarks/nlu.py [--epochs N] [--keep DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from latency import post_json, process_rss_mb, running_server  # noqa: E402 - the benchmarks directory is the script's own path

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "datasets"
HOLDOUT = DATASETS / "hotel_intents_es_holdout.json"


def hotelbot() -> str:
    return str(Path(sys.executable).with_name("hotelbot"))


def run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[str, float]:
    start = time.monotonic()
    proc = subprocess.run([hotelbot(), *args], env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"hotelbot {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return proc.stdout, time.monotonic() - start


def workspace(root: Path, epochs: int | None, base_model: str | None = None) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTELBOT_", "TRAINING_", "MLFLOW_"))}
    env.update({"HOTELBOT_HOME": str(root / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
                "HOTELBOT_MODEL_CACHE": os.environ.get("HOTELBOT_MODEL_CACHE", str(REPO / ".cache" / "models")),
                "AUTO_DEPLOY_ON_SUCCESS": "false"})
    if epochs:
        env["TRAINING_EPOCHS"] = str(epochs)
    if base_model:
        env["HOTELBOT_BASE_MODEL"] = base_model
    for args in (["prepare", str(DATASETS / "hotel_intents_es.json")],
                 ["prepare", "--entities", str(DATASETS / "entidades_es.jsonl")],
                 ["prepare", "--sentiment", str(DATASETS / "sentimiento_es.jsonl")]):
        run(args, env, root)
    return env


def stored_bytes(registry: Path) -> int:
    return sum(p.stat().st_size for p in (registry / "blobs").rglob("*") if p.is_file())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def served_scores(env: dict[str, str], cwd: Path, version: str) -> dict[str, float]:
    """Each task scored on its validation split from `hotelbot predict --json` (what the version serves)."""
    from hotelbot_cli.components.entities.tagger import entity_metrics
    from hotelbot_cli.evaluation import classification_metrics

    data = cwd / "data"
    intents = read_jsonl(data / "processed" / "validation.jsonl")
    sentiment = read_jsonl(data / "sentiment" / "validation.jsonl")
    entities = read_jsonl(data / "entities" / "validation.jsonl")
    holdout_pairs = [(r["text"], r["intent"]) for r in json.loads(HOLDOUT.read_text("utf-8"))]
    texts = ([r["text"] for r in intents] + [r["text"] for r in sentiment] + [r["text"] for r in entities]
             + [t for t, _ in holdout_pairs])
    batch = cwd / "texts.txt"
    batch.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", "utf-8")
    proc = subprocess.run([hotelbot(), "predict", "-", "--version", version, "--json"], env=env, cwd=cwd,
                          input=batch.read_text("utf-8"), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"hotelbot predict failed: {proc.stderr[-1500:]}")
    out = proc.stdout
    rows = json.loads(out)["predictions"]
    a, b, c = len(intents), len(intents) + len(sentiment), len(intents) + len(sentiment) + len(entities)
    labels = sorted({r["intent"] for r in intents})
    intent = classification_metrics([r["intent"] for r in intents], [p["intent"] for p in rows[:a]], labels)
    sent_labels = sorted({r["label"] for r in sentiment})
    sent = classification_metrics([r["label"] for r in sentiment], [p["sentiment"]["label"] for p in rows[a:b]],
                                  sent_labels)
    gold = [{(e["label"], e["start"], e["end"]) for e in r["entities"]} for r in entities]
    found = [{(e["type"], e["start"], e["end"]) for e in p["entities"]} for p in rows[b:c]]
    ents = entity_metrics(gold, found)
    hold = classification_metrics([k for _, k in holdout_pairs], [p["intent"] for p in rows[c:]],
                                  sorted({k for _, k in holdout_pairs}))
    return {"intent_macro_f1": intent["macro_f1"], "intent_accuracy": intent["accuracy"],
            "sentiment_macro_f1": sent["macro_f1"], "entities_micro_f1": ents["micro_f1"],
            "holdout_intent_macro_f1": hold["macro_f1"], "holdout_intent_accuracy": hold["accuracy"]}


def serve_figures(env: dict[str, str], cwd: Path, texts: list[str], requests: int = 50) -> dict[str, float]:
    with running_server(lambda port: [hotelbot(), "serve", "--port", str(port)], env, cwd, timeout=300) \
            as (proc, base, ready):
        times = []
        for i in range(requests):
            t = time.perf_counter()
            post_json(base, "/analyze", {"texts": [texts[i % len(texts)]]})
            times.append((time.perf_counter() - t) * 1000)
        torch_loaded = "torch" in Path(f"/proc/{proc.pid}/maps").read_text()
        return {"ready_s": ready, "rss_mb": process_rss_mb(proc.pid), "analyze_p50_ms": statistics.median(times[5:]),
                "torch_loaded": torch_loaded}


def train_variant(name: str, root: Path, epochs: int | None, base_model: str | None) -> dict:
    env = workspace(root, epochs, base_model)
    steps = ["classifier", "entities", "sentiment"] if name == "separate" else ["nlu"]
    fit_s, wall_s, version, documents = 0.0, 0.0, None, []
    for model_type in steps:
        out, wall = run(["train", "--model-type", model_type, "--json"], env, root)
        doc = json.loads(out)
        documents.append(doc)
        fit_s += float(doc.get("duration_seconds") or 0.0)
        wall_s += wall
        version = doc["version"]
    run(["deploy", version, "--min-score", "0"], env, root)
    meta = json.loads((root / "registry" / "versions" / version / "metadata.json").read_text("utf-8"))
    recorded = {"intent_macro_f1": meta["metrics"]["macro_f1"],
                "in_scope_accuracy": meta["metrics"].get("in_scope_accuracy"),
                "out_of_scope_recall": meta["metrics"].get("out_of_scope_recall"),
                "entities_micro_f1": meta["entities"]["metrics"]["micro_f1"],
                "sentiment_macro_f1": meta["sentiment"]["metrics"]["macro_f1"]}
    served = served_scores(env, root, version)
    texts = [r["text"] for r in read_jsonl(root / "data" / "entities" / "validation.jsonl")][:20]
    serve = serve_figures(env, root, texts)
    return {"version": version, "fit_s": fit_s, "train_wall_s": wall_s, "recorded": recorded, "served": served,
            "stored_mb": stored_bytes(root / "registry") / 1e6, "serve": serve,
            "runtime": json.loads((root / "registry" / "versions" / version / "model" / "runtime.json").read_text("utf-8")).get("runtime")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    parser.add_argument("--base-model", default=None, help="base model (default: the config's, multilingual-e5-small)")
    parser.add_argument("--margin", type=float, default=0.5, help="points the joint model may lose per task")
    parser.add_argument("--keep", type=Path, help="keep the scratch directory here")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="hotelbot-nlu-"))
    figures = {}
    try:
        for name in ("separate", "joint"):
            print(f"training {name} ...", file=sys.stderr, flush=True)
            figures[name] = train_variant(name, work / name, args.epochs, args.base_model)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    s, j = figures["separate"], figures["joint"]
    print(f"{'':34}{'separate (3 models)':>22}{'joint (1 model)':>18}{'joint - separate':>18}")
    checks = {}
    for group in ("recorded", "served"):
        for key in s[group]:
            a, b = s[group][key], j[group][key]
            if a is None or b is None:
                continue
            print(f"{group + ' ' + key:34}{a:>22.4f}{b:>18.4f}{100 * (b - a):>+17.2f}p")
            if group == "recorded" and key in ("intent_macro_f1", "entities_micro_f1", "sentiment_macro_f1",
                                               "in_scope_accuracy", "out_of_scope_recall"):
                checks[key] = 100 * (b - a) >= -args.margin
    for label, key, fmt in (("fit seconds", "fit_s", ".1f"), ("train wall seconds", "train_wall_s", ".1f"),
                            ("registry stored MB", "stored_mb", ".1f")):
        print(f"{label:34}{s[key]:>22{fmt}}{j[key]:>18{fmt}}")
    for key, fmt in (("ready_s", ".2f"), ("rss_mb", ".0f"), ("analyze_p50_ms", ".1f")):
        print(f"{'serve ' + key:34}{s['serve'][key]:>22{fmt}}{j['serve'][key]:>18{fmt}}")
    print(f"{'serve imports torch':34}{str(s['serve']['torch_loaded']):>22}{str(j['serve']['torch_loaded']):>18}")
    print(f"{'intent runtime':34}{str(s['runtime']):>22}{str(j['runtime']):>18}")
    within = all(checks.values())
    print(f"joint within {args.margin} points of separate on every task: {'yes' if within else 'no'} "
          f"({', '.join(f'{k} {v}' for k, v in checks.items())})")
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "within_margin": within, "checks": checks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
