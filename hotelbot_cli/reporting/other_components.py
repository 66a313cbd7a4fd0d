"""The report's "Other components" section: the entity tagger, sentiment model, knowledge base and
response generator a version holds besides the intent classifier (their data, and their facts and
tables for the HTML and Markdown renderers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..components import registered
from .formatting import _f, _pct


def component_report(path: Path, metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For ``hotelbot report``: every registered component other than the primary one (the intent classifier)
    that the version files in ``path`` (published or staged) with ``metadata`` hold, through its
    ``report_section``. {} when the version has none of them.

    Every entry has ``kind`` ("labels" for entities / sentiment, "generation", "retrieval", "replies"), ``headline``,
    ``rows``, ``dataset``, ``base_model``, ``training``, ``carried_from`` and ``mlflow_run_id``; a generator
    adds ``baseline`` (the retrieval-only baseline measured in the same run), ``grounding``, ``generation``
    (decoding settings) and ``samples`` (validation messages with reference, generated and baseline reply)."""
    out: dict[str, dict[str, Any]] = {}
    for component in registered():
        if component.primary:
            continue
        section = component.report_section(Path(path), metadata)
        if section is not None:
            out[component.name] = section
    return out


def _question_layers(q: dict[str, Any] | None) -> str:
    """The reply model's tuned question layers, as its metrics record them."""
    if not q:
        return "- (trained before them: frozen cosines)"
    if not q.get("tuned"):
        return f"not tuned ({q.get('reason', '-')}): frozen cosines"
    return (
        f"top {q.get('layers')} layers tuned on {q.get('examples')} questions ({q.get('folds')} folds, "
        f"rank {q.get('rank')}, {(q.get('stored_bytes') or 0) / 1e6:.2f} MB, {q.get('seconds')} s)"
    )


def _component_facts(c: dict[str, Any]) -> list[tuple[str, str]]:
    """Key facts of one component of the report (see component_report), for HTML and Markdown."""
    h, kind = c["headline"], c.get("kind", "labels")
    carried = ("carried over from", c["carried_from"] or "- (built for this version)")
    sizes = (
        "train / validation",
        f"{c['dataset'].get('train_size', '-')} / {c['dataset'].get('validation_size', '-')}",
    )
    seconds = c["training"].get("duration_seconds")
    took = ("training time", f"{seconds} s" if seconds is not None else "-")
    if kind == "retrieval":
        return [
            ("documents / chunks", f"{h.get('documents', '-')} / {h.get('chunks', '-')}"),
            ("embedding model", c["base_model"] or "-"),
            ("dimensions", str(h.get("dim", "-"))),
            ("build time", f"{seconds} s" if seconds is not None else "-"),
            ("embedded / reused chunks", f"{h.get('embedded_chunks', '-')} / {h.get('reused_chunks', '-')}"),
            ("retrieval quality", "hotelbot validate --kb-eval"),
            carried,
        ]
    if kind == "replies":
        ranker = c.get("ranker") or {}
        kinds = ", ".join(f"{k} {v}" for k, v in (c.get("kinds") or {}).items()) or "-"
        return [
            (
                "overall",
                f"fact accuracy {_f(h.get('fact_accuracy'))}, unsupported-fact rate "
                f"{_f(h.get('unsupported_fact_rate'))} on {c.get('num_questions', '-')} evaluation "
                "questions (the nearest training reply beside it)",
            ),
            (
                "sentence ranker",
                f"top-1 {_f(ranker.get('top1_accuracy'))} (embedding cosine alone "
                f"{_f(ranker.get('baseline_cosine_top1'))}), MRR {_f(ranker.get('mrr'))} on "
                f"{ranker.get('questions', '-')} validation questions",
            ),
            ("question layers", _question_layers(c.get("question_layers"))),
            ("replies by kind", kinds),
            ("knowledge base", c.get("knowledge_version") or "-"),
            ("training time", f"{seconds} s" if seconds is not None else "-"),
            carried,
        ]
    if kind == "generation":
        grounding = c.get("grounding") or {}
        generation = c.get("generation") or {}
        decoding = ", ".join(f"{k} {v}" for k, v in generation.items() if v not in (None, False)) or "-"
        facts = [
            (
                "overall",
                f"BLEU {_f(h.get('bleu'), 2)} vs {_f(c['baseline'].get('bleu'), 2)} for the "
                f"retrieval-only baseline (same {c.get('num_examples', '-')} validation pairs)",
            ),
            ("architecture", c.get("architecture") or "-"),
            ("base model", c["base_model"] or "-"),
            sizes,
            took,
            (
                "grounding",
                f"top {grounding.get('passages')} passages of {c.get('knowledge_version')}; the "
                f"reference's document retrieved for {_pct(grounding.get('source_hit_rate'))} of "
                "the pairs"
                if c.get("grounded") and grounding
                else "none (no knowledge base)",
            ),
            ("decoding", decoding),
            carried,
        ]
        if c.get("bleu_signature"):
            facts.append(("BLEU signature", c["bleu_signature"]))
        return facts
    return [
        ("overall score", f"{_f(h.get('overall_score'))} ({h.get('metric')})"),
        ("base model", c["base_model"] or "-"),
        sizes,
        took,
        carried,
    ]


def _component_table(c: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]], tuple[int, ...]]:
    if c.get("kind") == "replies":
        return (
            ["metric", "replies", "nearest training reply"],
            [
                (row["metric"], _f(row["replies"]), _f(row["baseline"]) if row["baseline"] is not None else "-")
                for row in c["rows"]
            ],
            (1, 2),
        )
    if c.get("kind") == "generation":
        return (
            ["metric", "generator", "retrieval baseline"],
            [
                (row["metric"], _f(row["generator"]), _f(row["baseline"]) if row["baseline"] is not None else "-")
                for row in c["rows"]
            ],
            (1, 2),
        )
    return (
        ["label", "precision", "recall", "F1", "support"],
        [(row["label"], _f(row["precision"]), _f(row["recall"]), _f(row["f1"]), row["support"]) for row in c["rows"]],
        (1, 2, 3, 4),
    )


def _component_samples(c: dict[str, Any]) -> tuple[str, list[str], list[tuple[Any, ...]]]:
    """(title, header, rows) of a component's sample replies ([] rows when it has none)."""
    samples = c.get("samples") or []
    if c.get("kind") == "replies":
        return (
            "Sample replies (evaluation questions)",
            ["question", "reply", "kind", "missing facts"],
            [(x["message"], x["reply"], x["kind"], ", ".join(x.get("missing_facts") or []) or "-") for x in samples],
        )
    return (
        "Sample replies (validation)",
        ["message", "reference", "generated", "retrieval baseline"],
        [(x["message"], x["reference"], x["generated"], x["baseline"]) for x in samples],
    )
