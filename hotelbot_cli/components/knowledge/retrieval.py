"""Retrieval metrics: a question set (``{"question", "doc", "section"}`` per line) and hit@1 / hit@k / MRR of
rankings against it, which :func:`.kb.evaluate_retrieval` computes for a version beside a BM25 baseline and
:func:`.embedding.choose_query_runtime` for each ONNX query encoder."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, cast

from ..._io import iter_jsonl
from ...errors import DataError
from .documents import Chunk


def norm_heading(text: str) -> str:
    """Headings compare equal up to case, accents, punctuation and spacing."""
    folded = "".join(ch for ch in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(ch))
    return " ".join(re.findall(r"\w+", folded))


@dataclass(frozen=True)
class EvalQuestion:
    question: str
    doc: str
    section: str


def read_eval_questions(path: Path) -> list[EvalQuestion]:
    """``{"question", "doc", "section"}`` per line; a DataError names the line of a bad record."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise DataError(f"retrieval questions not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    out = []
    for number, record in iter_jsonl(path, text):
        try:
            item = EvalQuestion(*(record[k] for k in ("question", "doc", "section")))
        except (KeyError, TypeError) as exc:
            raise DataError(f'{path}: line {number}: expected {{"question", "doc", "section"}}: {exc}') from None
        if not all(isinstance(v, str) and v.strip() for v in (item.question, item.doc, item.section)):
            raise DataError(f"{path}: line {number}: question, doc and section must be non-empty strings")
        out.append(item)
    if not out:
        raise DataError(f"{path} holds no questions")
    return out


def ranking_metrics(rankings: Sequence[Sequence[Chunk]], questions: Sequence[EvalQuestion], k: int) -> dict[str, float]:
    """hit@1, hit@k and MRR (over the top k) at section level (right doc AND heading) and document level."""

    def first(ranked: Sequence[Chunk], match: Callable[[Chunk], bool]) -> int | None:
        return next((r for r, c in enumerate(ranked[:k], 1) if match(c)), None)

    section_ranks, doc_ranks = [], []
    for ranked, q in zip(rankings, questions):
        target = norm_heading(q.section)
        # (the casts only type the lambdas: mypy cannot infer a lambda with default arguments)
        section_ranks.append(
            first(
                ranked,
                cast(
                    "Callable[[Chunk], bool]",
                    lambda c, q=q, target=target: c.doc == q.doc and norm_heading(c.heading) == target,
                ),
            )
        )
        doc_ranks.append(first(ranked, cast("Callable[[Chunk], bool]", lambda c, q=q: c.doc == q.doc)))
    n = max(len(questions), 1)

    def block(ranks: list[int | None], prefix: str) -> dict[str, float]:
        return {
            f"{prefix}hit@1": sum(r == 1 for r in ranks) / n,
            f"{prefix}hit@{k}": sum(r is not None for r in ranks) / n,
            f"{prefix}mrr": sum(1 / r for r in ranks if r) / n,
        }

    return {**block(section_ranks, ""), **block(doc_ranks, "doc_")}


__all__ = ["EvalQuestion", "ranking_metrics", "read_eval_questions"]
