"""What helps the intent classifier on messages it never saw: an ablation measured on the independent test set.

Every row trains on the same prepared split of ``datasets/hotel_intents_es.json`` (seed 42, as ``make run``)
and chooses its out-of-scope threshold and best epoch on the same validation split, as ``hotelbot train``
does; then it is scored once on ``datasets/hotel_intents_es_test.jsonl`` (never used for any choice):

* ``tfidf``: TF-IDF (char 2-5 + word 1-2) + LinearSVC, the floor;
* ``data55`` / ``data105``: e5 trained on the training texts that were in the 55- or the 105-per-intent data
  (the first 55, or 105 (out_of_scope 135), of each intent in the file), to measure what the data growth
  bought;
* ``default``: e5 on the whole training split, the shipped settings (what ``make run`` trains);
* ``augment``: ``default`` + one noised copy of each training text (accents stripped, one random typo:
  a dropped, doubled or swapped letter), seeded;
* ``class_weights``: ``default`` with the loss weighted by inverse class frequency (``class_weights``);
* ``epochs4`` / ``epochs6``: ``default`` with 4 or 6 epochs (early stopping, patience 2);
* ``freeze0`` / ``freeze2`` / ``freeze4``: ``default`` with that many bottom encoder layers frozen
  (``freeze_layers``; the default, auto, is 2 of e5's 12);
* ``label_smoothing``: ``default`` with the intents' targets smoothed by 0.1 (``train --label-smoothing 0.1``);
* ``knn``: ``default``'s model with the nearest-neighbour out-of-scope detector instead of the softmax
  threshold (cosine to the k-th nearest in-scope training text, k in 1/5/10 and its threshold chosen by
  validation macro-F1, the intent still from the classifier; Sun et al., ICML 2022), from the same run;
* ``ensemble``: ``default``'s softmax averaged with the ``tfidf`` floor's (weight, temperature and
  out-of-scope threshold chosen on validation), from the same run: not in the product.

    .venv/bin/python benchmarks/intent_ablation.py [--rows tfidf,data55,data105,default,augment,class_weights,
        epochs4,epochs6,label_smoothing,freeze0,freeze2,freeze4,knn,ensemble] [--json out.json] [--seed 42]

The shipped settings come from the usual layers (defaults < config file < environment): e.g.
``TRAINING_PRECISION=fp32`` or ``TRAINING_EPOCHS=3`` measure every e5 row with that setting.

A benchmark, not a test: it trains several models (about 2-8 minutes each on 2 CPUs) and never fails a build
on a number. CLINC150 is measured by benchmarks/clinc150.py (about 30 minutes per model on 2 CPUs).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import unicodedata
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from base_models import tfidf_svm_model  # noqa: E402 - the benchmarks directory
from clinc150 import encode_split  # noqa: E402 - the benchmarks directory

from hotelbot_cli.config import load_settings  # noqa: E402
from hotelbot_cli.data import OUT_OF_SCOPE, Example, near_duplicate_key, prepare, read_test_set  # noqa: E402
from hotelbot_cli.evaluation import classification_metrics  # noqa: E402
from hotelbot_cli.training.calibration import apply_threshold  # noqa: E402

DATA = REPO / "datasets" / "hotel_intents_es.json"
TEST = REPO / "datasets" / "hotel_intents_es_test.jsonl"
ROWS = ("tfidf", "data55", "data105", "default", "augment", "class_weights", "epochs4", "epochs6", "label_smoothing",
        "freeze0", "freeze2", "freeze4", "knn", "ensemble")
# The earlier batches of the data: (examples per intent, out_of_scope examples), the first ones in the file
BATCHES = {"data55": (55, 55), "data105": (105, 135)}


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c) or c == "\u0303")


def noised(text: str, rng: random.Random) -> str:
    """Accents stripped (ñ kept) and one typo: a letter dropped, doubled or swapped with the next one."""
    out = unicodedata.normalize("NFC", strip_accents(text))
    letters = [i for i, c in enumerate(out) if c.isalpha()]
    if len(letters) < 4:
        return out
    i = rng.choice(letters[:-1])
    op = rng.randrange(3)
    if op == 0:
        return out[:i] + out[i + 1:]
    if op == 1:
        return out[:i] + out[i] + out[i:]
    return out[:i] + out[i + 1] + out[i] + out[i + 2:]


def scores(truth: list[str], predicted: list[str], labels: list[str]) -> dict[str, float]:
    m = classification_metrics(truth, predicted, labels, "macro_f1")
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "in_scope_accuracy": m.get("in_scope_accuracy"),
            "out_of_scope_recall": m.get("out_of_scope_recall")}


def tfidf_row(train, validation, test, labels):
    start = time.monotonic()
    model = tfidf_svm_model()
    model.fit([e.text for e in train], [e.intent for e in train])
    seconds = time.monotonic() - start
    val = scores([e.intent for e in validation], list(model.predict([e.text for e in validation])), labels)
    return {"val_macro_f1": val["macro_f1"], **scores([e.intent for e in test], list(model.predict([e.text for e in test])),
                                                        labels), "train_texts": len(train), "seconds": round(seconds, 1)}


def e5_row(cfg, train, validation, test, labels, models_dir):
    from hotelbot_cli.runtime import TorchPredictor
    from hotelbot_cli.training.classify import fit_classifier

    start = time.monotonic()
    fit = fit_classifier(cfg, "macro_f1", train, validation, labels, models_dir)
    seconds = time.monotonic() - start
    predictor = TorchPredictor(fit.model, fit.tokenizer, "ablation")
    predicted = predictor.predict_labels([e.text for e in test])
    row = {"val_macro_f1": fit.metrics["macro_f1"], **scores([e.intent for e in test], predicted, labels),
           "threshold": fit.threshold, "best_epoch": fit.best_epoch, "train_texts": len(train),
           "seconds": round(seconds, 1)}
    return row, fit


def knn_row(fit, train, validation, test, labels):
    """The nearest-neighbour detector on ``fit``'s embeddings: k and threshold chosen on validation."""
    def embed(examples):
        pooled, logits = encode_split(fit.model, fit.tokenizer, [e.text for e in examples])
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True), logits

    bank, _ = embed([e for e in train if e.intent != OUT_OF_SCOPE])
    val_emb, val_logits = embed(validation)
    test_emb, test_logits = embed(test)
    val_truth, test_truth = [e.intent for e in validation], [e.intent for e in test]

    def kth(emb, k):
        sims = emb @ bank.T
        return -np.sort(-sims, axis=1)[:, k - 1]

    def labelled(logits, similarity, threshold):
        argmax = [labels[i] for i in logits.argmax(axis=1)]
        return [OUT_OF_SCOPE if s < threshold else a for a, s in zip(argmax, similarity)]

    best = None
    for k in (1, 5, 10):
        similarity = kth(val_emb, k)
        for threshold in np.unique(np.round(similarity, 3)):
            f1 = classification_metrics(val_truth, labelled(val_logits, similarity, threshold), labels,
                                        "macro_f1")["macro_f1"]
            if best is None or f1 > best[0] + 1e-12:
                best = (f1, k, float(threshold))
    f1, k, threshold = best
    predicted = labelled(test_logits, kth(test_emb, k), threshold)
    return {"val_macro_f1": f1, **scores(test_truth, predicted, labels), "k": k, "threshold": threshold,
            "train_texts": len(train), "seconds": 0.0}


def ensemble_row(fit, train, validation, test, labels):
    """``fit``'s softmax averaged with the TF-IDF + SVM floor's (its decision scores through a softmax at
    temperature T): the weight, T and the out-of-scope threshold on the averaged confidence all chosen by
    validation macro-F1, then test scored once."""
    from hotelbot_cli.runtime import TorchPredictor

    svm = tfidf_svm_model()
    svm.fit([e.text for e in train], [e.intent for e in train])
    order = [list(svm.classes_).index(label) for label in labels]
    predictor = TorchPredictor(fit.model, fit.tokenizer, "ablation")

    def inputs(examples):
        texts = [e.text for e in examples]
        return predictor.probabilities(texts).numpy(), svm.decision_function(texts)[:, order]

    def combined(probs, scores, weight, temperature):
        z = np.exp((scores - scores.max(axis=1, keepdims=True)) / temperature)
        return (1 - weight) * probs + weight * z / z.sum(axis=1, keepdims=True)

    (val_p, val_s), (test_p, test_s) = inputs(validation), inputs(test)
    val_truth = [e.intent for e in validation]
    best = None
    for temperature in (0.05, 0.1, 0.2, 0.5):
        for weight in np.round(np.arange(0.0, 1.01, 0.1), 1):
            p = combined(val_p, val_s, weight, temperature)
            for threshold in np.round(np.arange(0.0, 0.8, 0.025), 3):
                f1 = classification_metrics(val_truth, apply_threshold(p, labels, threshold), labels,
                                            "macro_f1")["macro_f1"]
                if best is None or f1 > best[0] + 1e-12:
                    best = (f1, float(weight), temperature, float(threshold))
    f1, weight, temperature, threshold = best
    predicted = apply_threshold(combined(test_p, test_s, weight, temperature), labels, threshold)
    return {"val_macro_f1": f1, **scores([e.intent for e in test], predicted, labels), "weight": weight,
            "temperature": temperature, "threshold": threshold, "train_texts": len(train), "seconds": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--seed", type=int, default=None,
                        help="the e5 rows' training seed (head initialisation, batch order); the split stays "
                        "make run's (seed 42) [default: the settings' TRAINING_SEED, 42]")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)}")

    prepared = prepare(DATA)
    train, validation, labels = prepared.train, prepared.validation, prepared.labels
    test = read_test_set(TEST).examples
    intents = json.loads(DATA.read_text("utf-8"))["intents"]
    batches = {name: {near_duplicate_key(t) for label, texts in intents.items()
                      for t in texts[: (oos if label == OUT_OF_SCOPE else per_intent)]}
               for name, (per_intent, oos) in BATCHES.items()}
    settings = load_settings()
    cfg = replace(settings.training) if args.seed is None else replace(settings.training, seed=args.seed)
    results, fits = {}, {}
    print(f"{len(train)} train / {len(validation)} validation texts, {len(test)} test texts, {len(labels)} intents; "
          f"training seed {cfg.seed}", file=sys.stderr)

    def e5(config, texts):
        return e5_row(config, texts, validation, test, labels, settings.paths.models_dir)

    def default_fit():  # the shipped settings' model, trained once for the default and knn rows
        if "default" not in fits:
            results["default"], fits["default"] = e5(cfg, train)
        return fits["default"]

    for name in rows:
        print(f"row {name} ...", file=sys.stderr, flush=True)
        if name == "tfidf":
            results[name] = tfidf_row(train, validation, test, labels)
        elif name in BATCHES:
            results[name], _ = e5(cfg, [e for e in train if near_duplicate_key(e.text) in batches[name]])
        elif name == "default":
            default_fit()
        elif name == "knn":
            results[name] = knn_row(default_fit(), train, validation, test, labels)
        elif name == "ensemble":
            results[name] = ensemble_row(default_fit(), train, validation, test, labels)
        elif name == "augment":
            rng = random.Random(42)
            extra = [Example(noised(e.text, rng), e.intent) for e in train]
            keys = {near_duplicate_key(e.text) for e in test}
            extra = [e for e in extra if near_duplicate_key(e.text) not in keys]  # never a test text
            results[name], _ = e5(cfg, train + extra)
        elif name == "class_weights":
            results[name], _ = e5(replace(cfg, class_weights=True), train)
        elif name == "label_smoothing":
            results[name], _ = e5(replace(cfg, label_smoothing=0.1), train)
        elif name in ("epochs4", "epochs6"):
            results[name], _ = e5(replace(cfg, epochs=int(name[-1])), train)
        elif name.startswith("freeze"):
            results[name], _ = e5(replace(cfg, freeze_layers=int(name[len("freeze"):])), train)
        print(json.dumps({name: results.get(name)}), file=sys.stderr, flush=True)

    print(f"\n{'row':<16}{'train':>7}{'val F1':>9}{'test acc':>10}{'in-scope':>10}{'oos rec':>9}{'seconds':>9}")
    for name, r in results.items():
        print(f"{name:<16}{r['train_texts']:>7}{r['val_macro_f1']:>9.4f}{r['accuracy']:>10.4f}"
              f"{r['in_scope_accuracy'] or 0:>10.4f}{r['out_of_scope_recall'] or 0:>9.4f}{r['seconds']:>9.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), "utf-8")


if __name__ == "__main__":
    main()
