"""Retrieval quality of the knowledge base: dense embeddings vs a BM25 baseline on the shipped documents.

One run: chunk datasets/documentos/ (the project's own `prepare --documents` defaults), build the index
through the project's library exactly as `hotelbot train --model-type embeddings` does (into a temporary
registry), then score every question of datasets/kb_eval_es.jsonl with `evaluate_retrieval`, which ranks
the same chunks with BM25 in the same run. A hit is a retrieved chunk of the right document whose heading
is the question's section; the doc-level columns count any chunk of the right document.

    .venv/bin/python benchmarks/retrieval.py [--base-model packaged:multilingual-e5-small] [--k 5]
                                             [--chunk-size 800] [--json out.json] [--misses]

This is a benchmark, not a test: it never fails a build on a number.
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
from hotelbot_cli.components.knowledge.documents import DEFAULT_OVERLAP_CHARS  # noqa: E402
from hotelbot_cli.components.knowledge.kb import evaluate_retrieval, prepare_documents, train_knowledge_base, write_prepared_documents
from hotelbot_cli.registry import ModelRegistry  # noqa: E402

DOCUMENTS = REPO / "datasets" / "documentos"
QUESTIONS = REPO / "datasets" / "kb_eval_es.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="packaged:multilingual-e5-small")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=800)
    parser.add_argument("--documents", type=Path, default=DOCUMENTS)
    parser.add_argument("--questions", type=Path, default=QUESTIONS)
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--misses", action="store_true", help="list the questions the dense retriever missed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = load_settings(env={**os.environ, "HOTELBOT_HOME": str(work / "home"),
                                      "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"},
                                 overrides={"training_config": {"base_model": args.base_model}},
                                 path_overrides={"registry": work / "registry"})
        prepared = prepare_documents(args.documents, max_chars=args.chunk_size,
                                     overlap_chars=min(DEFAULT_OVERLAP_CHARS, args.chunk_size // 4))
        write_prepared_documents(prepared, work / "documents")
        built = train_knowledge_base(settings, work / "documents", ModelRegistry(settings.paths.registry))
        start = time.monotonic()
        report = evaluate_retrieval(built.version, args.questions, k=args.k, models_dir=settings.paths.models_dir)
        eval_seconds = time.monotonic() - start

    k = args.k
    print(f"\n{len(prepared.documents)} documents, {report['chunks']} chunks (max {args.chunk_size} characters); "
          f"{report['questions']} questions; k = {k}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; index built "
          f"in {built.build_seconds:.1f}s (model load + {built.embedded_chunks} chunks), "
          f"{report['questions']} queries embedded in {report['dense_query_seconds']:.2f}s "
          f"(evaluation {eval_seconds:.1f}s incl. model load)\n")
    columns = ("hit@1", f"hit@{k}", "mrr", "doc_hit@1", f"doc_hit@{k}", "doc_mrr")
    header = f"{'retriever':<40}" + "".join(f"{c:>12}" for c in columns)
    print(header)
    print("-" * len(header))
    for name, key in ((f"dense: {args.base_model}", "dense"), ("BM25 (k1 1.5, b 0.75)", "bm25")):
        print(f"{name:<40}" + "".join(f"{report[key][c]:>12.4f}" for c in columns))
    if report["unknown_targets"]:
        print(f"\nquestions naming a section that is not in the index: {report['unknown_targets']}")
    if args.misses:
        print(f"\ndense misses at k={k}:")
        for miss in report["misses"]:
            print(f"  {miss['question']!r}: expected {miss['expected']}, top-1 {miss['got']}")
    if args.json:
        args.json.write_text(json.dumps({**report, "build_seconds": built.build_seconds}, indent=2,
                                        ensure_ascii=False))


if __name__ == "__main__":
    main()
