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

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import sqlite3
import stat
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
LOCK_FILE = ".lock"
PRUNE_EVERY_S = 60.0
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
    """``path`` as a capture directory: created owner-only (0700); an existing empty one is tightened to 0700;
    an existing one that others can read and that holds files is refused (ConfigError), never chmod-ed."""
    try:
        if path.is_dir():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077 and any(path.iterdir()):
                raise ConfigError(
                    f"{path} is readable by other users ({mode:o}) and not empty: give serve --capture a new "
                    f"directory (created owner-only), or `chmod 700 {path}` first"
                )
            if mode & 0o077:
                os.chmod(path, 0o700)
            return path
        path.mkdir(parents=True, exist_ok=False, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        raise ConfigError(f"capture directory {path} is a file, not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot use {path} as the capture directory: {exc.strerror or exc}") from None
    return path


@contextlib.contextmanager
def directory_lock(root: Path) -> Iterator[None]:
    """The capture directory's lock (an OS lock on DIR/.lock, released by the kernel if the holder dies): the
    server's workers append under it, and `hotelbot inbox` saves labels under it."""
    fd = os.open(Path(root) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class CaptureStore:
    """Append-only capture files plus the recent-requests table of one capture directory (one per process;
    several processes may share a directory)."""

    def __init__(self, root: Path, policy: CapturePolicy | None = None) -> None:
        self.root = make_private_dir(Path(root))
        self.policy = policy or CapturePolicy()
        self.dropped = 0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pruned_at = 0.0
        self._warned_on: dt.date | None = None
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
        feedback window). A request is captured for feedback once: flagging it again returns the first record
        and writes nothing."""
        recalled = self._recall(request_id)
        if recalled is None:
            return None
        record, flagged = recalled
        if flagged is not None:
            return flagged
        if find_persons is not None:
            remasked = mask(record["text"], find_persons(record["text"]))
            record["text"] = remasked.text
            for kind, n in remasked.counts.items():
                record["masked"][kind] = record["masked"].get(kind, 0) + n
        record["reason"] = "feedback"
        record["at"] = utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
        record["feedback"] = {"intent": intent} if intent else {"wrong_answer": bool(wrong_answer)}
        if not self.append(record):
            return None
        with self._lock:
            self._connection().execute("UPDATE recent SET flagged = ? WHERE id = ?", (json.dumps(record), request_id))
        return record

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This thread and every other process writing to the directory (``serve --workers N``) kept out."""
        with self._lock, directory_lock(self.root):
            yield

    def append(self, record: dict[str, Any]) -> bool:
        """Write one record as one line (O_APPEND, every byte, fsync). False when the size limit dropped it.
        A line a crash tore is closed with a newline first, so only that line is lost."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._exclusive():
            if not self._room_for(len(line) + 1):
                self.dropped += 1
                return False
            path = self.root / f"captured-{utc_now().date().isoformat()}.jsonl"
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        return True

    def dropped_warning(self) -> str | None:
        """Once a day while records are being dropped for the size limit: the line to log (else None)."""
        today = utc_now().date()
        if not self.dropped or self._warned_on == today:
            return None
        self._warned_on = today
        return (
            f"capture directory {self.root} is full ({self.policy.max_bytes / 1e6:.0f} MB with today's records): "
            f"{self.dropped} record(s) dropped; raise --capture-max-mb or review and clear it"
        )

    # -- limits -------------------------------------------------------------------------------------------
    def day_files(self) -> list[tuple[dt.date, Path, int]]:
        """(day, path, size) of every day file, oldest first; a file another process just removed is left out."""
        out = []
        for path in self.root.iterdir():
            m = DAY_FILE.match(path.name)
            if m:
                try:
                    out.append((dt.date.fromisoformat(m.group(1)), path, path.stat().st_size))
                except (FileNotFoundError, ValueError):
                    continue
        return sorted(out)

    def enforce_limits(self) -> list[Path]:
        """Delete day files past the retention (never one dated after today); returns them."""
        cutoff = utc_now().date() - dt.timedelta(days=self.policy.retention_days)
        removed = []
        for day, path, _ in self.day_files():
            if day < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def _room_for(self, size: int) -> bool:
        """Whether ``size`` more bytes fit under max_bytes, deleting the oldest earlier days when that makes
        room; when even deleting them would not, nothing is deleted and the record is dropped."""
        self.enforce_limits()
        today = utc_now().date()
        files = self.day_files()
        total = sum(n for _, _, n in files)
        older = [(path, n) for day, path, n in files if day < today]
        if total + size - sum(n for _, n in older) > self.policy.max_bytes:
            return False
        for path, n in older:
            if total + size <= self.policy.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= n
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
            db.execute("PRAGMA secure_delete=ON")  # a pruned message's bytes are overwritten, not left in free pages
            db.execute(
                "CREATE TABLE IF NOT EXISTS recent (id TEXT PRIMARY KEY, at REAL NOT NULL, record TEXT NOT NULL, "
                "flagged TEXT)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS recent_at ON recent (at)")
            self._db = db
            self._prune(db)
        return self._db

    def _prune(self, db: sqlite3.Connection) -> None:
        """Forget the requests older than the feedback window (at start, then at most once a minute)."""
        self._pruned_at = time.monotonic()
        db.execute("DELETE FROM recent WHERE at < ?", (time.time() - self.policy.feedback_hours * 3600,))

    def _remember(self, record: dict[str, Any]) -> None:
        with self._lock:
            db = self._connection()
            db.execute(
                "INSERT OR REPLACE INTO recent (id, at, record) VALUES (?, ?, ?)",
                (record["id"], time.time(), json.dumps(record)),
            )
            if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
                self._prune(db)

    def _recall(self, request_id: str) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """(the remembered record, the record its feedback captured or None), or None when unknown."""
        if not REQUEST_ID.match(request_id):
            return None
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT record, flagged FROM recent WHERE id = ? AND at >= ?",
                    (request_id, time.time() - self.policy.feedback_hours * 3600),
                )
                .fetchone()
            )
        if row is None:
            return None
        return json.loads(row[0]), (json.loads(row[1]) if row[1] else None)

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
        try:
            f = path.open("rb")
        except FileNotFoundError:  # removed by the server's retention meanwhile
            continue
        with f:
            for raw in f:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue  # the line a crash tore
                if (
                    isinstance(record, dict)
                    and record.get("schema") == SCHEMA
                    and all(isinstance(record.get(k), str) and record[k] for k in ("id", "reason", "text"))
                ):
                    yield record


__all__ = [
    "CapturePolicy",
    "CaptureStore",
    "REASONS",
    "directory_lock",
    "new_request_id",
    "read_captured",
    "make_private_dir",
]
