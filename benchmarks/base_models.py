"""Compare the packaged base models with a TF-IDF + linear SVM baseline on the shipped dataset.

One run, one split (the project's own `prepare`, seed 42), three rows: validation macro-F1, accuracy,
training wall time, and accuracy on the held-out sentences (datasets/hotel_intents_es_holdout.json).
Each model trains through the project's own library, exactly as `hotelbot train` does.

    .venv/bin/python benchmarks/base_models.py [--epochs 4] [--json out.json]

This is a benchmark, not a test: it takes minutes and never fails a build on a number.
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
from hotelbot_cli.data import prepare_dataset  # noqa: E402
from hotelbot_cli.evaluation import classification_metrics
from hotelbot_cli.registry import ModelRegistry  # noqa: E402

DATA = REPO / "datasets" / "hotel_intents_es.json"
HOLDOUT = REPO / "datasets" / "hotel_intents_es_holdout.json"
MODELS = ("packaged:multilingual-e5-small", "packaged:all-minilm-l6-v2")


def tfidf_svm_model():
    """The floor every intent benchmark compares with: TF-IDF (char 2-5 + word 1-2) + LinearSVC, unfitted."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    return make_pipeline(
        make_union(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
                   TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)),
        LinearSVC(C=1.0),
    )


def tfidf_svm(prepared, holdout):
    start = time.monotonic()
    model = tfidf_svm_model()
    model.fit([e.text for e in prepared.train], [e.intent for e in prepared.train])
    seconds = time.monotonic() - start
    metrics = classification_metrics([e.intent for e in prepared.validation],
                                     list(model.predict([e.text for e in prepared.validation])), prepared.labels)
    hold = list(model.predict([r["text"] for r in holdout]))
    return metrics, seconds, sum(p == r["intent"] for p, r in zip(hold, holdout)) / len(holdout)


def transformer(base_model, epochs, workdir, prepared_dir, holdout):
    from hotelbot_cli.runtime import TorchPredictor
    from hotelbot_cli.components.intents.train import train_classifier

    settings = load_settings(env={**os.environ, "HOTELBOT_HOME": str(workdir / "home"),
                                  "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"},
                             overrides={"training_config": {"base_model": base_model, "epochs": epochs}},
                             path_overrides={"registry": workdir / "registry", "data": prepared_dir})
    registry = ModelRegistry(settings.paths.registry)
    result = train_classifier(settings, prepared_dir, registry, force=True)
    predictor = TorchPredictor.from_version(result.version)
    hold = predictor.predict_labels([r["text"] for r in holdout])
    return result.metrics, result.duration_seconds, sum(p == r["intent"] for p, r in zip(hold, holdout)) / len(holdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()

    holdout = json.loads(HOLDOUT.read_text("utf-8"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = load_settings(env={})
        prepared = prepare_dataset(DATA, work / "processed", settings.data)
        metrics, seconds, hold = tfidf_svm(prepared, holdout)
        rows.append(("TF-IDF (char 2-5 + word 1-2) + LinearSVC", metrics, seconds, hold))
        for name in args.models:
            metrics, seconds, hold = transformer(name, args.epochs, work / name.split(":")[-1], work / "processed",
                                                 holdout)
            rows.append((name, metrics, seconds, hold))

    print(f"\nshipped dataset: {prepared.summary['train_size']} train / {prepared.summary['validation_size']} "
          f"validation texts, {len(prepared.labels)} intents; {len(holdout)} held-out texts")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"epochs {args.epochs}\n")
    header = f"{'model':<44} {'val macro-F1':>12} {'val acc':>8} {'held-out acc':>12} {'train time':>11}"
    print(header)
    print("-" * len(header))
    for name, m, seconds, hold in rows:
        print(f"{name:<44} {m['macro_f1']:>12.4f} {m['accuracy']:>8.4f} {hold:>12.4f} {seconds:>10.1f}s")
    if args.json:
        args.json.write_text(json.dumps([{"model": n, "macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
                                          "holdout_accuracy": h, "train_seconds": s} for n, m, s, h in rows],
                                        indent=2))


if __name__ == "__main__":
    main()
