"""Intent data: load (JSON, JSONL, CSV), validate, clean, de-duplicate, split, fingerprint.

Everything here is pure Python (no torch, no sklearn) so ``hotelbot prepare`` starts instantly.
Errors are :class:`DataError` naming the file and the line or row; nothing is written unless the
whole input is valid.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence, TypeVar, cast

from ._io import atomic_write_bytes, atomic_write_json, iter_jsonl
from .errors import DataError
from .feedback.pii import with_surrogates

if TYPE_CHECKING:
    from .config import DataConfig

TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
DATASET_FILE = "dataset.json"
SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv")
LABEL_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
OUT_OF_SCOPE = "out_of_scope"
T = TypeVar("T")


class _HasText(Protocol):
    """What ``stratified_split`` needs of an item: a ``text`` (its stable pre-shuffle order)."""

    @property
    def text(self) -> str: ...


_TextT = TypeVar("_TextT", bound=_HasText)


@dataclass(frozen=True)
class Example:
    text: str
    intent: str


@dataclass
class Warning_:
    code: str
    message: str


@dataclass
class PreparedData:
    """A validated, cleaned, split dataset (what ``prepare`` writes and ``train`` reads)."""

    train: list[Example]
    validation: list[Example]
    labels: list[str]
    fingerprint: str
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[Warning_] = field(default_factory=list)

    def to_summary(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "labels": self.labels,
            **self.summary,
            "warnings": [asdict(w) for w in self.warnings],
        }


# ---------------------------------------------------------------- loading


def _record_error(path: Path, where: str, problem: str) -> DataError:
    return DataError(f"{path}: {where}: {problem}")


def _from_record(path: Path, where: str, record: Any) -> Example:
    if not isinstance(record, dict):
        raise _record_error(path, where, 'expected an object with "text" and "intent"')
    missing = [key for key in ("text", "intent") if key not in record]
    if missing:
        raise _record_error(path, where, f"missing field(s) {', '.join(missing)}")
    text, intent = record["text"], record["intent"]
    if not isinstance(text, str):
        raise _record_error(path, where, f'"text" must be a string, got {type(text).__name__}')
    if not isinstance(intent, str):
        raise _record_error(path, where, f'"intent" must be a string, got {type(intent).__name__}')
    return Example(text=text, intent=intent)


def _line_of(text: str, needle_index: int) -> int:
    return text.count("\n", 0, needle_index) + 1


def _load_json(path: Path, raw: str) -> list[tuple[str, Example]]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}") from None
    out: list[tuple[str, Example]] = []
    if isinstance(data, list):
        for i, record in enumerate(data):
            where = f"item {i + 1}"
            out.append((where, _from_record(path, where, record)))
        return out
    if isinstance(data, dict) and isinstance(data.get("intents"), dict):
        for label, texts in data["intents"].items():
            if not isinstance(texts, list):
                raise DataError(f'{path}: intents["{label}"]: expected a list of texts, got {type(texts).__name__}')
            for i, text in enumerate(texts):
                where = f'intents["{label}"][{i}]'
                if not isinstance(text, str):
                    raise _record_error(path, where, f"expected a string, got {type(text).__name__}")
                out.append((where, Example(text=text, intent=label)))
        return out
    raise DataError(
        f'{path}: expected a JSON list of {{"text", "intent"}} objects or {{"intents": {{label: [texts]}}}}'
    )


def _load_jsonl(path: Path, raw: str) -> list[tuple[str, Example]]:
    return [
        (f"line {number}", _from_record(path, f"line {number}", record)) for number, record in iter_jsonl(path, raw)
    ]


def _load_csv(path: Path, raw: str) -> list[tuple[str, Example]]:
    reader = csv.DictReader(raw.splitlines())
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "text" not in header or "intent" not in header:
        raise DataError(f"{path}: row 1: the header must have 'text' and 'intent' columns, got {reader.fieldnames}")
    reader.fieldnames = header
    out = []
    for row in reader:
        where = f"row {reader.line_num}"
        if None in row or any(row.get(k) is None for k in ("text", "intent")):
            raise _record_error(path, where, f"expected {len(header)} columns")
        out.append((where, Example(text=row["text"], intent=row["intent"].strip())))
    return out


def read_data_text(path: Path, expected: str) -> str:
    """The text of a user's data file (UTF-8, a BOM allowed), or a one-line DataError: not found, a
    directory (``expected`` says what to give instead), not UTF-8, unreadable."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give {expected}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None


def load_examples(path: Path) -> list[tuple[str, Example]]:
    """Read a data file; return (location, example) pairs. Raise DataError with file and line/row."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.exists() and not path.is_dir() and suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported format {suffix or '(none)'}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    raw = read_data_text(path, "a .json, .jsonl or .csv file")
    loader = {".json": _load_json, ".jsonl": _load_jsonl, ".csv": _load_csv}[suffix]
    records = loader(path, raw)
    if not records:
        raise DataError(f"{path}: no examples found")
    return records


# ---------------------------------------------------------------- cleaning

_SPACE_RE = re.compile(r"\s+")
_CONTROL = {"Cc", "Cf"}


def clean_text(text: str) -> str:
    """NFC-normalize, drop control/format characters, collapse whitespace.

    Accents, ñ, ¿¡, case and emoji are kept: the tokenizers of the base models use them.
    NFC (not NFKC) so that nothing a tokenizer would see differently is folded here.
    """
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch if unicodedata.category(ch) not in _CONTROL else " " for ch in text)
    return _SPACE_RE.sub(" ", text).strip()


def clean_messages(messages: Sequence[str]) -> list[str]:
    """:func:`clean_text` of each guest message of a batch: TypeError for a bare string (a batch is a list),
    DataError naming the first message that is empty once cleaned."""
    if isinstance(messages, str):
        raise TypeError("expected a list of messages, not one string")
    cleaned = [clean_text(m) if isinstance(m, str) else "" for m in messages]
    for m, c in zip(messages, cleaned):
        if not c:
            raise DataError(f"empty message {m!r}", hint='give a guest message, e.g. "¿a qué hora cierra la piscina?"')
    return cleaned


def clean_text_with_offsets(text: str) -> tuple[str, list[tuple[int, int]]]:
    """:func:`clean_text` of ``text`` and, for each character of the result, the range of ``text`` it
    comes from, so that a span found in the cleaned text maps back to the caller's string (the joint NLU
    model reads cleaned text and answers entities with offsets into the raw text).

    NFC is applied per run of a starter and its combining marks (where composition happens), each output
    character mapped to its run's range; when that does not reproduce :func:`clean_text` exactly (a rare
    composition across runs), the whole text is one range."""
    runs: list[tuple[int, int]] = []
    for i, ch in enumerate(text):
        if runs and unicodedata.combining(ch):
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    chars: list[tuple[str, tuple[int, int]]] = []
    for start, end in runs:
        for ch in unicodedata.normalize("NFC", text[start:end]):
            chars.append((" " if unicodedata.category(ch) in _CONTROL else ch, (start, end)))
    out: list[tuple[str, tuple[int, int]]] = []
    for ch, span in chars:  # collapse whitespace runs to one space, strip both ends
        if ch.isspace() or _SPACE_RE.fullmatch(ch):
            if out and out[-1][0] != " ":
                out.append((" ", span))
            continue
        out.append((ch, span))
    if out and out[-1][0] == " ":
        out.pop()
    cleaned = "".join(ch for ch, _ in out)
    if cleaned != clean_text(text):
        cleaned = clean_text(text)
        return cleaned, [(0, len(text))] * len(cleaned)
    return cleaned, [span for _, span in out]


def near_duplicate_key(text: str) -> str:
    """A key equal for texts that differ only in case, accents, punctuation and spacing."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    letters = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    letters = "".join(ch if ch.isalnum() else " " for ch in letters)
    return _SPACE_RE.sub(" ", letters).strip()


def validate_and_clean(
    path: Path, records: list[tuple[str, Example]], min_intents: int = 2
) -> tuple[list[Example], list[Warning_]]:
    """Clean every text, reject empty texts, bad labels and conflicting labels, drop exact duplicates.
    ``min_intents``: fewer distinct intents is refused (a training file needs 2; labeled additions, 1)."""
    warnings: list[Warning_] = []
    seen: dict[str, tuple[str, str]] = {}  # cleaned text -> (intent, where)
    out: list[Example] = []
    duplicates = 0
    for where, example in records:
        text = clean_text(example.text)
        intent = example.intent.strip()
        if not text:
            raise _record_error(path, where, "empty text")
        if not intent:
            raise _record_error(path, where, "empty intent")
        if not LABEL_RE.match(intent):
            raise _record_error(
                path, where, f"invalid intent {intent!r}: use lowercase letters, digits and _ (e.g. book_room)"
            )
        previous = seen.get(text)
        if previous is not None:
            if previous[0] != intent:
                raise _record_error(
                    path, where, f"text {text!r} is labelled {intent!r} here and {previous[0]!r} at {previous[1]}"
                )
            duplicates += 1
            continue
        seen[text] = (intent, where)
        out.append(Example(text=text, intent=intent))
    labels = sorted({e.intent for e in out})
    if len(labels) < min_intents:
        raise DataError(
            f"{path}: found {len(labels)} intent(s) ({', '.join(labels)}); at least {min_intents} are needed"
        )
    if duplicates:
        warnings.append(Warning_("duplicates_removed", f"{duplicates} exact duplicate text(s) removed"))
    return out, warnings


# ---------------------------------------------------------------- splitting


def stratified_split(
    examples: Sequence[_TextT],
    validation_split: float,
    seed: int,
    key: Callable[[_TextT], str] = lambda e: cast(Example, e).intent,  # the default is for Examples
) -> tuple[list[_TextT], list[_TextT]]:
    """Per-stratum shuffle with a seeded RNG; each stratum with >= 2 examples gives >= 1 to validation.

    Strata are intents by default; ``key`` chooses another (entities use each sentence's rarest type).
    Items need a ``text`` attribute, which fixes the order before shuffling.
    """
    by_key: dict[str, list[_TextT]] = defaultdict(list)
    for example in examples:
        by_key[key(example)].append(example)
    rng = random.Random(seed)
    train: list[_TextT] = []
    validation: list[_TextT] = []
    for label in sorted(by_key):
        items = sorted(by_key[label], key=lambda e: e.text)
        rng.shuffle(items)
        n_val = int(round(len(items) * validation_split))
        if len(items) >= 2:
            n_val = min(max(n_val, 1), len(items) - 1)
        else:
            n_val = 0
        validation.extend(items[:n_val])
        train.extend(items[n_val:])
    rng.shuffle(train)
    return train, validation


def fingerprint(train: Iterable[Example], validation: Iterable[Example]) -> str:
    """sha256 over the canonical split (order-independent within each split)."""
    digest = hashlib.sha256()
    for name, split in (("train", train), ("validation", validation)):
        digest.update(name.encode())
        for text, intent in sorted((e.text, e.intent) for e in split):
            digest.update(json.dumps([text, intent], ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
    return digest.hexdigest()


def quality_warnings(
    train: list[Example], validation: list[Example], min_examples: int, imbalance_ratio: float
) -> list[Warning_]:
    warnings: list[Warning_] = []
    counts = Counter(e.intent for e in train + validation)
    few = sorted(label for label, n in counts.items() if n < min_examples)
    if few:
        detail = ", ".join(f"{label} ({counts[label]})" for label in few)
        warnings.append(Warning_("few_examples", f"intents with fewer than {min_examples} examples: {detail}"))
    most, least = max(counts.values()), min(counts.values())
    if least and most / least > imbalance_ratio:
        big = max(counts, key=lambda k: counts[k])
        small = min(counts, key=lambda k: counts[k])
        warnings.append(
            Warning_(
                "class_imbalance",
                f"class imbalance {most / least:.1f}:1 ({big}: {most}, {small}: {least}); "
                "add examples to the small intents",
            )
        )
    train_keys: dict[str, Example] = {near_duplicate_key(e.text): e for e in train}
    near = [(e, train_keys[k]) for e in validation if (k := near_duplicate_key(e.text)) in train_keys]
    if near:
        sample = "; ".join(f"{v.text!r} ~ {t.text!r}" for v, t in near[:3])
        warnings.append(
            Warning_(
                "near_duplicates_across_split",
                f"{len(near)} validation text(s) nearly equal a training text (case/accents/punctuation): {sample}",
            )
        )
    return warnings


# ---------------------------------------------------------------- the independent test set

TEST_SET_SUFFIX = "_test.jsonl"


def default_test_set(path: Path) -> Path | None:
    """The independent test set that goes with the training file ``path``: ``<stem>_test.jsonl`` beside it
    (datasets/hotel_intents_es.json -> datasets/hotel_intents_es_test.jsonl), when it exists."""
    path = Path(path)
    candidate = path.with_name(path.stem + TEST_SET_SUFFIX)
    return candidate if candidate.is_file() else None


@dataclass
class TestSet:
    """An intent test set that training never sees: its examples and where they come from."""

    path: Path
    examples: list[Example]
    sha256: str

    def to_summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "examples": len(self.examples),
            "per_intent": dict(sorted(Counter(e.intent for e in self.examples).items())),
        }


def read_test_set(path: Path) -> TestSet:
    """Load and validate a test set (any format :func:`load_examples` reads; exact duplicates dropped)."""
    path = Path(path)
    examples, _ = validate_and_clean(path, load_examples(path))
    # recorded absolute: `validate --test` may run from another directory than `prepare` did
    return TestSet(path.resolve(), examples, hashlib.sha256(path.read_bytes()).hexdigest())


def shared_texts(examples: Sequence[Example], others: Sequence[Example]) -> list[Example]:
    """The ``examples`` whose text equals one of ``others``' up to case, accents, punctuation and spacing."""
    held = {near_duplicate_key(e.text) for e in others}
    return [e for e in examples if near_duplicate_key(e.text) in held]


def check_test_overlap(path: Path, examples: Sequence[Example], test: TestSet) -> None:
    """DataError when a training text equals a test text up to case, accents, punctuation and spacing: a
    test set only measures what training never saw."""
    shared = shared_texts(examples, test.examples)
    if shared:
        sample = "; ".join(f"{e.text!r}" for e in shared[:3])
        raise DataError(
            f"{path}: {len(shared)} training text(s) also in the independent test set {test.path} "
            f"(case, accents and punctuation ignored): {sample}",
            hint="remove them from the training file (or write new test messages): the test set must "
            "stay unseen by training",
        )


def prepare(
    path: Path,
    validation_split: float = 0.2,
    seed: int = 42,
    min_examples: int = 10,
    imbalance_ratio: float = 3.0,
    test_set: Path | None = None,
) -> PreparedData:
    """Load, validate, clean, de-duplicate and split ``path``. Raises DataError; writes nothing.
    ``test_set``: the independent test set (default :func:`default_test_set`); a training text it holds
    is refused, and the prepared data records which test set goes with it."""
    records = load_examples(path)
    examples, warnings = validate_and_clean(Path(path), records)
    test_path = Path(test_set) if test_set is not None else default_test_set(Path(path))
    test = read_test_set(test_path) if test_path is not None else None
    if test is not None:
        check_test_overlap(Path(path), examples, test)
        unknown = sorted({e.intent for e in test.examples} - {e.intent for e in examples})
        if unknown:
            raise DataError(f"{test.path}: intent(s) the training file {path} lacks: {', '.join(unknown)}")
    train, validation = stratified_split(examples, validation_split, seed)
    warnings += quality_warnings(train, validation, min_examples, imbalance_ratio)
    labels = sorted({e.intent for e in examples})
    counts = Counter(e.intent for e in examples)
    summary = {
        "source": str(path),
        "examples": len(examples),
        "train_size": len(train),
        "validation_size": len(validation),
        "num_labels": len(labels),
        "examples_per_intent": dict(sorted(counts.items())),
        "validation_split": validation_split,
        "seed": seed,
        "test_set": test.to_summary() if test is not None else None,
    }
    return PreparedData(train, validation, labels, fingerprint(train, validation), summary, warnings)


# ---------------------------------------------------------------- storage


def jsonl_bytes(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def write_split(
    out_dir: Path, train: Iterable[dict[str, Any]], validation: Iterable[dict[str, Any]], manifest: dict[str, Any]
) -> Path:
    """The storage of every prepared split (intents, entities, sentiment, replies): train.jsonl and
    validation.jsonl, then ``manifest`` as dataset.json, the completion marker, written last; each
    file atomically, so an interrupted prepare never leaves a directory that reads as complete."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / TRAIN_FILE, jsonl_bytes(train))
    atomic_write_bytes(out_dir / VALIDATION_FILE, jsonl_bytes(validation))
    atomic_write_json(out_dir / DATASET_FILE, manifest)
    return out_dir


def read_manifest(directory: Path, data_format: str, what: str, hint: str) -> dict[str, Any]:
    """dataset.json of a split written by :func:`write_split`; a one-line DataError when it is missing,
    unreadable, or holds another kind of data (``data_format``)."""
    path = Path(directory) / DATASET_FILE
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise DataError(f"no prepared {what} data in {directory} ({DATASET_FILE} missing)", hint=hint) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is unreadable: {exc}", hint=hint) from None
    if not isinstance(manifest, dict) or manifest.get("format") != data_format:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"{directory} does not hold prepared {what} data (format {found!r})", hint=hint)
    return manifest


def check_split_fingerprint(actual: str, manifest: dict[str, Any], directory: Path, what: str, hint: str) -> None:
    if actual != manifest.get("fingerprint"):
        raise DataError(
            f"prepared {what} data in {directory} was modified after prepare (fingerprint mismatch)", hint=hint
        )


def load_split(
    source: Path, data: DataConfig | None, read_prepared: Callable[[Path], T], prepare: Callable[[Path, float, int], T]
) -> T:
    """A prepared directory (has dataset.json) is read; a data file is validated and split now, with
    the data config's validation share and seed (0.2 and 42 without one)."""
    source = Path(source)
    if source.is_dir():
        return read_prepared(source)
    split, seed = (data.validation_split, data.seed) if data is not None else (0.2, 42)
    return prepare(source, split, seed)


def write_prepared(prepared: PreparedData, out_dir: Path) -> Path:
    """Write the split and its summary into ``out_dir`` (each file atomically; summary last)."""
    return write_split(out_dir, map(asdict, prepared.train), map(asdict, prepared.validation), prepared.to_summary())


def read_jsonl_examples(path: Path) -> list[Example]:
    return [Example(text=e.text, intent=e.intent) for _, e in _load_jsonl(path, path.read_text("utf-8"))]


def read_prepared(data_dir: Path) -> PreparedData:
    """Read what :func:`write_prepared` wrote, checking the fingerprint."""
    data_dir = Path(data_dir)
    summary_path = data_dir / DATASET_FILE
    if not summary_path.exists():
        raise DataError(
            f"no prepared data in {data_dir}",
            hint="run `hotelbot prepare DATA` first, or pass --data to a prepared directory",
        )
    try:
        summary = json.loads(summary_path.read_text("utf-8"))
        train = read_jsonl_examples(data_dir / TRAIN_FILE)
        validation = read_jsonl_examples(data_dir / VALIDATION_FILE)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(
            f"prepared data in {data_dir} is unreadable: {exc}", hint="run `hotelbot prepare` again"
        ) from None
    actual = fingerprint(train, validation)
    check_split_fingerprint(actual, summary, data_dir, "intent", "run `hotelbot prepare` again")
    warnings = [Warning_(**w) for w in summary.pop("warnings", [])]
    labels = summary.pop("labels")
    summary.pop("fingerprint")
    return PreparedData(train, validation, labels, actual, summary, warnings)


def prepare_dataset(path: Path, out_dir: Path | None, config: DataConfig, test_set: Path | None = None) -> PreparedData:
    """prepare() with the settings' data config, then write the result (unless ``out_dir`` is None)."""
    prepared = prepare(
        path,
        config.validation_split,
        config.seed,
        config.min_examples_per_intent,
        config.imbalance_ratio_warning,
        test_set,
    )
    if out_dir is not None:
        write_prepared(prepared, out_dir)
    return prepared


# ---------------------------------------------------------------- adding labeled messages (prepare --add)


def add_examples(
    data_dir: Path,
    labeled: Path,
    test_set: Path | None = None,
    min_examples: int = 10,
    imbalance_ratio: float = 3.0,
) -> tuple[PreparedData, dict[str, Any]]:
    """Merge labeled messages (any format :func:`load_examples` reads; `hotelbot inbox` writes
    ``labeled.jsonl``) into the prepared split in ``data_dir``: they join the training split, the validation
    split stays as it is so scores stay comparable. Refused (DataError, nothing written): a message whose text
    the prepared data holds under another intent (case, accents and punctuation ignored), one the independent
    test set holds, an invalid intent name. Skipped: messages the prepared data already holds with the same
    intent. The placeholders of masked personal data become made-up values (:data:`.feedback.pii.SURROGATES`).
    Returns the new prepared data (not written: see :func:`write_prepared`) and what changed."""
    data_dir, labeled = Path(data_dir), Path(labeled)
    prepared = read_prepared(data_dir)
    records = load_examples(labeled)
    surrogates = 0
    for i, (where, example) in enumerate(records):  # masked data (<PERSON>, <PHONE>, ...) -> made-up values
        text, n = with_surrogates(example.text)
        if n:
            records[i] = (where, Example(text=text, intent=example.intent))
            surrogates += n
    new, warnings = validate_and_clean(labeled, records, min_intents=1)
    recorded = (prepared.summary.get("test_set") or {}).get("path")
    test_path = Path(test_set) if test_set is not None else (Path(recorded) if recorded else None)
    if test_path is not None:
        if not test_path.is_file():
            raise DataError(
                f"the test set {test_path} recorded with the prepared data is missing",
                hint="pass --test-set FILE, or prepare the training data again",
            )
        check_test_overlap(labeled, new, read_test_set(test_path))
    held = {near_duplicate_key(e.text): e for e in prepared.train + prepared.validation}
    keys = [near_duplicate_key(e.text) for e in new]
    conflicts = [(e, held[k]) for e, k in zip(new, keys) if k in held and held[k].intent != e.intent]
    if conflicts:
        sample = "; ".join(
            f"{e.text!r} is {e.intent!r} here, {old.intent!r} in the training data" for e, old in conflicts[:3]
        )
        raise DataError(
            f"{labeled}: {len(conflicts)} message(s) contradict the prepared data: {sample}",
            hint="relabel them (hotelbot inbox label) or fix the training file and prepare it again",
        )
    added: list[Example] = []
    seen = set(held)
    for e, key in zip(new, keys):
        if key not in seen:
            seen.add(key)
            added.append(e)
    skipped = len(new) - len(added)
    train = prepared.train + added
    examples = train + prepared.validation
    labels = sorted({e.intent for e in examples})
    counts = Counter(e.intent for e in examples)
    per_intent = Counter(e.intent for e in added)
    change = {
        "source": str(labeled),
        "sha256": hashlib.sha256(labeled.read_bytes()).hexdigest(),
        "messages": len(new),
        "added": len(added),
        "skipped_duplicates": skipped,
        "placeholders_replaced": surrogates,
        "added_per_intent": dict(sorted(per_intent.items())),
        "new_intents": sorted(set(labels) - set(prepared.labels)),
        "train_size_before": len(prepared.train),
        "train_size_after": len(train),
        "fingerprint_before": prepared.fingerprint,
    }
    summary = {
        **prepared.summary,
        "examples": len(examples),
        "train_size": len(train),
        "num_labels": len(labels),
        "examples_per_intent": dict(sorted(counts.items())),
        "additions": [*prepared.summary.get("additions", []), {k: change[k] for k in ("source", "sha256", "added")}],
    }
    warnings += quality_warnings(train, prepared.validation, min_examples, imbalance_ratio)
    result = PreparedData(
        train, prepared.validation, labels, fingerprint(train, prepared.validation), summary, warnings
    )
    change["fingerprint_after"] = result.fingerprint
    return result, change
