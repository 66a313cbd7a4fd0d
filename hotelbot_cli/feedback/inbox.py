"""The inbox: captured messages grouped for review, the labels people give them, and the CSV round trip.

Groups: by answered intent, then near-duplicates together (same words once case, accents, punctuation and
the placeholders of masked data are ignored, or word sets at least ``SIMILARITY`` alike), most frequent
first. A label is given to a group's texts (each keeps it, by its normalized text: a message that joins the
group later is not labeled by it); ``labeled.jsonl`` (the labeled texts) is what `hotelbot prepare --add`
takes.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from ..data import LABEL_RE, OUT_OF_SCOPE, near_duplicate_key
from ..errors import DataError
from .capture import directory_lock, read_captured

SIMILARITY = 0.75  # word sets this alike (Jaccard) are near-duplicates: 'la clave del wifi' + 'por favor'
LABELS_FILE = "labels.json"
LABELED_FILE = "labeled.jsonl"
PLACEHOLDER = re.compile(r"<[A-Z]+>")  # masked data (<PERSON>, <PHONE>, ...): not what a message says
FORMULA_START = ("=", "+", "-", "@")
CSV_COLUMNS = ("group", "count", "answered_intent", "reasons", "suggestions", "text", "label")


def normalized(text: str) -> str:
    """prepare's near-duplicate key (case, accents, punctuation and spacing ignored), masked data left out."""
    return near_duplicate_key(PLACEHOLDER.sub(" ", text))


@dataclass
class Group:
    """Captured messages that say the same thing."""

    key: str  # a stable id: the normalized text of its first message
    intent: str | None  # what the model answered
    texts: list[str] = field(default_factory=list)  # distinct texts, most frequent first
    ids: list[str] = field(default_factory=list)  # every captured record's id
    reasons: Counter[str] = field(default_factory=Counter)
    suggestions: Counter[str] = field(default_factory=Counter)  # top-k intents and feedback, summed
    feedback: Counter[str] = field(default_factory=Counter)  # intents clients said were right
    labels: dict[str, str] = field(default_factory=dict)  # text -> its label (a label is given per text)
    _words: set[str] = field(default_factory=set)
    _counts: Counter[str] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def label(self) -> str | None:
        """The group's label when every text has the same one, else None (unlabeled, partly or mixed)."""
        given = {self.labels.get(t) for t in self.texts}
        return given.pop() if len(given) == 1 else None

    @property
    def unlabeled(self) -> bool:
        return any(t not in self.labels for t in self.texts)

    def ranked_suggestions(self, k: int = 3) -> list[str]:
        ranked = [i for i, _ in self.feedback.most_common()] + [i for i, _ in self.suggestions.most_common()]
        return list(dict.fromkeys(ranked))[:k]

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.key,
            "count": self.count,
            "answered_intent": self.intent,
            "texts": self.texts,
            "ids": self.ids,
            "reasons": dict(self.reasons),
            "suggestions": self.ranked_suggestions(),
            "label": self.label,
            "labels": {t: self.labels[t] for t in self.texts if t in self.labels},
        }


def _similar(a: set[str], b: set[str]) -> bool:
    return bool(a and b) and len(a & b) / len(a | b) >= SIMILARITY


def group(records: Iterable[dict[str, Any]], labels: dict[str, str] | None = None) -> list[Group]:
    """Captured records grouped (see the module docstring), most frequent first; a request captured twice (a
    fallback a client then flagged) counts once, its feedback kept. ``labels``: normalized text -> intent."""
    labels = labels or {}
    by_id: dict[str, dict[str, Any]] = {}
    for record in records:
        previous = by_id.get(record["id"])
        if previous is not None:
            previous.setdefault("_reasons", {previous["reason"]})
            previous["_reasons"].add(record["reason"])
            if record.get("feedback"):
                previous["feedback"] = record["feedback"]
            continue
        by_id[record["id"]] = dict(record)
    groups: list[Group] = []
    exact: dict[tuple[str | None, str], Group] = {}  # (answered intent, normalized text) -> its group
    by_intent: dict[str | None, list[Group]] = {}
    for record in by_id.values():
        intent, text_key = record.get("intent"), normalized(record["text"])
        words = set(text_key.split())
        target = exact.get((intent, text_key)) or next(
            (g for g in by_intent.get(intent, []) if _similar(g._words, words)), None
        )
        if target is None:  # the key says the answered intent too: the same text answered two ways is two groups
            target = Group(key=f"{intent or '-'}|{text_key or record['id']}", intent=intent, _words=words)
            groups.append(target)
            by_intent.setdefault(intent, []).append(target)
        exact[(intent, text_key)] = target
        target.ids.append(record["id"])
        target._counts[record["text"]] += 1
        for reason in record.get("_reasons", {record["reason"]}):
            target.reasons[reason] += 1
        for rank, candidate in enumerate(record.get("top_k") or []):
            if candidate.get("intent"):
                target.suggestions[candidate["intent"]] += 3 - min(rank, 2)
        feedback = record.get("feedback") or {}
        if feedback.get("intent"):
            target.feedback[feedback["intent"]] += 1
    for g in groups:
        g.texts = [t for t, _ in g._counts.most_common()]
        g.labels = {t: labels[normalized(t)] for t in g.texts if normalized(t) in labels}
    groups.sort(key=lambda g: (-g.count, g.intent or "", g.key))
    return groups


class Inbox:
    """The captured messages of one capture directory and their labels.

    A label belongs to a text (by its normalized form), not to a group: a message captured later that joins a
    labeled group stays unlabeled until someone looks at it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        records = list(read_captured(self.root))
        self.labels: dict[str, str] = self._read_labels()
        self.groups = group(records, self.labels)
        self.history: list[tuple[str, dict[str, str | None]]] = []  # (group key, previous labels): for undo
        self._changed: set[str] = set()  # normalized texts this session labeled or unlabeled

    def _read_labels(self) -> dict[str, str]:
        path = self.root / LABELS_FILE
        if not path.exists():
            return {}
        try:
            document = json.loads(path.read_text("utf-8"))
            return {k: v["intent"] for k, v in document["labels"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}: not a labels file ({exc}); move it away to start over") from exc

    def _group(self, key: str) -> Group:
        target = next((g for g in self.groups if g.key == key), None)
        if target is None:
            raise DataError(f"no group {key!r} in {self.root}")
        return target

    def _apply(self, target: Group, labels: dict[str, str | None]) -> None:
        self._changed.update(normalized(t) for t in labels)
        for text, intent in labels.items():
            if intent is None:
                target.labels.pop(text, None)
                self.labels.pop(normalized(text), None)
            else:
                target.labels[text] = intent
                self.labels[normalized(text)] = intent

    def set_label(self, key: str, intent: str | None) -> None:
        """Label every text of a group (None: remove their labels), saved at once (labels.json, labeled.jsonl)."""
        target = self._group(key)
        if intent is not None:
            check_intent_name(intent)
        self.history.append((key, {t: target.labels.get(t) for t in target.texts}))
        self._apply(target, {t: intent for t in target.texts})
        self.save()

    def undo(self) -> Group | None:
        """Undo the last label change of this session; the group it touched (None when nothing to undo)."""
        if not self.history:
            return None
        key, previous = self.history.pop()
        target = self._group(key)
        self._apply(target, previous)
        self.save()
        return target

    def labeled_examples(self) -> list[dict[str, str]]:
        return [{"text": t, "intent": g.labels[t]} for g in self.groups for t in g.texts if t in g.labels]

    def save(self) -> None:
        """Write this session's label changes, merged into what is on disk (another session may have labeled
        other messages meanwhile), under the directory's lock."""
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with directory_lock(self.root):
            on_disk = self._read_labels()
            for key in self._changed:
                if key in self.labels:
                    on_disk[key] = self.labels[key]
                else:
                    on_disk.pop(key, None)
            self.labels = on_disk
            for g in self.groups:
                keyed = {t: normalized(t) for t in g.texts}
                g.labels = {t: on_disk[k] for t, k in keyed.items() if k in on_disk}
            document = {"schema": 1, "labels": {k: {"intent": v, "at": now} for k, v in sorted(on_disk.items())}}
            atomic_write_bytes(
                self.root / LABELS_FILE, (json.dumps(document, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
            )
            lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.labeled_examples())
            atomic_write_bytes(self.root / LABELED_FILE, lines.encode("utf-8"))

    # -- CSV ----------------------------------------------------------------------------------------------
    def to_csv(self) -> str:
        """One row per message. A cell a spreadsheet would run as a formula (= + - @ first) is written with a
        leading apostrophe, which :meth:`import_csv` removes."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for g in self.groups:
            for text in g.texts:
                row = [
                    g.key,
                    g.count,
                    g.intent or "",
                    ";".join(sorted(g.reasons)),
                    ";".join(g.ranked_suggestions()),
                    text,
                    g.labels.get(text, ""),
                ]
                writer.writerow([_cell(str(value)) for value in row])
        return out.getvalue()

    def import_csv(self, text: str, source: str) -> dict[str, int]:
        """Labels from a CSV written by :meth:`to_csv` (also as a spreadsheet saves it again: a byte-order mark,
        ";" or tabs between cells, extra columns), its ``label`` column filled in per message; a group whose rows
        carry one label gives it to its blank rows. All or nothing."""
        text = text.lstrip("\ufeff")
        try:
            dialect: Any = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(io.StringIO(text), dialect=dialect)
        missing = {"group", "text", "label"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{source}: not an inbox CSV (missing column(s): {', '.join(sorted(missing))})")
        rows = list(reader)
        groups = {g.key: g for g in self.groups}
        given: dict[str, dict[str, str | None]] = {}
        for line, row in enumerate(rows, start=2):
            key, label = _uncell(row["group"] or ""), _uncell(row["label"] or "").strip() or None
            if key not in groups:
                raise DataError(f"{source}:{line}: unknown group {key!r} (export the CSV again)")
            by_key = {normalized(t): t for t in groups[key].texts}
            message = by_key.get(normalized(_uncell(row["text"] or "")))
            if message is None:
                raise DataError(f"{source}:{line}: this text is not in group {key!r} (export the CSV again)")
            if label is not None:
                check_intent_name(label, f"{source}:{line}: ")
            given.setdefault(key, {})[message] = label
        changes: dict[str, dict[str, str | None]] = {}
        for key, texts in given.items():
            named = {label for label in texts.values() if label is not None}
            fill = named.pop() if len(named) == 1 else None  # one label for the group: its blank rows too
            changes[key] = {t: (label or fill) for t, label in texts.items() if (label or fill) is not None}
        changed = 0
        for key, labels in changes.items():
            target = groups[key]
            changed += sum(1 for t, label in labels.items() if target.labels.get(t) != label)
            self._apply(target, dict(labels))
        self.save()
        return {
            "rows": len(rows),
            "labeled_messages": sum(len(labels) for labels in changes.values()),
            "labeled_groups": sum(1 for labels in changes.values() if labels),
            "changed": changed,
        }


def _cell(value: str) -> str:
    return "'" + value if value[:1] in FORMULA_START else value


def _uncell(value: str) -> str:
    return value[1:] if value[:1] == "'" and value[1:2] in FORMULA_START else value


def check_intent_name(name: str, where: str = "") -> None:
    if not LABEL_RE.match(name):
        raise DataError(f"{where}invalid intent name {name!r}: use lowercase_with_underscores")


def summary(groups: Sequence[Group]) -> dict[str, Any]:
    by_intent: Counter[str] = Counter()
    for g in groups:
        by_intent[g.intent or "?"] += g.count
    return {
        "messages": sum(g.count for g in groups),
        "group_count": len(groups),
        "labeled_groups": sum(1 for g in groups if not g.unlabeled),
        "by_answered_intent": dict(by_intent.most_common()),
    }


__all__ = ["Group", "Inbox", "group", "normalized", "summary", "OUT_OF_SCOPE"]
