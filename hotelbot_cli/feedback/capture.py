"""The capture store: what `hotelbot serve --capture DIR` keeps of live traffic for people to review.

Layout of DIR (created owner-only, 0700; every file 0600):

* ``captured-YYYY-MM-DD.jsonl``: one JSON object per line (schema below), append-only. A record is one
  ``write`` of a whole line to a file opened with O_APPEND, then fsync: a crash loses at most the line being
  written, and readers skip a torn last line.
* ``recent.sqlite3``: the requests of the last ``feedback_hours`` (their masked text and answer), so that
  ``POST /feedback`` can capture a request the client flags later, whichever worker answered it. Pruned as it
  goes; never read by `hotelbot inbox`.
* ``labels.json``: the labels people gave (`hotelbot inbox label` / `inbox import`), rewritten atomically.

A captured record (``"schema": 1``)::

    {"schema": 1, "id": "<request id>", "at": "2026-12-07T08:00:00Z", "reason": "fallback" | "no_answer"
     | "low_confidence" | "feedback", "endpoint": "/classify", "model_version": "v0003", "text": "<masked text>",
     "masked": {"email": 1, ...}, "intent": "<answered intent>", "confidence": 0.41,
     "top_k": [{"intent", "confidence"}, ...], "feedback": null | {"intent": "late_checkout"} | {"wrong_answer": true}}

Text is masked (:mod:`.pii`) before anything is written. Retention: day files older than ``retention_days``
are deleted; when the files pass ``max_bytes``, the oldest days go first, and a day that alone passes it
stops capturing (counted in ``dropped``) until the next day.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .pii import mask

SCHEMA = 1
DAY_FILE = re.compile(r"^captured-(\d{4}-\d{2}-\d{2})\.jsonl$")
RECENT_DB = "recent.sqlite3"
REASONS = ("fallback", "no_answer", "low_confidence", "feedback")
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
PersonFinder = Callable[[str], list[tuple[int, int]]]  # a text -> the (start, end) spans of person names in it


@dataclass(frozen=True)
class CapturePolicy:
    """When a request is captured, and how long what is captured is kept."""

    below_confidence: float = 0.6  # an answer less confident than this is captured ("low_confidence")
    retention_days: int = 30
    max_bytes: int = 100 * 1024 * 1024
    feedback_hours: float = 24.0  # how long after its answer a request can be flagged with POST /feedback

    def __post_init__(self) -> None:
        if not 0.0 <= self.below_confidence <= 1.0:
            raise ConfigError(f"capture confidence must be within 0-1, got {self.below_confidence}")
        if self.retention_days < 1 or self.max_bytes < 1024 or self.feedback_hours <= 0:
            raise ConfigError(
                "capture retention must be at least 1 day, the size limit at least 1 KB, "
                "the feedback window above 0 hours"
            )


def new_request_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_private_dir(path: Path) -> Path:
    """``path`` created owner-only (0700); an existing directory is tightened to 0700."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except FileExistsError:
        raise ConfigError(f"capture directory {path} is a file, not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot use {path} as the capture directory: {exc.strerror or exc}") from None
    return path


class CaptureStore:
    """Append-only capture files plus the recent-requests table of one capture directory (one per process;
    several processes may share a directory)."""

    def __init__(self, root: Path, policy: CapturePolicy | None = None) -> None:
        self.root = make_private_dir(Path(root))
        self.policy = policy or CapturePolicy()
        self.dropped = 0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._inserts = 0
        self.enforce_limits()

    # -- writing ------------------------------------------------------------------------------------------
    def reason(self, answer: dict[str, Any]) -> str | None:
        """Why an answer is captured on its own ("fallback": out of scope; "no_answer": a reply the documents do
        not hold; "low_confidence"), or None."""
        if answer.get("fallback") or answer.get("kind") == "fallback":
            return "fallback"
        if answer.get("kind") == "no_answer":
            return "no_answer"
        confidence = answer.get("confidence")
        if isinstance(confidence, (int, float)) and confidence < self.policy.below_confidence:
            return "low_confidence"
        return None

    def observe(
        self,
        request_id: str,
        endpoint: str,
        version: str,
        text: str,
        answer: dict[str, Any],
        find_persons: PersonFinder | None = None,
    ) -> dict[str, Any] | None:
        """Remember a served request for feedback and capture it when its answer calls for it. Returns the
        captured record (or None). ``find_persons`` (the entity model's PERSON spans) runs only on what is
        captured: a request kept only for feedback is masked by the patterns, and by the model if flagged."""
        reason = self.reason(answer)
        masked = mask(text, find_persons(text) if find_persons is not None and reason is not None else ())
        record = {
            "schema": SCHEMA,
            "id": request_id,
            "at": utc_now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reason": None,
            "endpoint": endpoint,
            "model_version": version,
            "text": masked.text,
            "masked": masked.counts,
            "intent": answer.get("intent"),
            "confidence": answer.get("confidence"),
            "top_k": [
                {"intent": t.get("intent"), "confidence": t.get("confidence")} for t in answer.get("top_k") or []
            ],
            "feedback": None,
        }
        self._remember(record)
        if reason is None:
            return None
        record["reason"] = reason
        return record if self.append(record) else None

    def feedback(
        self, request_id: str, intent: str | None, wrong_answer: bool, find_persons: PersonFinder | None = None
    ) -> dict[str, Any] | None:
        """Capture a request a client flags: None when the id is unknown (never served here, or older than the
        feedback window)."""
        record = self._recall(request_id)
        if record is None:
            return None
        if find_persons is not None:
            remasked = mask(record["text"], find_persons(record["text"]))
            record["text"] = remasked.text
            for kind, n in remasked.counts.items():
                record["masked"][kind] = record["masked"].get(kind, 0) + n
        record["reason"] = "feedback"
        record["at"] = utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
        record["feedback"] = {"intent": intent} if intent else {"wrong_answer": bool(wrong_answer)}
        return record if self.append(record) else None

    def append(self, record: dict[str, Any]) -> bool:
        """Write one record as one line (O_APPEND + fsync). False when the size limit dropped it."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if not self._room_for(len(line)):
                self.dropped += 1
                return False
            path = self.root / f"captured-{utc_now().date().isoformat()}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return True

    # -- limits -------------------------------------------------------------------------------------------
    def day_files(self) -> list[tuple[dt.date, Path]]:
        out = []
        for path in self.root.iterdir():
            m = DAY_FILE.match(path.name)
            if m:
                out.append((dt.date.fromisoformat(m.group(1)), path))
        return sorted(out)

    def enforce_limits(self) -> list[Path]:
        """Delete day files past the retention; returns them."""
        cutoff = utc_now().date() - dt.timedelta(days=self.policy.retention_days)
        removed = []
        for day, path in self.day_files():
            if day < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def _room_for(self, size: int) -> bool:
        self.enforce_limits()
        files = self.day_files()
        total = sum(p.stat().st_size for _, p in files)
        today = utc_now().date()
        while total + size > self.policy.max_bytes and files and files[0][0] < today:
            _, oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
        return total + size <= self.policy.max_bytes

    # -- recent requests (for POST /feedback) -------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            path = self.root / RECENT_DB
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS recent (id TEXT PRIMARY KEY, at REAL NOT NULL, record TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS recent_at ON recent (at)")
            self._db = db
        return self._db

    def _remember(self, record: dict[str, Any]) -> None:
        with self._lock:
            db = self._connection()
            db.execute(
                "INSERT OR REPLACE INTO recent VALUES (?, ?, ?)", (record["id"], time.time(), json.dumps(record))
            )
            self._inserts += 1
            if self._inserts % 500 == 1:
                db.execute("DELETE FROM recent WHERE at < ?", (time.time() - self.policy.feedback_hours * 3600,))

    def _recall(self, request_id: str) -> dict[str, Any] | None:
        if not REQUEST_ID.match(request_id):
            return None
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT record FROM recent WHERE id = ? AND at >= ?",
                    (request_id, time.time() - self.policy.feedback_hours * 3600),
                )
                .fetchone()
            )
        return json.loads(row[0]) if row else None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def read_captured(root: Path) -> Iterator[dict[str, Any]]:
    """Every captured record of a capture directory, oldest first; a torn or foreign line is skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"no capture directory at {root}: start the server with `hotelbot serve --capture {root}`")
    for path in sorted(p for p in root.iterdir() if DAY_FILE.match(p.name)):
        with path.open("rb") as f:
            for raw in f:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue  # the line a crash tore
                if isinstance(record, dict) and record.get("schema") == SCHEMA and record.get("text"):
                    yield record


__all__ = ["CapturePolicy", "CaptureStore", "REASONS", "new_request_id", "read_captured", "make_private_dir"]
