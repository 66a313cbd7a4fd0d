"""The reply evaluation set: guest questions written from the documents, each with the facts a correct reply
must state (JSONL of {"question", "facts": [...], "doc"?, "intent"?, "section"?}).

Which one training scores with (:func:`evaluation_set`): the one ``train --reply-eval`` names; else the one
``prepare --replies FILE --reply-eval EVAL`` stored beside the prepared pairs (:data:`PREPARED_EVAL`), so that
training reads the same set from any working directory (a CI script, another checkout); else the shipped
``datasets/reply_eval_es.jsonl`` of the working directory (:data:`DEFAULT_EVAL`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._io import atomic_write_bytes, fsync_dir, iter_jsonl
from ...errors import DataError

DEFAULT_EVAL = Path("datasets/reply_eval_es.jsonl")  # the reply evaluation set `train` scores with by default
PREPARED_EVAL = "reply_eval.jsonl"  # its copy in a prepared reply directory (`prepare --replies --reply-eval`)


@dataclass(frozen=True)
class EvalQuestion:
    question: str
    facts: tuple[str, ...]
    doc: str | None = None
    intent: str | None = None


def _parse(path: Path, text: str) -> list[EvalQuestion]:
    rows: list[EvalQuestion] = []
    for number, record in iter_jsonl(path, text):
        record = record if isinstance(record, dict) else {}
        question, facts = record.get("question"), record.get("facts")
        if (
            not isinstance(question, str)
            or not question.strip()
            or not isinstance(facts, list)
            or not facts
            or not all(isinstance(f, str) and f.strip() for f in facts)
        ):
            raise DataError(f'{path}: line {number}: expected {{"question": text, "facts": [text, ...]}}')
        rows.append(EvalQuestion(question, tuple(facts), record.get("doc"), record.get("intent")))
    if not rows:
        raise DataError(f"{path} holds no question")
    return rows


def _read(path: Path) -> tuple[bytes, str]:
    """The file's bytes and their UTF-8 text."""
    try:
        data = path.read_bytes()
        return data, data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the reply evaluation set {path}: {exc}") from None


def read_eval_file(path: Path) -> list[EvalQuestion]:
    """The reply evaluation set: one JSON object per line with "question" and "facts" (non-empty strings)."""
    path = Path(path)
    return _parse(path, _read(path)[1])


def evaluation_set(data: Path | None, explicit: Path | None = None) -> Path | None:
    """The evaluation set training scores with: ``explicit``, else ``data``'s stored copy (``data``: a prepared
    reply directory), else :data:`DEFAULT_EVAL` when the working directory has it; None when there is none."""
    if explicit is not None:
        return Path(explicit)
    if data is not None and (Path(data) / PREPARED_EVAL).is_file():
        return Path(data) / PREPARED_EVAL
    return DEFAULT_EVAL if DEFAULT_EVAL.is_file() else None


class StoredEvaluation:
    """An evaluation set read and checked now (bad lines raise before anything is written), to be stored in a
    prepared reply directory by :meth:`write`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data, text = _read(self.path)
        self.questions = _parse(self.path, text)

    def summary(self) -> dict[str, Any]:
        """What the prepared data's dataset.json records about it."""
        return {
            "file": str(self.path),
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "questions": len(self.questions),
            "stored_as": PREPARED_EVAL,
        }

    def write(self, directory: Path) -> Path:
        target = Path(directory) / PREPARED_EVAL
        atomic_write_bytes(target, self.data)
        return target


def forget_stored_evaluation(directory: Path) -> None:
    """Remove a copy an earlier ``prepare --replies --reply-eval`` left: the prepared directory holds what this
    prepare was given, nothing older."""
    stale = Path(directory) / PREPARED_EVAL
    if stale.is_file():
        stale.unlink()
        fsync_dir(stale.parent)


__all__ = [
    "DEFAULT_EVAL",
    "PREPARED_EVAL",
    "EvalQuestion",
    "StoredEvaluation",
    "evaluation_set",
    "forget_stored_evaluation",
    "read_eval_file",
]
