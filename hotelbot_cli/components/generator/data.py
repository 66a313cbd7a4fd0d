"""The generator's data: (guest message, reply) pairs.

:func:`read_reply_file` validates ``{"message", "reply", "intent"?, "source"?}`` JSONL with errors naming the
file and line; :func:`prepare_replies` de-duplicates and makes a seeded split stratified by intent;
:func:`write_prepared_replies` / :func:`load_reply_data` store and read it (``train.jsonl``,
``validation.jsonl``, ``dataset.json``; a version keeps its exact split in ``generator/data/``).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..._io import iter_jsonl
from ...data import (
    DATASET_FILE,
    LABEL_RE,
    TRAIN_FILE,
    VALIDATION_FILE,
    check_split_fingerprint,
    clean_text,
    load_split,
    read_manifest,
    write_split,
)
from ...errors import ConfigError, DataError

if TYPE_CHECKING:
    from ...config import DataConfig, Settings

COMPONENT = "generator"
GENERATOR_DIR = "generator"  # its directory in a version
EXPERIMENT = "hotelbot-generator"  # its MLflow experiment
DATA_FORMAT = "hotelbot-replies/1"
DEFAULT_DATA = Path("datasets/respuestas_es.jsonl")


@dataclass(frozen=True)
class ReplyPair:
    """One guest message and the reply the bot should give; ``source`` is the document it draws on."""

    message: str
    reply: str
    intent: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedReplies:
    train: list[ReplyPair]
    validation: list[ReplyPair]
    fingerprint: str
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _pair_from_record(path: Path, number: int, record: Any, known_intents: frozenset[str] | None) -> ReplyPair:
    where = f"{path} line {number}"
    if not isinstance(record, dict):
        raise DataError(f'{where}: expected an object with "message" and "reply"')
    missing = [k for k in ("message", "reply") if k not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    values = {}
    for key in ("message", "reply"):
        value = record[key]
        if not isinstance(value, str):
            raise DataError(f'{where}: "{key}" must be a string, got {type(value).__name__}')
        value = clean_text(value)
        if not value:
            raise DataError(f'{where}: empty "{key}"')
        values[key] = value
    intent = record.get("intent")
    if intent is not None:
        if not isinstance(intent, str) or not LABEL_RE.match(intent.strip()):
            raise DataError(
                f"{where}: invalid intent {intent!r}: use lowercase letters, digits and _ (e.g. "
                "breakfast_info), or leave it out"
            )
        intent = intent.strip()
        if known_intents is not None and intent not in known_intents:
            raise DataError(f"{where}: unknown intent {intent!r}; known: {', '.join(sorted(known_intents))}")
    source = record.get("source")
    if source is not None and (not isinstance(source, str) or not source.strip()):
        raise DataError(f'{where}: "source" must be a document name or null, got {source!r}')
    return ReplyPair(values["message"], values["reply"], intent, source.strip() if source else None)


def read_reply_file(path: Path, known_intents: Iterable[str] | None = None) -> tuple[list[ReplyPair], list[str]]:
    """Read and validate a JSONL file of pairs. Exact duplicate pairs are dropped (a warning); a message
    given two different replies is an error naming both lines. Nothing is half-read: any bad line raises."""
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"{path} is a directory; give a .jsonl file of message/reply pairs or a prepared directory "
            f"(with {DATASET_FILE})"
        )
    if path.suffix.lower() != ".jsonl":
        raise DataError(
            f"{path}: unsupported format {path.suffix or '(no extension)'!r}; reply pairs are JSONL, "
            'one {"message", "reply", "intent", "source"} object per line'
        )
    try:
        raw = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"reply data not found: {path}", hint=f"the shipped pairs are {DEFAULT_DATA}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    known = frozenset(known_intents) if known_intents is not None else None
    pairs: list[ReplyPair] = []
    seen: dict[str, tuple[str, int]] = {}
    duplicates = 0
    for number, record in iter_jsonl(path, raw):
        pair = _pair_from_record(path, number, record, known)
        previous = seen.get(pair.message)
        if previous is not None:
            if previous[0] != pair.reply:
                raise DataError(
                    f"{path} line {number}: message {pair.message!r} already has a different reply "
                    f"(line {previous[1]}); keep one reply per message"
                )
            duplicates += 1
            continue
        seen[pair.message] = (pair.reply, number)
        pairs.append(pair)
    if len(pairs) < 2:
        raise DataError(f"{path}: {len(pairs)} message/reply pair(s); at least 2 are needed (one to validate on)")
    warnings = [f"{duplicates} exact duplicate pair(s) removed"] if duplicates else []
    return pairs, warnings


def split_pairs(
    pairs: Sequence[ReplyPair], validation_split: float, seed: int
) -> tuple[list[ReplyPair], list[ReplyPair]]:
    """Seeded split stratified by intent (pairs without one form their own group); each group of 2+
    pairs gives at least one to validation and keeps at least one for training."""
    if not 0.0 < validation_split < 1.0:
        raise ConfigError(f"validation_split must be in (0, 1), got {validation_split}")
    groups: dict[str, list[ReplyPair]] = defaultdict(list)
    for pair in pairs:
        groups[pair.intent or ""].append(pair)
    rng = random.Random(seed)
    train: list[ReplyPair] = []
    validation: list[ReplyPair] = []
    for key in sorted(groups):
        items = sorted(groups[key], key=lambda p: p.message)
        rng.shuffle(items)
        n_val = int(round(len(items) * validation_split))
        n_val = min(max(n_val, 1), len(items) - 1) if len(items) >= 2 else 0
        validation.extend(items[:n_val])
        train.extend(items[n_val:])
    if not validation:
        validation, train = train[-1:], train[:-1]
    rng.shuffle(train)
    return train, validation


def pairs_fingerprint(train: Iterable[ReplyPair], validation: Iterable[ReplyPair]) -> str:
    digest = hashlib.sha256()
    for name, split in (("train", train), ("validation", validation)):
        digest.update(name.encode())
        for p in sorted((p.message, p.reply, p.intent or "", p.source or "") for p in split):
            digest.update(json.dumps(p, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def prepare_replies(
    path: Path, validation_split: float = 0.2, seed: int = 42, known_intents: Iterable[str] | None = None
) -> PreparedReplies:
    pairs, warnings = read_reply_file(path, known_intents)
    train, validation = split_pairs(pairs, validation_split, seed)
    intents = Counter(p.intent or "(none)" for p in pairs)
    summary = {
        "source": str(path),
        "pairs": len(pairs),
        "train_size": len(train),
        "validation_size": len(validation),
        "validation_split": validation_split,
        "seed": seed,
        "intents": dict(sorted(intents.items())),
        "grounded_in": dict(sorted(Counter(p.source or "(none)" for p in pairs).items())),
    }
    return PreparedReplies(train, validation, pairs_fingerprint(train, validation), summary, warnings)


def write_prepared_replies(prepared: PreparedReplies, out_dir: Path) -> Path:
    """``train.jsonl``, ``validation.jsonl``, then ``dataset.json`` (the completion marker), each atomic."""
    return write_split(
        out_dir,
        (p.to_dict() for p in prepared.train),
        (p.to_dict() for p in prepared.validation),
        {"format": DATA_FORMAT, "fingerprint": prepared.fingerprint, **prepared.summary, "warnings": prepared.warnings},
    )


def read_pairs_jsonl(path: Path, known_intents: Iterable[str] | None = None) -> list[ReplyPair]:
    """One split file (no duplicate checks: prepare did them), with file + line errors."""
    known = frozenset(known_intents) if known_intents is not None else None
    try:
        text = Path(path).read_text("utf-8")
    except FileNotFoundError:
        raise DataError(f"{path} is missing", hint="prepare the reply data again") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return [_pair_from_record(Path(path), number, record, known) for number, record in iter_jsonl(path, text)]


def read_prepared_replies(directory: Path, known_intents: Iterable[str] | None = None) -> PreparedReplies:
    directory = Path(directory)
    manifest = read_manifest(directory, DATA_FORMAT, "reply", f"give the .jsonl file instead, e.g. {DEFAULT_DATA}")
    train = read_pairs_jsonl(directory / TRAIN_FILE, known_intents)
    validation = read_pairs_jsonl(directory / VALIDATION_FILE, known_intents)
    if not train or not validation:
        raise DataError(f"{directory}: the train and validation splits must both be non-empty")
    fp = pairs_fingerprint(train, validation)
    check_split_fingerprint(fp, manifest, directory, "reply", "run `hotelbot prepare --replies FILE` again")
    summary = {k: v for k, v in manifest.items() if k not in ("format", "fingerprint", "warnings")}
    return PreparedReplies(train, validation, fp, summary, list(manifest.get("warnings") or []))


def default_data_path(settings: Settings) -> Path:
    """What ``train --model-type generator`` reads without ``--data``: the prepared split beside the intent
    split (``data/generator``, when ``dataset.json`` is there), else the shipped pairs."""
    prepared = Path(settings.paths.data).parent / COMPONENT
    return prepared if (prepared / DATASET_FILE).is_file() else DEFAULT_DATA


def load_reply_data(
    source: Path, data: DataConfig | None = None, known_intents: Iterable[str] | None = None
) -> PreparedReplies:
    """A prepared directory (has dataset.json) is read; a .jsonl file is validated and split now."""
    return load_split(
        source,
        data,
        lambda directory: read_prepared_replies(directory, known_intents),
        lambda path, split, seed: prepare_replies(path, split, seed, known_intents),
    )
