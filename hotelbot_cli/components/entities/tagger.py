"""Entity extraction: BIO token classification over character-offset spans.

Data (``datasets/entidades_es.jsonl``): one ``{"text", "entities": [{"start", "end", "label"}]}`` per line,
offsets in code points of ``text`` (``text[start:end]`` is the entity). :func:`prepare_entities`
validates every span (inside the text, ``start < end``, not blank, a known label, no overlaps) and names
the file and line of a bad one; texts are NOT cleaned, since that would move the offsets. The split is
stratified by each sentence's rarest entity type, with a seed.

Alignment (char spans -> token tags), with the fast tokenizer's ``offset_mapping``:

* A token's character range is trimmed of whitespace (XLM-R/e5 tokens start at the space before the
  word: "▁María" covers " María"); special tokens and whitespace-only tokens ("▁" alone) get no tag
  (label -100, and decoding skips them).
* A token overlapping an entity's span is tagged with it: the FIRST token of the entity ``B-TYPE``,
  every other token of the entity, continuation sub-tokens included, ``I-TYPE``. Tagging every
  sub-token (rather than -100 on continuations) gives denser supervision and lets decoding take the
  model's tag of every token; a word split across sub-tokens then decodes to one span.
* Decoding (:func:`decode_tags`) is seqeval's default IOB2 reading: ``B-X`` opens a span, ``I-X`` continues
  an open ``X`` span (an ``I-X`` after ``O`` or another type opens one), ``O`` closes. A span runs from
  its first token's (trimmed) start to its last token's end, widened to whole words when the model
  tagged only part of a word (no gold span splits a word), so ``text[start:end]`` is always the entity's
  surface text. Spans whose edges fall inside a token cannot round-trip exactly;
  :func:`alignment_report` counts them for a tokenizer (e5: 99.3% of the shipped entities survive).

Prefix: the e5 models want ``"query: "`` before a SENTENCE to embed; a token tagger gains nothing from
it, so entity models tokenize the raw text (``prefix`` "" in ``entities.json``). A non-empty prefix is
still handled (offsets are shifted back and prefix tokens get no tag), so a saved model may declare one.

Training is :mod:`.train`; the ONNX export and runtime :mod:`.onnx`.

Metric (:func:`entity_metrics`): entity-level exact match, seqeval-style: predicted and gold entities are
(type, start, end) sets per sentence; per-type precision/recall/F1/support, micro (pooled counts) and
macro (mean over the types present in the gold or the predictions). ``overall_score`` is micro-F1.
Gold spans lost to truncation count as misses.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence, cast

from ...runtime.device import place
from ...runtime.layout import TORCH
from ..._io import iter_jsonl
from ...data import (
    TRAIN_FILE,
    VALIDATION_FILE,
    check_split_fingerprint,
    load_split,
    read_data_text,
    read_manifest,
    stratified_split,
    write_split,
)
from ...errors import DataError, ModelError, RegistryError

if TYPE_CHECKING:
    from ...config import DataConfig
    from ...registry import VersionInfo

log = logging.getLogger("hotelbot.entities")

COMPONENT = "entities"
ENTITIES_DIR = "entities"
DATA_SUBDIR = "data"
CONFIG_FILE = "entities.json"
# TRAIN_FILE, VALIDATION_FILE, DATASET_FILE: the prepared split's files, from data.write_split
DATA_FORMAT = "hotelbot-entities-data/1"
MODEL_FORMAT = "hotelbot-entity-tagger/1"
EXPERIMENT = "hotelbot-entities"
METRIC = "micro_f1"
ENTITY_TYPES = ("DATE", "NIGHTS", "GUESTS", "ROOM_TYPE", "ROOM_NUMBER", "TIME", "PERSON", "MONEY")
OUTSIDE = "O"
IGNORE = -100
PREFIX_POLICY = "none: token classification tokenizes the raw text, so offsets index the input directly"
ALIGNMENT = (
    "B- on an entity's first token, I- on its other tokens (sub-tokens included); special and "
    "whitespace-only tokens -100"
)
SCALARS = ("micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall", "macro_f1")


# ============================================================================ data


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "label": self.label}


@dataclass(frozen=True)
class EntityExample:
    text: str
    entities: tuple[Span, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "entities": [s.to_dict() for s in self.entities]}

    def gold(self) -> set[tuple[str, int, int]]:
        return {(s.label, s.start, s.end) for s in self.entities}


@dataclass
class PreparedEntities:
    """A validated entity dataset split into train and validation (what ``prepare --entities`` writes)."""

    train: list[EntityExample]
    validation: list[EntityExample]
    labels: list[str]
    fingerprint: str
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def to_summary(self) -> dict[str, Any]:
        return {
            "format": DATA_FORMAT,
            "fingerprint": self.fingerprint,
            "labels": self.labels,
            **self.summary,
            "warnings": self.warnings,
        }


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_entity_record(record: Any, where: str, labels: Sequence[str] = ENTITY_TYPES) -> tuple[EntityExample, int]:
    """One ``{"text", "entities"}`` record -> (example, spans trimmed of surrounding whitespace).

    Raises DataError (message prefixed with ``where``) for anything invalid."""

    def bad(problem: str) -> DataError:
        return DataError(f"{where}: {problem}")

    if not isinstance(record, dict):
        raise bad('expected an object with "text" and "entities"')
    missing = [k for k in ("text", "entities") if k not in record]
    if missing:
        raise bad(f"missing field(s) {', '.join(missing)}")
    text, entities = record["text"], record["entities"]
    if not isinstance(text, str):
        raise bad(f'"text" must be a string, got {type(text).__name__}')
    if not text.strip():
        raise bad("empty text")
    if not isinstance(entities, list):
        raise bad(f'"entities" must be a list, got {type(entities).__name__}')
    spans: list[Span] = []
    trimmed = 0
    for i, ent in enumerate(entities, 1):
        what = f"entity {i}"
        if not isinstance(ent, dict) or any(k not in ent for k in ("start", "end", "label")):
            raise bad(f'{what}: expected {{"start", "end", "label"}}, got {json.dumps(ent, ensure_ascii=False)[:80]}')
        start, end, label = ent["start"], ent["end"], ent["label"]
        if not (_int(start) and _int(end)):
            raise bad(f"{what}: start and end must be integers, got {start!r} and {end!r}")
        if not isinstance(label, str) or label not in labels:
            raise bad(f"{what}: unknown label {label!r}; known: {', '.join(labels)}")
        what = f"entity {i} ({label} {start}-{end})"
        if start < 0 or end > len(text):
            raise bad(f"{what}: outside the text, which has {len(text)} characters")
        if start >= end:
            raise bad(f"{what}: start must be below end")
        if not text[start:end].strip():
            raise bad(f"{what}: the span {text[start:end]!r} is blank")
        s, e = start, end
        while text[s].isspace():
            s += 1
        while text[e - 1].isspace():
            e -= 1
        trimmed += (s, e) != (start, end)
        spans.append(Span(s, e, label))
    ordered = sorted(spans)
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.end:
            raise bad(
                f"entities overlap: {a.label} {a.start}-{a.end} {text[a.start : a.end]!r} and "
                f"{b.label} {b.start}-{b.end} {text[b.start : b.end]!r}"
            )
    return EntityExample(text, tuple(ordered)), trimmed


def read_entity_file(
    path: Path, labels: Sequence[str] = ENTITY_TYPES, *, require_entities: bool = True
) -> tuple[list[EntityExample], list[dict[str, str]]]:
    """Read and validate a JSONL entity file; drop exact duplicates. DataError names the file and line.

    ``require_entities`` refuses a file without any example or entity (False for a prepared split)."""
    path = Path(path)
    raw = read_data_text(path, 'a .jsonl file of {"text", "entities"} lines')
    examples: list[EntityExample] = []
    seen: dict[str, tuple[EntityExample, int]] = {}
    duplicates = trimmed = 0
    for number, record in iter_jsonl(path, raw):
        where = f"{path}: line {number}"
        example, fixed = parse_entity_record(record, where, labels)
        trimmed += fixed
        if example.text in seen:
            other, other_line = seen[example.text]
            if other.entities != example.entities:
                raise DataError(f"{where}: the same text has different entities at line {other_line}")
            duplicates += 1
            continue
        seen[example.text] = (example, number)
        examples.append(example)
    if require_entities and not examples:
        raise DataError(f"{path}: no examples found")
    if require_entities and not any(e.entities for e in examples):
        raise DataError(f"{path}: no entities in any line; nothing to learn")
    warnings = []
    if duplicates:
        warnings.append({"code": "duplicates_removed", "message": f"{duplicates} exact duplicate line(s) removed"})
    if trimmed:
        warnings.append(
            {
                "code": "spans_trimmed",
                "message": f"{trimmed} span(s) had surrounding whitespace; trimmed to the entity text",
            }
        )
    return examples, warnings


def _stratum(example: EntityExample, counts: Counter) -> str:
    if not example.entities:
        return "(none)"
    return min((s.label for s in example.entities), key=lambda label: (counts[label], label))


def split_entities(
    examples: Sequence[EntityExample], validation_split: float, seed: int
) -> tuple[list[EntityExample], list[EntityExample]]:
    """Seeded split stratified by each sentence's rarest entity type (sentences without entities apart);
    every stratum of 2+ sentences gives at least one to validation."""
    counts = Counter(s.label for e in examples for s in e.entities)
    return stratified_split(examples, validation_split, seed, key=lambda e: _stratum(e, counts))


def entity_fingerprint(train: Iterable[EntityExample], validation: Iterable[EntityExample]) -> str:
    digest = hashlib.sha256()
    for name, split in (("train", train), ("validation", validation)):
        digest.update(name.encode())
        for line in sorted(json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) for e in split):
            digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def prepare_entities(
    path: Path, validation_split: float = 0.2, seed: int = 42, labels: Sequence[str] = ENTITY_TYPES
) -> PreparedEntities:
    """Load, validate and split an entity file. Raises DataError; writes nothing."""
    examples, warnings = read_entity_file(path, labels)
    train, validation = split_entities(examples, validation_split, seed)
    used = sorted({s.label for e in examples for s in e.entities}, key=list(labels).index)
    counts = Counter(s.label for e in examples for s in e.entities)
    few = [label for label in used if counts[label] < 10]
    if few:
        warnings.append(
            {
                "code": "few_examples",
                "message": "entity types with fewer than 10 examples: "
                + ", ".join(f"{label} ({counts[label]})" for label in few),
            }
        )
    summary = {
        "source": str(path),
        "examples": len(examples),
        "train_size": len(train),
        "validation_size": len(validation),
        "entities": sum(counts.values()),
        "entities_per_type": {label: counts[label] for label in used},
        "sentences_without_entities": sum(not e.entities for e in examples),
        "validation_split": validation_split,
        "seed": seed,
    }
    return PreparedEntities(train, validation, used, entity_fingerprint(train, validation), summary, warnings)


def write_prepared_entities(prepared: PreparedEntities, out_dir: Path) -> Path:
    """train.jsonl, validation.jsonl, then dataset.json (the completion marker), each atomically."""
    return write_split(
        out_dir,
        (e.to_dict() for e in prepared.train),
        (e.to_dict() for e in prepared.validation),
        prepared.to_summary(),
    )


def read_prepared_entities(directory: Path) -> PreparedEntities:
    directory = Path(directory)
    summary = read_manifest(
        directory, DATA_FORMAT, "entity", "run `hotelbot prepare --entities datasets/entidades_es.jsonl`"
    )
    labels = list(summary.pop("labels"))
    known = tuple(dict.fromkeys([*ENTITY_TYPES, *labels]))
    train, _ = read_entity_file(directory / TRAIN_FILE, known, require_entities=False)
    validation, _ = read_entity_file(directory / VALIDATION_FILE, known, require_entities=False)
    check_split_fingerprint(
        entity_fingerprint(train, validation), summary, directory, "entity", "run `hotelbot prepare --entities` again"
    )
    fingerprint = summary.pop("fingerprint")
    warnings = summary.pop("warnings", [])
    summary.pop("format", None)
    return PreparedEntities(train, validation, labels, fingerprint, summary, warnings)


def load_entity_data(source: Path, data: DataConfig | None = None) -> PreparedEntities:
    """A prepared directory (has dataset.json) is read; a .jsonl file is validated and split now."""
    return load_split(source, data, read_prepared_entities, prepare_entities)


# ============================================================================ alignment


def bio_tags(labels: Sequence[str]) -> list[str]:
    return [OUTSIDE] + [f"{p}-{label}" for label in labels for p in ("B", "I")]


def token_char_spans(
    text: str, offsets: Sequence[Sequence[int]], special: Sequence[int] | None = None, prefix_len: int = 0
) -> list[tuple[int, int] | None]:
    """Each token's character range in ``text`` (offsets of ``prefix + text``, shifted back by the prefix),
    trimmed of whitespace; None for special tokens, tokens inside the prefix and whitespace-only tokens."""
    out: list[tuple[int, int] | None] = []
    for i, (s, e) in enumerate(offsets):
        s, e = int(s) - prefix_len, int(e) - prefix_len
        if (special is not None and special[i]) or e <= 0 or s >= e:
            out.append(None)
            continue
        s = max(s, 0)
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        out.append((s, e) if s < e else None)
    return out


def spans_to_tags(spans: Sequence[Span], token_spans: Sequence[tuple[int, int] | None]) -> list[str | None]:
    """BIO tag of each token (None: no tag, see :func:`token_char_spans`). See the module docstring."""
    tags: list[str | None] = []
    opened: set[int] = set()
    for ts in token_spans:
        if ts is None:
            tags.append(None)
            continue
        hit = next((k for k, sp in enumerate(spans) if sp.start < ts[1] and ts[0] < sp.end), None)
        if hit is None:
            tags.append(OUTSIDE)
        else:
            tags.append(("I-" if hit in opened else "B-") + spans[hit].label)
            opened.add(hit)
    return tags


def snap_to_words(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a span that starts or ends inside an alphanumeric word to the whole word (a model may tag
    only a word's later sub-tokens: "Hor|rible" -> "rible"). Gold spans never split a word (prepare's
    data has none), so this never moves a span that is right."""
    while start > 0 and text[start - 1].isalnum() and text[start].isalnum():
        start -= 1
    while end < len(text) and text[end - 1].isalnum() and text[end].isalnum():
        end += 1
    return start, end


def decode_tags(
    tags: Sequence[str | None],
    token_spans: Sequence[tuple[int, int] | None],
    scores: Sequence[float] | None = None,
    text: str | None = None,
) -> list[tuple[str, int, int, float]]:
    """(type, start, end, confidence) of each entity in a BIO sequence (seqeval's default IOB2 reading;
    None tokens are skipped). ``confidence`` is the mean of ``scores`` over the entity's tokens (1.0 without
    scores). With ``text``, spans are widened to whole words (:func:`snap_to_words`) and spans that then
    overlap are merged into the first."""
    out: list[tuple[str, int, int, float]] = []
    current: list[Any] | None = None  # [type, start, end, [scores]]

    def close() -> None:
        nonlocal current
        if current is not None:
            out.append((current[0], current[1], current[2], sum(current[3]) / len(current[3])))
            current = None

    for i, (tag, ts) in enumerate(zip(tags, token_spans)):
        if ts is None or tag is None:
            continue
        score = 1.0 if scores is None else float(scores[i])
        if tag == OUTSIDE or "-" not in tag:
            close()
            continue
        prefix, kind = tag.split("-", 1)
        if prefix == "I" and current is not None and current[0] == kind:
            current[2] = ts[1]
            current[3].append(score)
        else:
            close()
            current = [kind, ts[0], ts[1], [score]]
    close()
    if text is None:
        return out
    snapped: list[tuple[str, int, int, float]] = []
    for kind, start, end, conf in out:
        start, end = snap_to_words(text, start, end)
        if snapped and start < snapped[-1][2]:
            last = snapped[-1]
            snapped[-1] = (last[0], last[1], max(last[2], end), last[3])
        else:
            snapped.append((kind, start, end, conf))
    return snapped


def alignment_report(
    examples: Sequence[EntityExample], tokenizer: Any, max_length: int = 512, prefix: str = ""
) -> dict[str, Any]:
    """How many gold entities survive char spans -> token tags -> decoded spans exactly with ``tokenizer``
    (the ceiling of exact-match F1 for that tokenizer), with a few that do not."""
    total = exact = 0
    misses: list[dict[str, Any]] = []
    for example in examples:
        enc = tokenizer(
            prefix + example.text,
            truncation=True,
            max_length=max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        spans = token_char_spans(example.text, enc["offset_mapping"], enc["special_tokens_mask"], len(prefix))
        decoded = {
            (k, s, e) for k, s, e, _ in decode_tags(spans_to_tags(example.entities, spans), spans, text=example.text)
        }
        for gold in sorted(example.gold(), key=lambda g: g[1]):
            total += 1
            if gold in decoded:
                exact += 1
            elif len(misses) < 10:
                misses.append({"text": example.text, "entity": example.text[gold[1] : gold[2]], "label": gold[0]})
    return {"entities": total, "exact": exact, "ratio": exact / total if total else 1.0, "misses": misses}


# ============================================================================ metric


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def entity_metrics(
    gold: Sequence[Iterable[tuple[str, int, int]]],
    predicted: Sequence[Iterable[tuple[str, int, int]]],
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Entity-level exact-match metrics over sentences: each sentence gives a set of (type, start, end).

    ``per_type`` lists ``labels`` (default: every type seen) with precision, recall, F1, support (gold
    count) and predicted count; ``micro_*`` pools the counts of every type; ``macro_*`` averages the
    per-type figures over the types present in the gold or the predictions (seqeval's convention, so
    a type absent from both does not count as 0). ``overall_score`` is micro-F1.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    exact_sentences = 0
    for gold_spans, predicted_spans in zip(gold, predicted):
        g, p = set(map(tuple, gold_spans)), set(map(tuple, predicted_spans))
        exact_sentences += g == p
        for label, *_ in g & p:
            tp[label] += 1
        for label, *_ in p - g:
            fp[label] += 1
        for label, *_ in g - p:
            fn[label] += 1
    seen = set(tp) | set(fp) | set(fn)
    order = list(labels) if labels is not None else []
    order += sorted(seen - set(order))
    per_type: dict[str, dict[str, float]] = {}
    for label in order:
        precision, recall, f1 = _prf(tp[label], fp[label], fn[label])
        per_type[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": tp[label] + fn[label],
            "predicted": tp[label] + fp[label],
        }
    present = [label for label in order if label in seen]
    micro = _prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    macro = [
        sum(per_type[label][k] for label in present) / len(present) if present else 0.0
        for k in ("precision", "recall", "f1")
    ]
    return {
        "micro_precision": micro[0],
        "micro_recall": micro[1],
        "micro_f1": micro[2],
        "macro_precision": macro[0],
        "macro_recall": macro[1],
        "macro_f1": macro[2],
        "per_type": per_type,
        "num_sentences": len(gold),
        "num_gold": sum(tp.values()) + sum(fn.values()),
        "num_predicted": sum(tp.values()) + sum(fp.values()),
        "exact_sentence_accuracy": exact_sentences / len(gold) if gold else 0.0,
        "metric": METRIC,
        "overall_score": micro[2],
    }


# ============================================================================ model


@dataclass
class EntityConfig:
    labels: list[str]
    max_length: int = 64
    prefix: str = ""
    prefix_policy: str = PREFIX_POLICY
    alignment: str = ALIGNMENT
    dropout: float = 0.1
    base_model: str = ""
    format: str = MODEL_FORMAT

    @property
    def tags(self) -> list[str]:
        return bio_tags(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tags": self.tags}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EntityConfig:
        config = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        if "tags" in data and list(data["tags"]) != config.tags:
            raise ModelError("entities.json: tags do not match its labels")
        return config


def _torch_module():
    import torch
    from torch import nn

    class TokenClassifier(nn.Module):
        """A pretrained encoder, dropout and a linear head over the BIO tags of each token."""

        def __init__(self, encoder: nn.Module, config: EntityConfig) -> None:
            super().__init__()
            self.encoder: Any = encoder  # a transformers model: its config and methods are not nn.Module's
            self.entity_config = config
            self.dropout = nn.Dropout(config.dropout)
            # "head.": its own learning rate
            self.head = nn.Linear(cast(Any, encoder).config.hidden_size, len(config.tags))

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
            labels: torch.Tensor | None = None,
        ) -> dict:
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            logits = self.head(self.dropout(hidden))
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = nn.functional.cross_entropy(
                    logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=IGNORE
                )
            return out

        def freeze_word_embeddings(self) -> int:
            weight = self.encoder.get_input_embeddings().weight
            weight.requires_grad_(False)
            return weight.numel()

    return TokenClassifier


def new_token_classifier(encoder: Any, config: EntityConfig) -> Any:
    return _torch_module()(encoder, config)


def save_entity_model(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """Weights (safetensors), encoder config, tokenizer and entities.json into ``out_dir``."""
    from ...modeling import save_encoder_model  # modeling imports torch

    save_encoder_model(model, tokenizer, out_dir, CONFIG_FILE, model.entity_config.to_dict(), MODEL_FORMAT)


def load_entity_model(model_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a directory written by :func:`save_entity_model`."""
    from ...modeling import encoder_from_config, load_weights, read_encoder_model  # modeling imports torch

    raw, encoder_config, state, tokenizer = read_encoder_model(model_dir, CONFIG_FILE, "entity model")
    try:
        config = EntityConfig.from_dict(raw)
    except TypeError as exc:
        raise ModelError(f"cannot load the entity model in {model_dir}: {exc}") from None
    if config.format != MODEL_FORMAT:
        raise ModelError(f"{Path(model_dir) / CONFIG_FILE}: unknown format {config.format!r}")
    _require_fast(tokenizer, str(model_dir))
    return load_weights(new_token_classifier(encoder_from_config(encoder_config), config), state, "entity"), tokenizer


def _require_fast(tokenizer: Any, what: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"{what}: entity extraction needs a fast (Rust) tokenizer with offset mappings",
            hint="use a model directory with tokenizer.json",
        )


# ============================================================================ inference


def entity_model_dir(info: VersionInfo) -> Path:
    """``entities/`` of a version, which must hold an entity model of its own."""
    path = info.path / ENTITIES_DIR
    if not (path / CONFIG_FILE).is_file():
        raise RegistryError(
            f"version {info.name} has no entity model", hint="train one: hotelbot train --model-type entities"
        )
    return path


def decode_token_logits(
    logits: Any, spans_per_example: Sequence[Sequence[Any]], tags: Sequence[str], texts: Sequence[str]
):
    """Per example: [(type, start, end, confidence)] from (N, L, C) logits (padding beyond each example's
    tokens ignored), decoded exactly as :class:`EntityExtractor` does (and the joint NLU model's entity head)."""
    import numpy as np

    out = []
    for row, spans, text in zip(np.asarray(logits, dtype="float64"), spans_per_example, texts):
        row = row[: len(spans)]
        z = np.exp(row - row.max(axis=-1, keepdims=True))
        probs = z / z.sum(axis=-1, keepdims=True)
        best = probs.argmax(axis=-1)
        out.append(decode_tags([tags[i] for i in best], spans, probs.max(axis=-1).tolist(), text=text))
    return out


class Extracts:
    """``extract`` on top of a tagger's ``extract_spans`` (the torch and the ONNX extractor share it)."""

    def extract_spans(self, texts: Sequence[str], batch_size: int = 32) -> list[list[tuple[str, int, int, float]]]:
        raise NotImplementedError

    def extract(self, texts: Sequence[str], batch_size: int = 32) -> list[list[dict[str, Any]]]:
        """Per text: [{"type", "text", "start", "end", "confidence"}]; ``text[start:end]`` is the entity text."""
        return [
            [
                {"type": k, "text": text[s:e], "start": s, "end": e, "confidence": round(float(c), 6)}
                for k, s, e, c in spans
            ]
            for text, spans in zip(texts, self.extract_spans(texts, batch_size))
        ]


class EntityExtractor(Extracts):
    """A loaded entity model: ``extract(texts)`` -> per text, entities with offsets into that raw text."""

    def __init__(self, model: Any, tokenizer: Any, version: str = "") -> None:
        import torch

        self.model = place(model)  # HOTELBOT_DEVICE: CUDA when there is one, else the CPU
        self.device = next(self.model.parameters()).device
        self.tokenizer = tokenizer
        self.config: EntityConfig = model.entity_config
        self.tags = self.config.tags
        self.version = version
        self.runtime = TORCH
        self._torch = torch

    @classmethod
    def from_dir(cls, path: Path, version: str = "") -> EntityExtractor:
        model, tokenizer = load_entity_model(path)
        return cls(model, tokenizer, version)

    @classmethod
    def from_version(cls, info: VersionInfo) -> EntityExtractor:
        """The version's own entity model on PyTorch (the weights; what serves is the component's ``load``:
        :func:`~.onnx.load_version_extractor`)."""
        return cls.from_dir(entity_model_dir(info), info.name)

    def extract_spans(self, texts: Sequence[str], batch_size: int = 32) -> list[list[tuple[str, int, int, float]]]:
        """Per text: (type, start, end, confidence) with offsets into the text as given (not cleaned)."""
        torch = self._torch
        prefix = self.config.prefix
        out: list[list[tuple[str, int, int, float]]] = []
        with torch.inference_mode():
            for first in range(0, len(texts), batch_size):
                chunk = list(texts[first : first + batch_size])
                enc = self.tokenizer(
                    [prefix + t for t in chunk],
                    padding=True,
                    truncation=True,
                    max_length=self.config.max_length,
                    return_offsets_mapping=True,
                    return_special_tokens_mask=True,
                    return_tensors="pt",
                )
                offsets = enc.pop("offset_mapping").tolist()
                special = enc.pop("special_tokens_mask").tolist()
                inputs = {
                    k: enc[k].to(self.device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc
                }
                probs = torch.softmax(self.model(**inputs)["logits"].float(), dim=-1).cpu()
                confidence, best = probs.max(dim=-1)
                for i, text in enumerate(chunk):
                    mask = enc["attention_mask"][i].tolist()
                    spans = [
                        None if not m else s
                        for s, m in zip(token_char_spans(text, offsets[i], special[i], len(prefix)), mask)
                    ]
                    out.append(
                        decode_tags([self.tags[j] for j in best[i].tolist()], spans, confidence[i].tolist(), text=text)
                    )
        return out


def evaluate_entities(info: VersionInfo, data: Path | None = None, extractor: Any = None) -> dict[str, Any]:
    """Entity metrics of a version's saved model (or ``extractor``: the one the component loads, e.g. a joint
    model's head) on its own validation split (or ``data``: a prepared directory or a .jsonl file, all of it
    scored)."""
    if data is None:
        examples = read_prepared_entities(info.path / ENTITIES_DIR / DATA_SUBDIR).validation
        source = f"{info.name}/{ENTITIES_DIR}/{DATA_SUBDIR}/{VALIDATION_FILE}"
    elif Path(data).is_dir():
        examples = read_prepared_entities(Path(data)).validation
        source = str(data)
    else:
        examples, _ = read_entity_file(Path(data))
        source = str(data)
    extractor = extractor if extractor is not None else EntityExtractor.from_version(info)
    predicted = [{(k, s, e) for k, s, e, _ in spans} for spans in extractor.extract_spans([e.text for e in examples])]
    metrics = entity_metrics([e.gold() for e in examples], predicted, extractor.config.labels)
    metrics["data_source"] = source
    return metrics


__all__ = [
    "ENTITY_TYPES",
    "EntityConfig",
    "EntityExample",
    "EntityExtractor",
    "PreparedEntities",
    "Span",
    "alignment_report",
    "bio_tags",
    "decode_tags",
    "decode_token_logits",
    "entity_metrics",
    "evaluate_entities",
    "load_entity_data",
    "prepare_entities",
    "read_entity_file",
    "read_prepared_entities",
    "spans_to_tags",
    "split_entities",
    "token_char_spans",
    "write_prepared_entities",
]
