"""Entity extraction and sentiment on the shipped data, each beside a trivial baseline from the same run.

Trains both components with the default offline base model (packaged multilingual-e5-small) into a
throw-away registry, reloads each published version from disk, and prints:

* entities (datasets/entidades_es.jsonl, seeded 80/20 split): exact-match precision/recall/F1 per type
  and micro/macro, for the fine-tuned model and for a dictionary baseline (every entity string of the
  training split, matched case-insensitively on word boundaries, longest match first, labelled with its
  most frequent type); plus the alignment ceiling (share of gold entities the tokenizer can represent)
  and the recall on "unseen" entities, whose text never occurs as a training entity (the dictionary
  scores 0 there by construction; the shipped data repeats most entity strings across the split);
* sentiment (datasets/sentimiento_es.jsonl, stratified 80/20): accuracy and macro-F1 for the fine-tuned
  model, a majority-class baseline and TF-IDF (word 1-2 grams + char 2-5 grams) + logistic regression.

    HOTELBOT_MODEL_CACHE=.cache/models .venv/bin/python benchmarks/entities_sentiment.py --json out.json

Never fails a build on a figure; exits non-zero only when something cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def gazetteer_baseline(train, validation):
    """Predicted (type, start, end) sets for the validation texts from the training split's entity strings."""
    surfaces: dict[str, Counter] = defaultdict(Counter)
    for example in train:
        for span in example.entities:
            surfaces[example.text[span.start:span.end].casefold()][span.label] += 1
    patterns = sorted(surfaces, key=len, reverse=True)
    compiled = [(s, re.compile(r"(?<!\w)" + re.escape(s) + r"(?!\w)", re.IGNORECASE)) for s in patterns]
    out = []
    for example in validation:
        taken = [False] * len(example.text)
        found = set()
        for surface, pattern in compiled:  # longest first; no overlaps
            for m in pattern.finditer(example.text):
                if any(taken[m.start():m.end()]):
                    continue
                taken[m.start():m.end()] = [True] * (m.end() - m.start())
                found.add((surfaces[surface].most_common(1)[0][0], m.start(), m.end()))
        out.append(found)
    return out


def unseen_recall(train, validation, predicted):
    """Recall on validation entities whose text (case-insensitive) is no training entity's text."""
    seen = {e.text[s.start:s.end].casefold() for e in train for s in e.entities}
    unseen = [(e, (s.label, s.start, s.end)) for e in validation for s in e.entities
              if e.text[s.start:s.end].casefold() not in seen]
    hits = sum(g in p for (e, g), p in zip(unseen, [predicted[validation.index(e)] for e, _ in unseen]))
    return {"unseen": len(unseen), "found": hits, "recall": hits / len(unseen) if unseen else None}


def sentiment_baselines(train, validation, labels, metric):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    from hotelbot_cli.evaluation import classification_metrics

    y_train = [e.intent for e in train]
    y_true = [e.intent for e in validation]
    majority = Counter(y_train).most_common(1)[0][0]
    tfidf = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        LogisticRegression(max_iter=2000, C=10.0))
    tfidf.fit([e.text for e in train], y_train)
    return {
        "majority_class": classification_metrics(y_true, [majority] * len(y_true), labels, metric),
        "tfidf_logreg": classification_metrics(y_true, list(tfidf.predict([e.text for e in validation])), labels, metric),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", default="packaged:multilingual-e5-small")
    parser.add_argument("--entity-epochs", type=int, default=6)
    parser.add_argument("--sentiment-epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy CPU)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from hotelbot_cli.config import load_settings
    from hotelbot_cli.components.entities.onnx import load_version_extractor
    from hotelbot_cli.components.entities.tagger import ENTITY_TYPES, alignment_report, entity_metrics, prepare_entities
    from hotelbot_cli.components.entities.train import train_entities
    from hotelbot_cli.modeling import resolve_base_model
    from hotelbot_cli.registry import ModelRegistry
    from hotelbot_cli.components.sentiment.classifier import evaluate_sentiment, prepare_sentiment, train_sentiment

    work = Path(tempfile.mkdtemp(prefix="hotelbot-bench-es-"))
    base_env = {k: v for k, v in os.environ.items() if k.startswith("HOTELBOT_MODEL_CACHE")}
    base_env.setdefault("HOTELBOT_MODEL_CACHE", str(REPO / ".cache" / "models"))

    def settings_for(epochs: int):
        return load_settings(env={**base_env, "HOTELBOT_HOME": str(work / "home"),
                                  "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
                                  "HOTELBOT_BASE_MODEL": args.base_model, "TRAINING_EPOCHS": str(epochs),
                                  "TRAINING_BATCH_SIZE": str(args.batch_size)},
                             path_overrides={"registry": work / "registry"})

    registry = ModelRegistry(work / "registry")
    results: dict = {"base_model": args.base_model, "threads": args.threads}

    # ------------------------------------------------------------ entities
    settings = settings_for(args.entity_epochs)
    prepared = prepare_entities(REPO / "datasets" / "entidades_es.jsonl", settings.data.validation_split,
                                settings.data.seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(args.base_model, settings.paths.models_dir).location)
    ceiling = alignment_report(prepared.validation, tokenizer)
    start = time.monotonic()
    ent = train_entities(settings, REPO / "datasets" / "entidades_es.jsonl", registry, force=True)
    ent_seconds = time.monotonic() - start
    extractor = load_version_extractor(ent.version)  # the published files, loaded as predict/serve do
    predicted = [{(k, s, e) for k, s, e, _ in spans}
                 for spans in extractor.extract_spans([e.text for e in prepared.validation])]
    gold = [e.gold() for e in prepared.validation]
    reloaded = entity_metrics(gold, predicted, prepared.labels)
    dictionary = gazetteer_baseline(prepared.train, prepared.validation)
    baseline = entity_metrics(gold, dictionary, prepared.labels)
    unseen = {"model": unseen_recall(prepared.train, prepared.validation, predicted),
              "dictionary_baseline": unseen_recall(prepared.train, prepared.validation, dictionary)}
    results["entities"] = {"model": reloaded, "dictionary_baseline": baseline, "alignment_ceiling": ceiling["ratio"],
                           "unseen_entity_recall": unseen,
                           "train_size": len(prepared.train), "validation_size": len(prepared.validation),
                           "epochs": args.entity_epochs, "epochs_run": ent.version.metadata["entities"]["training"]["epochs_run"],
                           "train_seconds": round(ent_seconds, 1)}

    # ------------------------------------------------------------ sentiment
    settings = settings_for(args.sentiment_epochs)
    sprep = prepare_sentiment(REPO / "datasets" / "sentimiento_es.jsonl", settings.data.validation_split,
                              settings.data.seed)
    start = time.monotonic()
    sent = train_sentiment(settings, REPO / "datasets" / "sentimiento_es.jsonl", registry, force=True)
    sent_seconds = time.monotonic() - start
    smodel = evaluate_sentiment(sent.version, settings.validation.metric)
    sbase = sentiment_baselines(sprep.train, sprep.validation, sprep.labels, settings.validation.metric)
    results["sentiment"] = {"model": smodel, **sbase, "train_size": len(sprep.train),
                            "validation_size": len(sprep.validation), "epochs": args.sentiment_epochs,
                            "epochs_run": sent.version.metadata["sentiment"]["training"]["epochs_run"],
                            "train_seconds": round(sent_seconds, 1)}
    results["components"] = sent.version.metadata["components"]

    # ------------------------------------------------------------ report
    m, b = reloaded, baseline
    print(f"ENTITIES  base {args.base_model}; {len(prepared.train)} train / {len(prepared.validation)} validation "
          f"sentences; {args.entity_epochs} epochs ({results['entities']['epochs_run']:.0f} run) in {ent_seconds:.0f}s; "
          f"alignment ceiling {ceiling['ratio']:.3f}")
    print(f"{'type':<12}{'support':>8}   {'model P':>8}{'R':>7}{'F1':>7}   {'dict P':>8}{'R':>7}{'F1':>7}")
    for label in [t for t in ENTITY_TYPES if t in m["per_type"]]:
        x, y = m["per_type"][label], b["per_type"][label]
        print(f"{label:<12}{x['support']:>8}   {x['precision']:>8.3f}{x['recall']:>7.3f}{x['f1']:>7.3f}   "
              f"{y['precision']:>8.3f}{y['recall']:>7.3f}{y['f1']:>7.3f}")
    for avg in ("micro", "macro"):
        print(f"{avg:<12}{m['num_gold'] if avg == 'micro' else '':>8}   {m[avg + '_precision']:>8.3f}"
              f"{m[avg + '_recall']:>7.3f}{m[avg + '_f1']:>7.3f}   {b[avg + '_precision']:>8.3f}"
              f"{b[avg + '_recall']:>7.3f}{b[avg + '_f1']:>7.3f}")
    u = unseen["model"]
    print(f"unseen entity strings in validation: {u['unseen']}; model recall {u['found']}/{u['unseen']}, "
          f"dictionary {unseen['dictionary_baseline']['found']}/{u['unseen']}")
    s = results["sentiment"]
    print(f"\nSENTIMENT  {len(sprep.train)} train / {len(sprep.validation)} validation; {args.sentiment_epochs} epochs "
          f"({s['epochs_run']:.0f} run) in {sent_seconds:.0f}s")
    print(f"{'':<16}{'accuracy':>9}{'macro-F1':>10}   per-label F1")
    for name, key in (("fine-tuned", "model"), ("majority class", "majority_class"), ("TF-IDF + LogReg", "tfidf_logreg")):
        r = s[key]
        per = "  ".join(f"{k} {v['f1']:.3f}" for k, v in r["per_intent"].items())
        print(f"{name:<16}{r['accuracy']:>9.3f}{r['macro_f1']:>10.3f}   {per}")
    print(f"\nfinal version {sent.version.name} components: {', '.join(results['components'])}")
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=2, default=str), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
