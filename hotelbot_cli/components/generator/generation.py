"""The response generator: guest message (+ knowledge-base passages) in, a Spanish reply out.

Three parts, each a plain function or class (nothing here prints or exits):

* **Data**: :func:`read_reply_file` validates ``{"message", "reply", "intent"?, "source"?}`` JSONL with
  errors naming the file and line; :func:`prepare_replies` de-duplicates and makes a seeded split
  stratified by intent; :func:`write_prepared_replies` / :func:`load_reply_data` store and read it.
* **Training**: :func:`train_generator` fine-tunes a generator with the Hugging Face Trainer and
  publishes a NEW registry version that carries over every other component of the source version
  (deployed, else newest) and adds ``generator/``. Three architectures, picked from the base model:

  ``encoder-decoder`` (the offline default, and any encoder-only base such as BERT/XLM-R/e5)
      a ``transformers.EncoderDecoderModel``: the pretrained encoder (``packaged:multilingual-e5-small``
      by default) and a small BERT-style decoder trained from scratch (``decoder_layers`` layers with
      cross-attention, the encoder's tokenizer). The decoder's input embeddings, tied to its output
      projection, start as the encoder's word embeddings (their top principal directions when the decoder
      is narrower). The decoder is 256 wide on e5 (384): the ``enc_to_dec_proj`` EncoderDecoderModel adds
      between them starts as a per-dimension standardisation of the encoder's states
      (:func:`standardize_projection`). Without it the decoder ignores the message: e5's token states share
      a large common component and a from-scratch cross-attention sees almost no difference between
      messages (measured: 18 distinct replies for 100 validation messages without it, 95 with it).
      **Restricted output vocabulary**: e5 has 250k pieces; a softmax over all of them costs more than
      the whole decoder. With ``restrict_vocab`` the decoder only knows the pieces that occur in the
      training replies (and in the knowledge-base passages, when grounded) plus the specials:
      :class:`VocabMap` maps full tokenizer ids <-> decoder ids and is stored as ``vocab_map.json``.
      Encoder inputs use the full vocabulary; only the decoder side is restricted.
      **Frozen encoder** (default on CPU, ``freeze_encoder``): its outputs are computed ONCE per
      example and the Trainer trains the decoder on those cached states (the encoder is never run
      again during training), which makes a from-scratch decoder affordable on two CPU cores.
      A frozen packaged encoder is not copied into the version: ``generator.json`` records its spec
      and weights fingerprint and loading re-materialises it from the pinned package (refusing one
      whose fingerprint differs). Any other encoder is saved in full.
  ``seq2seq`` (``config.is_encoder_decoder``: T5, mT5, BART, ...) via ``AutoModelForSeq2SeqLM``.
  ``causal`` (GPT-2 family and other decoder-only LMs) via ``AutoModelForCausalLM``: prompt + reply
  in one sequence, the loss on the reply tokens only.

* **Inference and metrics**: :class:`Responder` loads a version's generator (and its knowledge base,
  when the version has one) and answers ``reply(messages) -> [{"message", "reply", "sources"}]``;
  :func:`evaluate_generator` computes BLEU (sacrebleu corpus BLEU), ROUGE-L F1, perplexity (exp of the
  mean token NLL of the reference replies) and response relevance (cosine of the embeddings of the
  generated and reference replies), beside a retrieval-only baseline (the reply of the nearest
  training message by embedding cosine) computed in the same run.

**Retrieval grounding**: when the source version has a knowledge base, the top ``grounding_passages``
chunks for the message are the encoder's second segment (``tokenizer(message, passages)``; the longer
segment, in practice the passages, is truncated first): for e5, ``<s> query: MESSAGE </s></s> passage: HEADING: TEXT ... </s>``. Training uses
the same retrieval, so the generator learns to use the passages; the reply cites them as
``sources: [{"doc", "heading", "score"}]``.

``generator/`` in a version::

    generator.json       format, architecture, base model, encoder (saved or referenced + fingerprint),
                         input prefixes, max lengths, grounding settings, special token ids
    generation.json      decoding settings used by reply/serve (beams, max_new_tokens, no-repeat n-gram,
                         or sampling top_p/temperature)
    vocab_map.json       decoder id -> tokenizer id (encoder-decoder with a restricted vocabulary)
    model/               config.json + model.safetensors (+ tokenizer files); for a referenced encoder
                         the weights hold the decoder only
    metrics.json         validation metrics beside the retrieval-only baseline, and sample replies
    training_history.json  per-epoch validation loss and the Trainer's log
    data/                the exact split: train.jsonl, validation.jsonl, dataset.json
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import re
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from ..._io import atomic_write_bytes, atomic_write_json, iter_jsonl
from ...data import (DATASET_FILE, LABEL_RE, TRAIN_FILE, VALIDATION_FILE, check_split_fingerprint, clean_text,
                     load_split, read_manifest, write_split)
from ...errors import ConfigError, DataError, IntegrityError, ModelError, RegistryError
from ...training.events import TrainingEvent, emitter
from ...training.loop import FitStats, progress_callbacks, training_arguments, training_summary
from ...training.monitor import SystemMonitor
from ..base import ComponentResult, training_run
from ..compose import publish_component, source_version

if TYPE_CHECKING:
    from ...config import DataConfig, Settings
    from ..knowledge.kb import Embedder, KnowledgeBase, SearchHit
    from ...registry import ModelRegistry, VersionInfo
    from ...training.events import Listener

log = logging.getLogger("hotelbot.generation")

COMPONENT = "generator"
GENERATOR_DIR = "generator"
MODEL_SUBDIR = "model"
DATA_SUBDIR = "data"
GENERATOR_FILE = "generator.json"
GENERATION_FILE = "generation.json"
VOCAB_FILE = "vocab_map.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"
# TRAIN_FILE, VALIDATION_FILE, DATASET_FILE: the prepared split's files, from data.write_split
DATA_FORMAT = "hotelbot-replies/1"
GENERATOR_FORMAT = "hotelbot-generator/1"
VOCAB_FORMAT = "hotelbot-vocab-map/1"
EXPERIMENT = "hotelbot-generator"
DEFAULT_DATA = Path("datasets/respuestas_es.jsonl")
DEFAULT_RELEVANCE_MODEL = "packaged:multilingual-e5-small"
ARCHITECTURES = ("encoder-decoder", "seq2seq", "causal")
IGNORE = -100
BLEU_TOKENIZE = "intl"  # Unicode-aware punctuation splitting (¿ ¡ « ») for Spanish
MAX_SAMPLES = 12


# ============================================================================ data


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
            raise DataError(f'{where}: invalid intent {intent!r}: use lowercase letters, digits and _ (e.g. '
                            "breakfast_info), or leave it out")
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
        raise DataError(f"{path} is a directory; give a .jsonl file of message/reply pairs or a prepared directory "
                        f"(with {DATASET_FILE})")
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"{path}: unsupported format {path.suffix or '(no extension)'!r}; reply pairs are JSONL, "
                        'one {"message", "reply", "intent", "source"} object per line')
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
                raise DataError(f"{path} line {number}: message {pair.message!r} already has a different reply "
                                f"(line {previous[1]}); keep one reply per message")
            duplicates += 1
            continue
        seen[pair.message] = (pair.reply, number)
        pairs.append(pair)
    if len(pairs) < 2:
        raise DataError(f"{path}: {len(pairs)} message/reply pair(s); at least 2 are needed (one to validate on)")
    warnings = [f"{duplicates} exact duplicate pair(s) removed"] if duplicates else []
    return pairs, warnings


def split_pairs(pairs: Sequence[ReplyPair], validation_split: float, seed: int) -> tuple[list[ReplyPair], list[ReplyPair]]:
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


def prepare_replies(path: Path, validation_split: float = 0.2, seed: int = 42,
                    known_intents: Iterable[str] | None = None) -> PreparedReplies:
    pairs, warnings = read_reply_file(path, known_intents)
    train, validation = split_pairs(pairs, validation_split, seed)
    intents = Counter(p.intent or "(none)" for p in pairs)
    summary = {"source": str(path), "pairs": len(pairs), "train_size": len(train), "validation_size": len(validation),
               "validation_split": validation_split, "seed": seed, "intents": dict(sorted(intents.items())),
               "grounded_in": dict(sorted(Counter(p.source or "(none)" for p in pairs).items()))}
    return PreparedReplies(train, validation, pairs_fingerprint(train, validation), summary, warnings)


def write_prepared_replies(prepared: PreparedReplies, out_dir: Path) -> Path:
    """``train.jsonl``, ``validation.jsonl``, then ``dataset.json`` (the completion marker), each atomic."""
    return write_split(out_dir, (p.to_dict() for p in prepared.train), (p.to_dict() for p in prepared.validation),
                       {"format": DATA_FORMAT, "fingerprint": prepared.fingerprint, **prepared.summary,
                        "warnings": prepared.warnings})


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


def default_data_path(settings: "Settings") -> Path:
    """What ``train --model-type generator`` reads without ``--data``: the prepared split beside the intent
    split (``data/generator``, when ``dataset.json`` is there), else the shipped pairs."""
    prepared = Path(settings.paths.data).parent / COMPONENT
    return prepared if (prepared / DATASET_FILE).is_file() else DEFAULT_DATA


def load_reply_data(source: Path, data: "DataConfig | None" = None,
                    known_intents: Iterable[str] | None = None) -> PreparedReplies:
    """A prepared directory (has dataset.json) is read; a .jsonl file is validated and split now."""
    return load_split(source, data, lambda directory: read_prepared_replies(directory, known_intents),
                      lambda path, split, seed: prepare_replies(path, split, seed, known_intents))


# ============================================================================ text metrics

_WORD_RE = re.compile(r"\w+", re.UNICODE)


def rouge_tokens(text: str) -> list[str]:
    """Lowercased Unicode words (accents and ñ kept, punctuation dropped). rouge-score's tokenizer keeps
    only [a-z0-9], which would split "habitación" into "habitaci" + "n": we use our own."""
    return _WORD_RE.findall(unicodedata.normalize("NFC", text).casefold())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: str, reference: str) -> dict[str, float]:
    """ROUGE-L of one pair: LCS-based precision, recall and F1 (beta = 1, as rouge-score reports)."""
    hyp, ref = rouge_tokens(hypothesis), rouge_tokens(reference)
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, r = lcs / len(hyp), lcs / len(ref)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r)}


def corpus_rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over the pairs (0..1)."""
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references differ in length")
    if not hypotheses:
        return 0.0
    return sum(rouge_l(h, r)["f1"] for h, r in zip(hypotheses, references)) / len(hypotheses)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (0..100), one reference per hypothesis, ``intl`` tokenization."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references differ in length")
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=BLEU_TOKENIZE).score)


def bleu_signature() -> str:
    import sacrebleu

    metric = sacrebleu.BLEU(tokenize=BLEU_TOKENIZE)
    metric.corpus_score(["a"], [["a"]])  # the signature includes the reference count, known after scoring
    return str(metric.get_signature())


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(mean token NLL); inf for no tokens."""
    return math.exp(nll_sum / tokens) if tokens else float("inf")


# ============================================================================ vocabulary map


@dataclass
class VocabMap:
    """The decoder's restricted vocabulary: ``ids[i]`` is the tokenizer id of decoder id ``i``.

    Decoder ids 0..3 are pad, bos (decoder start), eos and unk; a tokenizer id outside the map becomes unk."""

    ids: list[int]
    full_vocab_size: int
    pad: int = 0
    bos: int = 1
    eos: int = 2
    unk: int = 3

    def __post_init__(self) -> None:
        if len(set(self.ids)) != len(self.ids):
            raise ModelError("vocab map has duplicate token ids")
        self._to_restricted = {full: i for i, full in enumerate(self.ids)}

    @classmethod
    def build(cls, token_ids: Iterable[Iterable[int]], *, pad: int, bos: int, eos: int, unk: int,
              full_vocab_size: int) -> "VocabMap":
        specials = []
        for special in (pad, bos, eos, unk):
            if special in specials:
                raise ModelError(f"the tokenizer uses id {special} for two of pad/bos/eos/unk; the decoder needs four "
                                 "distinct special tokens")
            specials.append(special)
        rest = sorted({int(t) for ids in token_ids for t in ids} - set(specials))
        return cls(specials + rest, full_vocab_size, 0, 1, 2, 3)

    def __len__(self) -> int:
        return len(self.ids)

    def to_restricted(self, ids: Iterable[int]) -> list[int]:
        return [self._to_restricted.get(int(i), self.unk) for i in ids]

    def to_full(self, ids: Iterable[int]) -> list[int]:
        return [self.ids[int(i)] for i in ids]

    def covers(self, ids: Iterable[int]) -> bool:
        return all(int(i) in self._to_restricted for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"format": VOCAB_FORMAT, "full_vocab_size": self.full_vocab_size,
                "specials": {"pad": self.pad, "bos": self.bos, "eos": self.eos, "unk": self.unk}, "ids": self.ids}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VocabMap":
        if data.get("format") != VOCAB_FORMAT:
            raise ModelError(f"not a hotelbot vocabulary map (format {data.get('format')!r})")
        try:
            s = data["specials"]
            return cls([int(i) for i in data["ids"]], int(data["full_vocab_size"]), int(s["pad"]), int(s["bos"]),
                       int(s["eos"]), int(s["unk"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"vocabulary map is malformed: {exc}") from None


# ============================================================================ configuration


@dataclass
class GenerationSettings:
    """Decoding settings stored with the version (``generation.json``) and used by reply/serve."""

    num_beams: int = 4
    max_new_tokens: int = 72
    min_new_tokens: int = 2
    no_repeat_ngram_size: int = 3
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    do_sample: bool = False
    top_p: float = 0.9
    temperature: float = 0.7

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if not 1 <= self.max_new_tokens <= 512:
            raise ConfigError(f"max_new_tokens must be between 1 and 512, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"min_new_tokens must be between 0 and max_new_tokens, got {self.min_new_tokens}")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError("no_repeat_ngram_size must be >= 0 (0 turns it off)")
        if self.repetition_penalty <= 0:
            raise ConfigError("repetition_penalty must be > 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown generation setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(data))

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens,
                               "no_repeat_ngram_size": self.no_repeat_ngram_size,
                               "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            out.update(do_sample=True, top_p=self.top_p, temperature=self.temperature, num_beams=1)
        else:
            out.update(do_sample=False, num_beams=self.num_beams,
                       length_penalty=self.length_penalty if self.num_beams > 1 else 1.0,
                       early_stopping=self.num_beams > 1)
        return out


@dataclass
class GeneratorConfig:
    """How a generator is trained. ``learning_rate`` is for new weights (the from-scratch decoder);
    ``pretrained_learning_rate`` for pretrained ones (an unfrozen encoder, a hub seq2seq/causal model)."""

    base_model: str = "packaged:multilingual-e5-small"
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3
    pretrained_learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    seed: int = 42
    early_stopping_patience: int = 3
    decoder_layers: int = 3
    decoder_hidden: int = 0       # 0: the encoder's hidden size, at most 256
    decoder_heads: int = 0        # 0: decoder hidden size / 64 (at least 1)
    decoder_ffn: int = 0          # 0: 4 x decoder hidden size
    dropout: float = 0.1
    freeze_encoder: str = "auto"  # auto (frozen without a GPU) | yes | no
    restrict_vocab: bool = True
    max_source_length: int = 192
    max_target_length: int = 96
    grounding_passages: int = 2   # knowledge-base chunks given as context (0: never ground)
    passage_chars: int = 300      # each passage is cut to this many characters
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def __post_init__(self) -> None:
        if isinstance(self.generation, Mapping):
            self.generation = GenerationSettings.from_dict(self.generation)
        if not self.base_model.strip():
            raise ConfigError("base_model must not be empty")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        for name in ("learning_rate", "pretrained_learning_rate"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.weight_decay <= 1.0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("weight_decay must be in [0, 1] and warmup_ratio in [0, 1)")
        if not 0.0 <= self.dropout < 0.9:
            raise ConfigError(f"dropout must be in [0, 0.9), got {self.dropout}")
        if not 1 <= self.decoder_layers <= 24:
            raise ConfigError(f"decoder_layers must be between 1 and 24, got {self.decoder_layers}")
        if min(self.decoder_hidden, self.decoder_heads, self.decoder_ffn, self.early_stopping_patience) < 0:
            raise ConfigError("decoder_hidden, decoder_heads, decoder_ffn and early_stopping_patience must be >= 0")
        if self.freeze_encoder not in ("auto", "yes", "no"):
            raise ConfigError(f"freeze_encoder must be auto, yes or no, got {self.freeze_encoder!r}")
        if not 16 <= self.max_source_length <= 1024 or not 8 <= self.max_target_length <= 512:
            raise ConfigError("max_source_length must be in [16, 1024] and max_target_length in [8, 512]")
        if not 0 <= self.grounding_passages <= 8 or self.passage_chars < 20:
            raise ConfigError("grounding_passages must be in [0, 8] and passage_chars >= 20")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["generation"] = self.generation.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GeneratorConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown generator setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(data))

    @classmethod
    def from_settings(cls, settings: "Settings", **overrides: Any) -> "GeneratorConfig":
        """The generator's config from the project settings plus ``overrides`` (None = not given).

        ``base_model`` and ``seed`` come from training_config. epochs, batch_size, learning_rate,
        early_stopping_patience and max_length (-> max_source_length) are taken from training_config only
        when they differ from the CLASSIFIER's defaults (set by a file, a profile, the environment or a flag):
        the classifier's values (4 epochs, 1e-4) are wrong for a decoder trained from scratch, so left
        alone they give way to the generator's own defaults. Generation settings go in ``generation``."""
        from ...config import TrainingConfig

        t, d = settings.training, TrainingConfig()
        values: dict[str, Any] = {"base_model": t.base_model, "seed": t.seed}
        for ours, theirs in (("epochs", "epochs"), ("batch_size", "batch_size"), ("learning_rate", "learning_rate"),
                             ("early_stopping_patience", "early_stopping_patience"),
                             ("max_source_length", "max_length")):
            if getattr(t, theirs) != getattr(d, theirs):
                values[ours] = getattr(t, theirs)
        generation = dict(overrides.pop("generation", None) or {})
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls.from_dict(values)
        if generation:
            cfg.generation = GenerationSettings.from_dict({**cfg.generation.to_dict(),
                                                           **{k: v for k, v in generation.items() if v is not None}})
        return cfg


# ============================================================================ model building


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No weight-loading bars or config-overwrite notices on stderr (modeling.quiet_transformers)."""
    from ...modeling import quiet_transformers

    with quiet_transformers():
        yield


_ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "deberta", "deberta-v2",
                 "albert", "mpnet", "modernbert"}


def detect_architecture(hf_config: Any) -> str:
    """``seq2seq`` for encoder-decoder configs (T5, mT5, BART), ``causal`` for decoder-only LMs (GPT-2, ...),
    ``encoder-decoder`` for encoder-only models (BERT, XLM-R, e5), which get a decoder trained from scratch."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    if getattr(hf_config, "is_encoder_decoder", False):
        return "seq2seq"
    model_type = getattr(hf_config, "model_type", "")
    if model_type in _ENCODER_ONLY or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder-decoder"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    return "encoder-decoder"


def _special_ids(tokenizer: Any) -> dict[str, int]:
    """bos (decoder start / causal prompt start), eos, pad and unk ids from whatever the tokenizer names."""
    def first(*names: str) -> int | None:
        for name in names:
            value = getattr(tokenizer, name, None)
            if value is not None:
                return int(value)
        return None

    eos = first("eos_token_id", "sep_token_id")
    bos = first("bos_token_id", "cls_token_id")
    pad = first("pad_token_id")
    unk = first("unk_token_id")
    if eos is None:
        raise ModelError("the tokenizer has no end-of-sequence token (eos or sep); a generator needs one")
    return {"bos": bos if bos is not None else eos, "eos": eos, "pad": pad if pad is not None else eos,
            "unk": unk if unk is not None else eos}


def _encoder_input_conventions(resolved: Any) -> tuple[str, str]:
    """(query prefix, passage prefix): e5 wants "query: " / "passage: "."""
    from ..knowledge.kb import PASSAGE_PREFIXES, _input_conventions  # kb imports numpy

    query_prefix, _ = _input_conventions(resolved)
    return query_prefix, PASSAGE_PREFIXES.get(query_prefix, query_prefix)


@dataclass
class GeneratorSpec:
    """What ``generator.json`` holds: everything needed to rebuild inputs and decode outputs."""

    architecture: str
    base_model: dict[str, Any]
    encoder: dict[str, Any]       # {"saved": bool, "spec", "location", "fingerprint"} (encoder-decoder only)
    query_prefix: str
    passage_prefix: str
    max_source_length: int
    max_target_length: int
    grounding_passages: int
    passage_chars: int
    special_ids: dict[str, int]   # tokenizer ids
    restricted_vocab: bool
    grounded: bool = False
    format: str = GENERATOR_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GeneratorSpec":
        if data.get("format") != GENERATOR_FORMAT:
            raise ModelError(f"not a hotelbot generator (format {data.get('format')!r})")
        try:
            return cls(**{k: data[k] for k in (f.name for f in fields(cls)) if k in data})
        except TypeError as exc:
            raise ModelError(f"{GENERATOR_FILE} is incomplete: {exc}") from None


def _freeze(setting: str) -> bool:
    import torch

    return setting == "yes" or (setting == "auto" and not torch.cuda.is_available())


def _new_encoder_decoder(cfg: GeneratorConfig, tokenizer: Any, encoder: Any, vocab: VocabMap | None) -> Any:
    """EncoderDecoderModel: the pretrained encoder + a BERT-style decoder from scratch (see the module doc)."""
    import torch
    from transformers import BertConfig, BertLMHeadModel, EncoderDecoderModel

    enc_hidden = int(encoder.config.hidden_size)
    hidden = cfg.decoder_hidden or min(enc_hidden, 256)
    specials = _special_ids(tokenizer)
    if vocab is not None:
        dec_vocab, pad, bos, eos = len(vocab), vocab.pad, vocab.bos, vocab.eos
    else:
        dec_vocab = int(encoder.config.vocab_size)
        pad, bos, eos = specials["pad"], specials["bos"], specials["eos"]
    heads = cfg.decoder_heads or max(1, hidden // 64)
    if hidden % heads:
        raise ConfigError(f"decoder_heads ({heads}) must divide the encoder's hidden size ({hidden})")
    positions = max(128, cfg.max_target_length + 2, cfg.generation.max_new_tokens + 2)
    dec_config = BertConfig(
        vocab_size=dec_vocab, hidden_size=hidden, num_hidden_layers=cfg.decoder_layers, num_attention_heads=heads,
        intermediate_size=cfg.decoder_ffn or 4 * hidden, max_position_embeddings=positions,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout, is_decoder=True,
        add_cross_attention=True, tie_word_embeddings=True, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos,
        type_vocab_size=1)
    decoder = BertLMHeadModel(dec_config)
    source = encoder.get_input_embeddings().weight
    with torch.no_grad():
        # The decoder's (tied) embeddings start as the encoder's rows of its vocabulary; for a smaller decoder,
        # as their projection on the top principal directions (similar pieces stay similar), same spread.
        rows = torch.tensor(vocab.ids if vocab is not None else list(range(min(dec_vocab, source.shape[0]))))
        if source.shape[1] == hidden:
            decoder.get_input_embeddings().weight[: len(rows)] = source[rows].to(torch.float32)
        elif vocab is not None and source.shape[1] > hidden:
            picked = source[rows].to(torch.float32)
            centred = picked - picked.mean(0, keepdim=True)
            _, _, v = torch.linalg.svd(centred, full_matrices=False)
            projected = centred @ v[:hidden].T
            decoder.get_input_embeddings().weight[: len(rows)] = projected * (picked.std() / projected.std())
        positions_src = getattr(getattr(encoder, "embeddings", None), "position_embeddings", None)
        if positions_src is not None and positions_src.weight.shape[1] == hidden:
            n = min(positions, positions_src.weight.shape[0])
            decoder.bert.embeddings.position_embeddings.weight[:n] = positions_src.weight[:n]
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)  # adds enc_to_dec_proj when the sizes differ
    _set_generation_ids(model, bos=bos, eos=eos, pad=pad, vocab_size=dec_vocab)
    return model


def standardize_projection(model: Any, states: Sequence[Any], seed: int = 0) -> bool:
    """Initialise ``enc_to_dec_proj`` (present when the decoder's hidden size differs from the encoder's) as
    per-dimension standardisation of the encoder's states followed by a random orthogonal projection.

    Sentence encoders' token states share a large common component (e5: per-dimension means up to 0.46
    against a typical per-dimension spread of 0.12, mean-pooled messages at cosine 0.86 to each other):
    a cross-attention trained from scratch sees tiny differences between messages and learns to ignore
    them. Standardised, the differences reach the decoder at unit scale. ``states``: (tokens, dim) rows
    of the training inputs' encoder states. Returns False when the model has no projection."""
    import torch

    proj = getattr(model, "enc_to_dec_proj", None)
    if proj is None or not states:
        return False
    rows = torch.cat([s.reshape(-1, s.shape[-1]).float() for s in states])
    mean, std = rows.mean(0), rows.std(0).clamp(min=1e-4)
    generator = torch.Generator().manual_seed(seed)
    out_dim, in_dim = proj.weight.shape
    q, _ = torch.linalg.qr(torch.randn(max(out_dim, in_dim), min(out_dim, in_dim), generator=generator))
    rotation = q if out_dim >= in_dim else q.T  # (out, in) with orthonormal rows or columns
    rotation = rotation[:out_dim, :in_dim] if out_dim >= in_dim else rotation
    with torch.no_grad():
        proj.weight.copy_(rotation / std[None, :])
        proj.bias.copy_(-(proj.weight @ mean))
    return True


def _set_generation_ids(model: Any, *, bos: int, eos: int, pad: int, vocab_size: int | None = None) -> None:
    model.config.decoder_start_token_id = bos
    model.config.pad_token_id = pad
    model.config.eos_token_id = eos
    if vocab_size is not None:
        model.config.vocab_size = vocab_size
    gc = model.generation_config
    gc.decoder_start_token_id, gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = bos, bos, eos, pad


def _encoder_of(model: Any, architecture: str) -> Any | None:
    return model.get_encoder() if architecture in ("encoder-decoder", "seq2seq") else None


def _freeze_encoder(model: Any, architecture: str) -> int:
    """Freeze the encoder's own parameters (not those it shares with the decoder, e.g. T5's embeddings)."""
    encoder = _encoder_of(model, architecture)
    if encoder is None:
        return 0
    shared = {id(p) for name, p in model.named_parameters() if not name.startswith("encoder.")
              and any(p is q for q in encoder.parameters())}
    frozen = 0
    for p in encoder.parameters():
        if id(p) not in shared and p.requires_grad:
            p.requires_grad_(False)
            frozen += p.numel()
    encoder.eval()
    return frozen


def _build_new_model(cfg: GeneratorConfig, models_dir: Path, vocab_texts: Callable[[Any], list[list[int]]]
                     ) -> tuple[Any, Any, GeneratorSpec, VocabMap | None]:
    """(model, tokenizer, spec, vocab map) for a fresh training run."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from ...modeling import load_base_encoder, resolve_base_model

    resolved = resolve_base_model(cfg.base_model, Path(models_dir))
    try:
        with _quiet_transformers():
            hf_config = AutoConfig.from_pretrained(resolved.location)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load base model {cfg.base_model!r}: {str(exc).strip().splitlines()[0]}",
                         hint="offline, use a local directory or packaged:multilingual-e5-small") from None
    architecture = detect_architecture(hf_config)
    base = {"spec": cfg.base_model, "location": resolved.location, "model_type": hf_config.model_type,
            "packaged": resolved.packaged}
    vocab = None
    encoder_record: dict[str, Any] = {}
    if architecture == "encoder-decoder":
        with _quiet_transformers():
            tokenizer, encoder = load_base_encoder(resolved)
        query_prefix, passage_prefix = _encoder_input_conventions(resolved)
        specials = _special_ids(tokenizer)
        if cfg.restrict_vocab:
            vocab = VocabMap.build(vocab_texts(tokenizer), pad=specials["pad"], bos=specials["bos"],
                                   eos=specials["eos"], unk=specials["unk"],
                                   full_vocab_size=int(encoder.config.vocab_size))
        model = _new_encoder_decoder(cfg, tokenizer, encoder, vocab)
        from ..knowledge.kb import model_fingerprint  # kb imports numpy

        encoder_record = {"spec": cfg.base_model, "location": resolved.location,
                          "fingerprint": model_fingerprint(resolved.location), "packaged": resolved.packaged}
    else:
        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(resolved.location)
                auto = AutoModelForSeq2SeqLM if architecture == "seq2seq" else AutoModelForCausalLM
                model = auto.from_pretrained(resolved.location)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load base model {cfg.base_model!r} as a {architecture} LM: "
                             f"{str(exc).strip().splitlines()[0]}") from None
        query_prefix = passage_prefix = ""
        specials = _special_ids(tokenizer)
        if architecture == "seq2seq":
            start = model.config.decoder_start_token_id
            _set_generation_ids(model, bos=int(start if start is not None else specials["pad"]), eos=specials["eos"],
                                pad=specials["pad"])
        else:
            model.config.pad_token_id = specials["pad"]
            model.generation_config.pad_token_id = specials["pad"]
            model.generation_config.eos_token_id = specials["eos"]
    spec = GeneratorSpec(architecture, base, encoder_record, query_prefix, passage_prefix, cfg.max_source_length,
                         cfg.max_target_length, cfg.grounding_passages, cfg.passage_chars, specials, vocab is not None)
    return model, tokenizer, spec, vocab


# ============================================================================ save / load


def _unique_state(model: Any, skip_prefix: str | None = None) -> dict[str, Any]:
    """The state dict without tied duplicates (safetensors refuses shared tensors) and, for a referenced
    encoder, without the encoder's tensors."""
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if skip_prefix and name.startswith(skip_prefix):
            continue
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype) if tensor.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out[name] = tensor.detach().cpu().contiguous()
    return out


def save_generator(model: Any, tokenizer: Any, spec: GeneratorSpec, generation: GenerationSettings,
                   vocab: VocabMap | None, out_dir: Path) -> None:
    """Write ``generator.json``, ``generation.json``, ``vocab_map.json`` and ``model/`` into ``out_dir``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    model_dir = out_dir / MODEL_SUBDIR
    model_dir.mkdir(parents=True, exist_ok=True)
    if spec.architecture == "encoder-decoder":
        referenced = not spec.encoder.get("saved", True)
        state = _unique_state(model, "encoder." if referenced else None)
        save_file(state, str(model_dir / WEIGHTS_FILE), metadata={"format": GENERATOR_FORMAT,
                                                                 "encoder": "referenced" if referenced else "saved"})
        atomic_write_bytes(model_dir / MODEL_CONFIG_FILE, model.config.to_json_string().encode("utf-8"))
    else:
        model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    atomic_write_json(out_dir / GENERATOR_FILE, spec.to_dict())
    atomic_write_json(out_dir / GENERATION_FILE, generation.to_dict())
    if vocab is not None:
        atomic_write_json(out_dir / VOCAB_FILE, vocab.to_dict())


def _load_encoder_decoder(gen_dir: Path, spec: GeneratorSpec, models_dir: Path | None, encoder: Any | None) -> Any:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForCausalLM, EncoderDecoderConfig, EncoderDecoderModel

    from ...modeling import _no_pooler_kwargs

    model_dir = gen_dir / MODEL_SUBDIR
    try:
        config = EncoderDecoderConfig.from_dict(json.loads((model_dir / MODEL_CONFIG_FILE).read_text("utf-8")))
        state = load_file(str(model_dir / WEIGHTS_FILE))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot load the generator in {gen_dir}: {exc}") from None
    saved = spec.encoder.get("saved", True)
    with _quiet_transformers():
        if encoder is None and saved:
            encoder = AutoModel.from_config(config.encoder, **_no_pooler_kwargs(config.encoder))
        elif encoder is None:
            encoder = load_referenced_encoder(spec, models_dir)
        decoder = AutoModelForCausalLM.from_config(config.decoder)
        model = EncoderDecoderModel(config=config, encoder=encoder, decoder=decoder)
    expected = _unique_state(model, None if saved else "encoder.")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(f"the generator's weights do not fit its architecture (missing {missing[:2]}, "
                         f"unexpected {unexpected[:2]})")
    with torch.no_grad():
        result = model.load_state_dict(state, strict=False)
    left = [k for k in result.missing_keys if k in expected]
    if left or result.unexpected_keys:
        raise ModelError(f"the generator's weights did not load: {left[:2] or result.unexpected_keys[:2]}")
    _set_generation_ids(model, bos=config.decoder_start_token_id, eos=config.eos_token_id, pad=config.pad_token_id,
                        vocab_size=config.decoder.vocab_size)
    return model.eval()


def load_referenced_encoder(spec: GeneratorSpec, models_dir: Path | None) -> Any:
    """The frozen packaged encoder a generator was trained on, re-materialised and fingerprint-checked."""
    from ..knowledge.kb import model_fingerprint  # kb imports numpy
    from ...modeling import load_base_encoder, resolve_base_model

    record = spec.encoder
    location = record.get("location", "")
    target = location if location and Path(location).is_dir() else record["spec"]
    if models_dir is None and not Path(target).is_dir():
        from ...config import load_settings

        models_dir = load_settings().paths.models_dir
    resolved = resolve_base_model(target, Path(models_dir or "."))
    if model_fingerprint(resolved.location) != record.get("fingerprint"):
        raise ModelError(f"the encoder {record.get('spec')} ({resolved.location}) is not the one the generator was "
                         "trained with", hint="retrain it: hotelbot train --model-type generator")
    _, encoder = load_base_encoder(resolved)
    return encoder


def load_generator(gen_dir: Path, models_dir: Path | None = None, *, encoder: Any | None = None
                   ) -> tuple[Any, Any, GeneratorSpec, GenerationSettings, VocabMap | None]:
    """(model, tokenizer, spec, generation settings, vocab map) from a version's ``generator/``.
    ``encoder``: an already loaded copy of a referenced encoder to share (e.g. the knowledge base's)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    gen_dir = Path(gen_dir)
    try:
        spec = GeneratorSpec.from_dict(json.loads((gen_dir / GENERATOR_FILE).read_text("utf-8")))
        generation = GenerationSettings.from_dict(json.loads((gen_dir / GENERATION_FILE).read_text("utf-8")))
        vocab = (VocabMap.from_dict(json.loads((gen_dir / VOCAB_FILE).read_text("utf-8")))
                 if spec.restricted_vocab else None)
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(gen_dir / MODEL_SUBDIR))
    except FileNotFoundError as exc:
        raise ModelError(f"the generator in {gen_dir} is incomplete: {Path(exc.filename or '').name} is missing") from None
    except (OSError, ValueError, json.JSONDecodeError, ConfigError) as exc:
        raise ModelError(f"cannot load the generator in {gen_dir}: {exc}") from None
    if spec.architecture == "encoder-decoder":
        model = _load_encoder_decoder(gen_dir, spec, models_dir, encoder)
    elif spec.architecture in ARCHITECTURES:
        auto = AutoModelForSeq2SeqLM if spec.architecture == "seq2seq" else AutoModelForCausalLM
        try:
            with _quiet_transformers():
                model = auto.from_pretrained(str(gen_dir / MODEL_SUBDIR)).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the generator in {gen_dir}: {exc}") from None
    else:
        raise ModelError(f"unknown generator architecture {spec.architecture!r}")
    return model, tokenizer, spec, generation, vocab


# ============================================================================ inputs


def passages_text(hits: Sequence["SearchHit"], passage_chars: int) -> str:
    """The encoder's second segment: each passage as "HEADING: TEXT", cut to ``passage_chars``."""
    parts = []
    for hit in hits:
        c = hit.chunk
        text = (f"{c.heading}: {c.text}" if c.heading else c.text).replace("\n", " ")
        parts.append(text[:passage_chars].rstrip())
    return " ".join(parts)


class _Features:
    """Turns (message, passages, reply) into model inputs for one architecture; shared by training,
    perplexity and generation so all three see exactly the same inputs."""

    def __init__(self, tokenizer: Any, spec: GeneratorSpec, vocab: VocabMap | None) -> None:
        self.tokenizer = tokenizer
        self.spec = spec
        self.vocab = vocab
        self.ids = spec.special_ids

    def source(self, messages: Sequence[str], contexts: Sequence[str] | None) -> list[dict[str, list[int]]]:
        """Encoder inputs (encoder-decoder / seq2seq) or the prompt (causal), unpadded."""
        tok, spec = self.tokenizer, self.spec
        out = []
        for i, message in enumerate(messages):
            context = contexts[i] if contexts else ""
            if spec.architecture == "causal":  # [bos] Contexto: PASSAGES \n Cliente: MESSAGE \n Respuesta:
                head = [tok.bos_token_id] if tok.bos_token_id is not None else []
                tail = list(tok(f"Cliente: {message}\nRespuesta:", add_special_tokens=False)["input_ids"])
                tail = tail[-(spec.max_source_length - len(head)):]  # an over-long message loses its start
                budget = spec.max_source_length - len(head) - len(tail)
                ctx = list(tok(f"Contexto: {context}\n", add_special_tokens=False)["input_ids"]) if context else []
                out.append({"input_ids": head + ctx[:max(budget, 0)] + tail})
            elif context:
                enc = tok(spec.query_prefix + message, spec.passage_prefix + context, truncation="longest_first",
                          max_length=spec.max_source_length)
                out.append({"input_ids": list(enc["input_ids"])})
            else:
                enc = tok(spec.query_prefix + message, truncation=True, max_length=spec.max_source_length)
                out.append({"input_ids": list(enc["input_ids"])})
        return out

    def target(self, reply: str) -> list[int]:
        """The reply's token ids + eos, in the decoder's id space (causal: tokenizer ids)."""
        tok, spec = self.tokenizer, self.spec
        text = (" " + reply) if spec.architecture == "causal" else reply
        ids = tok(text, add_special_tokens=False, truncation=True, max_length=spec.max_target_length - 1)["input_ids"]
        ids = list(ids) + [self.ids["eos"]]
        return self.vocab.to_restricted(ids) if self.vocab is not None else ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.vocab is not None:
            ids = self.vocab.to_full(ids)
        return clean_text(self.tokenizer.decode(ids, skip_special_tokens=True))

    def example(self, source: dict[str, list[int]], target: list[int]) -> dict[str, list[int]]:
        """One training/scoring example: causal packs prompt + reply with the prompt masked."""
        if self.spec.architecture == "causal":
            ids = source["input_ids"] + target
            labels = [IGNORE] * (len(source["input_ids"]) - 1) + target + [IGNORE]
            return {"input_ids": ids, "labels": labels[: len(ids)]}
        return {**source, "labels": target}


class _Collator:
    """Pads a batch; builds decoder inputs (decoder start + target[:-1]) for encoder-decoder models and
    feeds cached encoder states when the examples carry them."""

    def __init__(self, architecture: str, pad_id: int, decoder_pad: int, decoder_start: int) -> None:
        self.architecture = architecture
        self.pad_id = pad_id
        self.decoder_pad = decoder_pad
        self.decoder_start = decoder_start

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        batch: dict[str, Any] = {}
        if "encoder_hidden" in items[0]:
            length = max(int(x["encoder_hidden"].shape[0]) for x in items)
            dim = int(items[0]["encoder_hidden"].shape[1])
            hidden = torch.zeros(len(items), length, dim, dtype=items[0]["encoder_hidden"].dtype)
            mask = torch.zeros(len(items), length, dtype=torch.long)
            for i, x in enumerate(items):
                n = int(x["encoder_hidden"].shape[0])
                hidden[i, :n] = x["encoder_hidden"]
                mask[i, :n] = 1
            batch["encoder_outputs"] = (hidden,)
            batch["attention_mask"] = mask
        else:
            length = max(len(x["input_ids"]) for x in items)
            ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
            mask = torch.zeros(len(items), length, dtype=torch.long)
            for i, x in enumerate(items):
                ids[i, : len(x["input_ids"])] = torch.tensor(x["input_ids"])
                mask[i, : len(x["input_ids"])] = 1
            batch["input_ids"] = ids
            batch["attention_mask"] = mask
        length = max(len(x["labels"]) for x in items)
        labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
        for i, x in enumerate(items):
            labels[i, : len(x["labels"])] = torch.tensor(x["labels"])
        batch["labels"] = labels
        if self.architecture != "causal":
            dec = torch.full_like(labels, self.decoder_pad)
            dec[:, 0] = self.decoder_start
            shifted = labels[:, :-1].clone()
            shifted[shifted == IGNORE] = self.decoder_pad
            dec[:, 1:] = shifted
            batch["decoder_input_ids"] = dec
            batch["decoder_attention_mask"] = (torch.arange(length)[None, :] <=
                                               (labels != IGNORE).sum(dim=1, keepdim=True) - 1).long()
        return batch


def _token_nll(model: Any, batch: Mapping[str, Any]) -> tuple[Any, Any]:
    """(summed NLL, token count) of the batch's labels; labels are aligned with the logits (causal ones
    are shifted by :meth:`_Features.example`)."""
    import torch

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    logits = model(**inputs).logits
    if logits.shape[1] != labels.shape[1]:
        raise ModelError(f"logits ({logits.shape[1]}) and labels ({labels.shape[1]}) differ in length")
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                            ignore_index=IGNORE, reduction="sum")
    return nll, (labels != IGNORE).sum()


# ============================================================================ the responder


class Responder:
    """A loaded generator (+ the version's knowledge base when it is grounded). Batch first:
    ``reply(messages)`` -> ``[{"message", "reply", "sources": [{"doc", "heading", "score"}]}]``."""

    def __init__(self, model: Any, tokenizer: Any, spec: GeneratorSpec, generation: GenerationSettings,
                 vocab: VocabMap | None = None, knowledge: "KnowledgeBase | None" = None, version: str = "") -> None:
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.generation = generation
        self.vocab = vocab
        self.knowledge = knowledge if spec.grounding_passages > 0 else None
        self.version = version
        self.features = _Features(tokenizer, spec, vocab)
        self._torch = torch
        ids = spec.special_ids
        self._collator = _Collator(spec.architecture, ids["pad"], vocab.pad if vocab else ids["pad"],
                                   int(model.config.decoder_start_token_id)
                                   if spec.architecture != "causal" and model.config.decoder_start_token_id is not None
                                   else ids["bos"])

    @classmethod
    def from_version(cls, info: "VersionInfo", models_dir: Path | None = None, *,
                     knowledge: "KnowledgeBase | None" = None) -> "Responder":
        """Load ``info``'s generator and, when it was trained grounded, its knowledge base (``knowledge``:
        that version's already loaded KnowledgeBase to share, e.g. the one ``serve`` holds for /search)."""
        gen_dir = info.path / GENERATOR_DIR
        if not (gen_dir / GENERATOR_FILE).is_file():
            raise RegistryError(f"version {info.name} has no response generator",
                                hint="train one: hotelbot train --model-type generator")
        if knowledge is not None and knowledge.version != info.name:
            raise ValueError(f"the knowledge base of {knowledge.version} is not {info.name}'s")
        encoder = None
        from ..knowledge.kb import INDEX_FILE, KNOWLEDGE_DIR, KnowledgeBase  # kb imports numpy

        try:
            spec = GeneratorSpec.from_dict(json.loads((gen_dir / GENERATOR_FILE).read_text("utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {gen_dir / GENERATOR_FILE}: {exc}") from None
        if spec.grounding_passages <= 0:
            knowledge = None
        elif knowledge is None and (info.path / KNOWLEDGE_DIR / INDEX_FILE).is_file():
            knowledge = KnowledgeBase.from_version(info, models_dir)
        if knowledge is not None:
            # The same frozen e5 embeds queries for the KB and encodes messages for the generator: load it once.
            if (not spec.encoder.get("saved", True)
                    and knowledge.model.fingerprint == spec.encoder.get("fingerprint")):
                encoder = knowledge.embedder.encoder
        model, tokenizer, spec, generation, vocab = load_generator(gen_dir, models_dir, encoder=encoder)
        return cls(model, tokenizer, spec, generation, vocab, knowledge, info.name)

    @classmethod
    def from_registry(cls, registry: "ModelRegistry", version: str | None = None, *, verify: bool = True,
                      models_dir: Path | None = None) -> "Responder":
        """``version`` None: the deployed version, else the newest (checksums checked unless ``verify`` is False)."""
        info = registry.resolve(version, verify=verify)
        return cls.from_version(info, models_dir)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def retrieve(self, messages: Sequence[str]) -> list[list["SearchHit"]]:
        if self.knowledge is None:
            return [[] for _ in messages]
        return self.knowledge.search_many(list(messages), top_k=self.spec.grounding_passages)

    def _clean(self, messages: Sequence[str]) -> list[str]:
        if isinstance(messages, str):
            raise TypeError("reply() takes a list of messages")
        cleaned = [clean_text(m) if isinstance(m, str) else "" for m in messages]
        for m, c in zip(messages, cleaned):
            if not c:
                raise DataError(f"empty message {m!r}", hint='give a guest message, e.g. "¿a qué hora cierra la piscina?"')
        return cleaned

    def _contexts(self, hits: Sequence[Sequence["SearchHit"]]) -> list[str] | None:
        if self.knowledge is None:
            return None
        return [passages_text(h, self.spec.passage_chars) for h in hits]

    def reply(self, messages: Sequence[str], *, batch_size: int = 16, hits: Sequence[Sequence["SearchHit"]] | None = None,
              **generation_overrides: Any) -> list[dict[str, Any]]:
        """One reply per message, with the knowledge-base passages it was given as ``sources``."""
        torch = self._torch
        cleaned = self._clean(messages)
        hits = list(hits) if hits is not None else self.retrieve(cleaned)
        contexts = self._contexts(hits)
        settings = (GenerationSettings.from_dict({**self.generation.to_dict(), **generation_overrides})
                    if generation_overrides else self.generation)
        kwargs = settings.kwargs()
        if self.spec.architecture == "encoder-decoder":
            limit = int(self.model.config.decoder.max_position_embeddings) - 1
            kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], limit)
            kwargs["min_new_tokens"] = min(kwargs["min_new_tokens"], kwargs["max_new_tokens"])
            if self.vocab is not None:
                kwargs["suppress_tokens"] = [self.vocab.unk, self.vocab.pad]
        sources = self.features.source(cleaned, contexts)
        replies: list[str] = []
        device = self.device
        with torch.inference_mode():
            for start in range(0, len(sources), batch_size):
                chunk = sources[start:start + batch_size]
                length = max(len(s["input_ids"]) for s in chunk)
                pad = self.spec.special_ids["pad"]
                ids = torch.full((len(chunk), length), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), length), dtype=torch.long)
                for i, s in enumerate(chunk):
                    n = len(s["input_ids"])
                    if self.spec.architecture == "causal":  # left padding: generation continues the prompt
                        ids[i, length - n:] = torch.tensor(s["input_ids"])
                        mask[i, length - n:] = 1
                    else:
                        ids[i, :n] = torch.tensor(s["input_ids"])
                        mask[i, :n] = 1
                out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
                if self.spec.architecture == "causal":
                    out = out[:, length:]
                replies.extend(self.features.decode(row.tolist()) for row in out)
        return [{"message": m, "reply": r,
                 "sources": [{"doc": h.chunk.doc, "heading": h.chunk.heading, "score": round(float(h.score), 6)}
                             for h in hs]}
                for m, r, hs in zip(messages, replies, hits)]

    def score(self, messages: Sequence[str], replies: Sequence[str], *, batch_size: int = 16,
              hits: Sequence[Sequence["SearchHit"]] | None = None) -> tuple[float, int]:
        """(summed NLL, token count) of ``replies`` given ``messages`` (teacher forcing): perplexity's parts.
        With a restricted vocabulary, reply pieces outside it count as the unknown token."""
        torch = self._torch
        cleaned = self._clean(messages)
        hits = list(hits) if hits is not None else self.retrieve(cleaned)
        sources = self.features.source(cleaned, self._contexts(hits))
        examples = [self.features.example(s, self.features.target(clean_text(r))) for s, r in zip(sources, replies)]
        total, count = 0.0, 0
        device = self.device
        with torch.inference_mode():
            for start in range(0, len(examples), batch_size):
                batch = self._collator(examples[start:start + batch_size])
                batch = {k: v.to(device) for k, v in batch.items()}
                nll, n = _token_nll(self.model, batch)
                total += float(nll)
                count += int(n)
        return total, count


# ============================================================================ evaluation


def relevance_embedder(spec: GeneratorSpec, knowledge: "KnowledgeBase | None", models_dir: Path, *,
                       frozen_encoder: Any = None, tokenizer: Any = None) -> "Embedder":
    """What relevance and the retrieval baseline embed with: the knowledge base's embedding model; without
    one, the generator's base encoder (mean-pooled) for the encoder-decoder architecture (the packaged e5 by
    default), else the packaged multilingual-e5-small. ``frozen_encoder`` (+ its ``tokenizer``): an
    already loaded, UNCHANGED copy of that base encoder to reuse instead of loading it again."""
    from ..knowledge.kb import MAX_EMBED_TOKENS, Embedder, EmbeddingModel  # kb imports numpy

    if knowledge is not None:
        return knowledge.embedder
    if spec.architecture == "encoder-decoder":
        record = spec.encoder
        if frozen_encoder is not None and tokenizer is not None:
            limit = min(MAX_EMBED_TOKENS, int(getattr(frozen_encoder.config, "max_position_embeddings", 512)))
            model = EmbeddingModel(record["spec"], record["location"], spec.query_prefix, spec.passage_prefix, "mean",
                                   limit, int(frozen_encoder.config.hidden_size), record["fingerprint"])
            return Embedder(model, tokenizer, frozen_encoder)
        target = record.get("location") if Path(record.get("location", "")).is_dir() else record.get("spec")
        with _quiet_transformers():
            return Embedder.load(target, models_dir)
    with _quiet_transformers():
        return Embedder.load(DEFAULT_RELEVANCE_MODEL, models_dir)


def evaluate_generator(responder: Responder, validation: Sequence[ReplyPair], train: Sequence[ReplyPair], *,
                       embedder: "Embedder", batch_size: int = 16, samples: int = MAX_SAMPLES) -> dict[str, Any]:
    """Generator metrics on ``validation`` beside the retrieval-only baseline, computed in the same run.

    BLEU: sacrebleu corpus BLEU (0..100). ROUGE-L: mean F1 (0..1). Perplexity: exp of the mean token NLL
    of the reference replies. Relevance: mean cosine of the embeddings (``embedder``, kind "query") of the
    generated and the reference reply. Baseline: the reply of the training message nearest to the
    validation message by embedding cosine."""
    import numpy as np

    if not validation or not train:
        raise DataError("evaluation needs non-empty training and validation pairs")
    messages = [p.message for p in validation]
    references = [p.reply for p in validation]
    start = time.monotonic()
    hits = responder.retrieve(messages)
    generated = responder.reply(messages, batch_size=batch_size, hits=hits)
    generation_seconds = time.monotonic() - start
    hypotheses = [g["reply"] for g in generated]
    nll, tokens = responder.score(messages, references, batch_size=batch_size, hits=hits)

    train_vecs = embedder.embed([p.message for p in train], kind="query")
    val_vecs = embedder.embed(messages, kind="query")
    nearest = np.argmax(val_vecs @ train_vecs.T, axis=1)
    baseline = [train[int(i)].reply for i in nearest]
    ref_vecs = embedder.embed(references, kind="query")
    gen_vecs = embedder.embed([h if h else "-" for h in hypotheses], kind="query")
    base_vecs = embedder.embed(baseline, kind="query")

    def block(outputs: Sequence[str], vecs: Any) -> dict[str, float]:
        cos = np.sum(vecs * ref_vecs, axis=1)
        return {"bleu": round(corpus_bleu(outputs, references), 4),
                "rouge_l": round(corpus_rouge_l(outputs, references), 6),
                "relevance": round(float(np.mean(cos)), 6),
                "exact_match": round(sum(o == r for o, r in zip(outputs, references)) / len(references), 6)}

    gen_block = block(hypotheses, gen_vecs)
    gen_block.update({"perplexity": round(perplexity(nll, tokens), 4), "reference_tokens": tokens,
                      "empty_replies": sum(not h for h in hypotheses),
                      "mean_reply_chars": round(sum(map(len, hypotheses)) / len(hypotheses), 1),
                      "seconds_per_reply": round(generation_seconds / len(hypotheses), 4)})
    if responder.vocab is not None:
        ref_ids = [responder.tokenizer(r, add_special_tokens=False)["input_ids"] for r in references]
        total = sum(len(ids) for ids in ref_ids)
        gen_block["reference_oov_rate"] = round(
            sum(1 for ids in ref_ids for i in ids if not responder.vocab.covers([i])) / max(total, 1), 6)
    grounding = None
    if responder.knowledge is not None:
        with_source = [(p, h) for p, h in zip(validation, hits) if p.source]
        grounding = {"passages": responder.spec.grounding_passages,
                     "source_hit_rate": round(sum(any(x.chunk.doc == p.source for x in h) for p, h in with_source)
                                              / max(len(with_source), 1), 6),
                     "pairs_with_source": len(with_source)}
    return {
        "num_examples": len(validation),
        "generator": gen_block,
        "retrieval_baseline": block(baseline, base_vecs),
        "bleu_signature": bleu_signature(),
        "relevance_model": embedder.model.spec,
        "grounding": grounding,
        "generation": responder.generation.to_dict(),
        "samples": [{"message": m, "reference": r, "generated": g["reply"], "baseline": b, "sources": g["sources"]}
                    for m, r, g, b in list(zip(messages, references, generated, baseline))[:samples]],
    }


def evaluate_version(info: "VersionInfo", *, models_dir: Path | None = None, data: Path | None = None,
                     limit: int | None = None) -> dict[str, Any]:
    """Re-score a version's generator on its stored validation split (or ``data``: a prepared directory
    or a .jsonl file, all of which is scored) against its stored training split. For ``hotelbot validate``."""
    gen_dir = info.path / GENERATOR_DIR
    responder = Responder.from_version(info, models_dir)
    train = read_pairs_jsonl(gen_dir / DATA_SUBDIR / TRAIN_FILE)
    if data is None:
        validation = read_pairs_jsonl(gen_dir / DATA_SUBDIR / VALIDATION_FILE)
    elif Path(data).is_dir():
        validation = read_prepared_replies(Path(data)).validation
    else:
        validation, _ = read_reply_file(Path(data))
    if limit:
        validation = validation[:limit]
    if models_dir is None:
        from ...config import load_settings

        models_dir = load_settings().paths.models_dir
    embedder = relevance_embedder(responder.spec, responder.knowledge, Path(models_dir))
    return {"version": info.name, **evaluate_generator(responder, validation, train, embedder=embedder)}


# ============================================================================ training


@dataclass
class GeneratorFit(FitStats):
    model: Any
    tokenizer: Any
    spec: GeneratorSpec
    vocab: VocabMap | None
    cached_encoder: bool
    frozen_encoder: bool = False


def _make_trainer_class(pretrained_ids: set[int], pretrained_lr: float):
    from transformers import Trainer

    class GeneratorTrainer(Trainer):
        """Token-level cross-entropy on aligned labels; a second learning rate for pretrained weights."""

        loss_is_scaled_for_ga = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            nll, count = _token_nll(model, inputs)
            loss = nll / count.clamp(min=1)
            return (loss, {"loss": loss}) if return_outputs else loss

        def create_optimizer(self, model=None):
            import torch

            if self.optimizer is None:
                model = self.model if model is None else model
                decay = set(self.get_decay_parameter_names(model))
                groups: dict[tuple[bool, bool], list[Any]] = {}
                for name, param in model.named_parameters():
                    if param.requires_grad:
                        groups.setdefault((id(param) in pretrained_ids, name in decay), []).append(param)
                self.optimizer = torch.optim.AdamW(
                    [{"params": params, "lr": pretrained_lr if pretrained else self.args.learning_rate,
                      "weight_decay": self.args.weight_decay if decays else 0.0}
                     for (pretrained, decays), params in groups.items()],
                    lr=self.args.learning_rate)
            return self.optimizer

    return GeneratorTrainer


def _encode_cached(model: Any, sources: Sequence[dict[str, list[int]]], pad_id: int, batch_size: int,
                   on_batch: Callable[[int, int], None] | None = None) -> list[Any]:
    """The frozen encoder's last hidden states per example (unpadded, float32, CPU), computed once."""
    import torch

    encoder = model.get_encoder().eval()
    device = next(encoder.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]["input_ids"]))
    out: list[Any] = [None] * len(sources)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for n, batch in enumerate(batches, 1):
            length = max(len(sources[i]["input_ids"]) for i in batch)
            ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), length), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = sources[i]["input_ids"]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            hidden = encoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            for row, i in enumerate(batch):
                out[i] = hidden[row, : len(sources[i]["input_ids"])].float().cpu().clone()
            if on_batch is not None:
                on_batch(n, len(batches))
    return out


class _ListDataset:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def fit_generator(cfg: GeneratorConfig, train: Sequence[ReplyPair], validation: Sequence[ReplyPair],
                  models_dir: Path, *, knowledge: "KnowledgeBase | None" = None, listener: "Listener | None" = None,
                  tracker: Any = None, monitor: Any = None) -> tuple[GeneratorFit, list[list["SearchHit"]]]:
    """Fine-tune one generator (no registry involved). Returns the fit and the validation pairs' retrieved
    passages (reused by the evaluation)."""
    import tempfile

    from transformers import PrinterCallback, TrainerCallback, set_seed

    emit = emitter(listener)
    monitor = monitor or SystemMonitor()
    set_seed(cfg.seed)
    grounded = knowledge is not None and cfg.grounding_passages > 0
    train_hits: list[list[Any]] = [[] for _ in train]
    val_hits: list[list[Any]] = [[] for _ in validation]
    if grounded:
        emit(TrainingEvent("status", message=f"retrieving {cfg.grounding_passages} passage(s) per message from the "
                                             f"knowledge base of {knowledge.version}"))
        train_hits = knowledge.search_many([p.message for p in train], top_k=cfg.grounding_passages)
        val_hits = knowledge.search_many([p.message for p in validation], top_k=cfg.grounding_passages)

    def vocab_texts(tokenizer: Any) -> list[list[int]]:
        texts = [p.reply for p in train]
        if grounded:
            texts += [c.text for c in knowledge.chunk_list]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    emit(TrainingEvent("status", message=f"loading the base model {cfg.base_model}"))
    model, tokenizer, spec, vocab = _build_new_model(cfg, models_dir, vocab_texts)
    spec.grounded = grounded
    if not grounded:
        spec.grounding_passages = 0
    architecture = spec.architecture
    freeze = _freeze(cfg.freeze_encoder) and architecture != "causal"
    frozen = _freeze_encoder(model, architecture) if freeze else 0
    encoder = _encoder_of(model, architecture)
    if architecture == "encoder-decoder" and not freeze:
        from ...modeling import should_freeze

        if should_freeze("auto", encoder):  # a 250k-row embedding matrix: frozen, like the classifier's
            weight = encoder.get_input_embeddings().weight
            weight.requires_grad_(False)
            frozen += weight.numel()
    if architecture == "encoder-decoder":
        spec.encoder["saved"] = not (freeze and spec.encoder.get("packaged"))
    # Pretrained weights (a base encoder, a whole hub LM) get pretrained_learning_rate; new ones learning_rate.
    pretrained_ids = {id(p) for p in (encoder.parameters() if architecture == "encoder-decoder" else model.parameters())}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    features = _Features(tokenizer, spec, vocab)

    def contexts(hits: Sequence[Sequence[Any]]) -> list[str] | None:
        return [passages_text(h, cfg.passage_chars) for h in hits] if grounded else None

    train_src = features.source([p.message for p in train], contexts(train_hits))
    val_src = features.source([p.message for p in validation], contexts(val_hits))
    train_items = [features.example(s, features.target(p.reply)) for s, p in zip(train_src, train)]
    val_items = [features.example(s, features.target(p.reply)) for s, p in zip(val_src, validation)]
    cached = freeze and architecture != "causal"
    if cached:
        emit(TrainingEvent("status", message="encoding the messages once with the frozen encoder"))
        pad = spec.special_ids["pad"]
        for items, src in ((train_items, train_src), (val_items, val_src)):
            states = _encode_cached(model, src, pad, max(cfg.batch_size, 32))
            for item, state in zip(items, states):
                item.pop("input_ids")
                item["encoder_hidden"] = state

    if architecture == "encoder-decoder" and getattr(model, "enc_to_dec_proj", None) is not None:
        sample = [item["encoder_hidden"] for item in train_items] if cached else _encode_cached(
            model, train_src[:256], spec.special_ids["pad"], max(cfg.batch_size, 32))
        standardize_projection(model, sample, cfg.seed)
    ids = spec.special_ids
    decoder_start = int(model.config.decoder_start_token_id) if architecture != "causal" else ids["bos"]
    collator = _Collator(architecture, ids["pad"], vocab.pad if vocab else ids["pad"], decoder_start)

    class NegLoss(TrainerCallback):
        """Lower loss is better; BestModelCallback keeps the highest ``eval_neg_loss``."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics is not None and "eval_loss" in metrics:
                metrics["eval_neg_loss"] = -float(metrics["eval_loss"])
                metrics["eval_perplexity"] = math.exp(min(float(metrics["eval_loss"]), 50.0))

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hotelbot-generator-") as scratch:
        args = training_arguments(cfg, scratch, len(train_items), logs_per_epoch=1, remove_unused_columns=False,
                                  prediction_loss_only=True, max_grad_norm=1.0)
        callbacks = progress_callbacks(listener, tracker, monitor, "neg_loss", cfg.early_stopping_patience, cfg.epochs)
        callbacks.insert(1, NegLoss())
        trainer_cls = _make_trainer_class(pretrained_ids, cfg.pretrained_learning_rate)
        trainer = trainer_cls(model=model, args=args, train_dataset=_ListDataset(train_items),
                              eval_dataset=_ListDataset(val_items), data_collator=collator, callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)  # raw log dicts on stdout would break --json
        with warnings_silenced():
            trainer.train()
        best = callbacks[-1]
        best.restore(model)
    duration = time.monotonic() - start
    model.eval()
    history = [{k: v for k, v in h.items() if k != "neg_loss"} for h in best.history]
    fit = GeneratorFit(model=model, tokenizer=tokenizer, spec=spec, vocab=vocab, cached_encoder=cached,
                       frozen_encoder=freeze and architecture == "encoder-decoder",
                       **FitStats.of(trainer, history, best.best_epoch, duration, frozen, trainable))
    return fit, val_hits


@contextlib.contextmanager
def warnings_silenced() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*use_cache=True.*")
        yield


def generator_result(info: "VersionInfo", metrics: dict[str, Any], duration: float, run_id: str | None,
                     history: list[dict[str, Any]], carried: dict[str, Any]) -> ComponentResult:
    """The generator's training as the one result type: its JSON document and the line the CLI shows."""
    g, b = metrics["generator"], metrics["retrieval_baseline"]
    document = {"version": info.name, "component": COMPONENT, "skipped": False,
                "duration_seconds": round(duration, 2), "mlflow_run_id": run_id,
                "metrics": {k: g[k] for k in ("bleu", "rouge_l", "perplexity", "relevance", "exact_match")},
                "retrieval_baseline": {k: b[k] for k in ("bleu", "rouge_l", "relevance", "exact_match")},
                "grounding": metrics.get("grounding"), "history": history,
                "carried_from": carried.get("from"), "carried_components": carried.get("components")}
    line = (f"trained generator {info.name} in {duration:.1f}s: BLEU {g['bleu']:.2f} ROUGE-L {g['rouge_l']:.4f} "
            f"perplexity {g['perplexity']:.2f} relevance {g['relevance']:.4f} (retrieval-only baseline: "
            f"BLEU {b['bleu']:.2f} ROUGE-L {b['rouge_l']:.4f} relevance {b['relevance']:.4f})")
    return ComponentResult(COMPONENT, info, metrics, duration, run_id, history, document, [line],
                           score=("generator_relevance", float(g["relevance"])), carried_from=carried.get("from"),
                           carried_components=list(carried.get("components") or []))


def _source_knowledge(registry: "ModelRegistry", source: str | None, models_dir: Path
                      ) -> tuple["VersionInfo | None", "KnowledgeBase | None"]:
    """The source version and its knowledge base (None without one); the KB's files are checked first, so
    a corrupt index never grounds a training run (carry_over checks them again when copying)."""
    from ..knowledge.kb import INDEX_FILE, KNOWLEDGE_DIR, KnowledgeBase  # kb imports numpy

    src = source_version(registry, source)
    if src is None or not (src.path / KNOWLEDGE_DIR / INDEX_FILE).is_file():
        return src, None
    bad = [p for p in registry.verify(src.name) if p.startswith(f"{src.name}/{KNOWLEDGE_DIR}/")]
    if bad:
        raise IntegrityError(f"the knowledge base of {src.name} is corrupt: {bad[0]}",
                             hint="deploy or roll back to an intact version first")
    return src, KnowledgeBase.from_version(src, models_dir)


def train_generator(settings: "Settings", data_path: Path, registry: "ModelRegistry",
                    listener: "Listener | None" = None, *, force: bool = False, source: str | None = None,
                    config: GeneratorConfig | None = None) -> ComponentResult:
    """Train the response generator on ``data_path`` (a .jsonl file of pairs or a prepared directory) and
    publish a new version carrying over the other components of ``source`` (default: deployed, else newest).

    ``config`` defaults to :meth:`GeneratorConfig.from_settings`. When the source version has a knowledge
    base (and ``grounding_passages`` > 0) the generator is trained grounded on its passages. Intents must
    be ones the source version's classifier knows (when it has one). One MLflow run (experiment
    ``hotelbot-generator``). Raises AlreadyTrainedError when a version's generator was trained on the same
    data, config and knowledge base (``force`` trains anyway)."""
    emit = emitter(listener)
    cfg = config or GeneratorConfig.from_settings(settings)
    models_dir = settings.paths.models_dir
    src, knowledge = _source_knowledge(registry, source, models_dir)
    known = (src.metadata.get("labels") if src is not None and isinstance(src.metadata.get("labels"), list) else None)
    prepared = load_reply_data(Path(data_path), settings.data, known)
    kb_fingerprint = (knowledge.manifest.get("fingerprint") if knowledge is not None and cfg.grounding_passages
                      else None)
    config_record = {"generator_config": cfg.to_dict(), "knowledge_fingerprint": kb_fingerprint}
    params = {**{k: v for k, v in cfg.to_dict().items() if k != "generation"},
              **{f"generation_{k}": v for k, v in cfg.generation.to_dict().items()},
              "knowledge_version": knowledge.version if knowledge else "", "source_version": src.name if src else ""}
    with training_run(settings, registry, COMPONENT, EXPERIMENT, prepared, config_record, params,
                       force=force) as (tracker, monitor):
        fit, val_hits = fit_generator(cfg, prepared.train, prepared.validation, models_dir, knowledge=knowledge,
                                      listener=listener, tracker=tracker, monitor=monitor)
        emit(TrainingEvent("status", message=f"generating {len(prepared.validation)} validation replies and the "
                                             "retrieval-only baseline"))
        responder = Responder(fit.model, fit.tokenizer, fit.spec, cfg.generation, fit.vocab,
                              knowledge if fit.spec.grounded else None)
        embedder = relevance_embedder(fit.spec, responder.knowledge, models_dir, tokenizer=fit.tokenizer,
                                      frozen_encoder=fit.model.get_encoder() if fit.frozen_encoder else None)
        with warnings_silenced():
            metrics = evaluate_generator(responder, prepared.validation, prepared.train, embedder=embedder)
        g, b = metrics["generator"], metrics["retrieval_baseline"]
        tracker.log_metrics({**{f"final_{k}": g[k] for k in ("bleu", "rouge_l", "perplexity", "relevance")},
                             **{f"baseline_{k}": b[k] for k in ("bleu", "rouge_l", "relevance")}}, step=fit.steps)

        summary = {
            "architecture": fit.spec.architecture,
            "base_model": fit.spec.base_model,
            "encoder_saved": fit.spec.encoder.get("saved", True),
            "decoder_vocab_size": len(fit.vocab) if fit.vocab is not None else None,
            "grounded": fit.spec.grounded,
            "knowledge_version": knowledge.version if fit.spec.grounded else None,
            "metrics": {**{k: g[k] for k in ("bleu", "rouge_l", "perplexity", "relevance", "exact_match")},
                        "best_epoch": fit.best_epoch,
                        "baseline": {k: b[k] for k in ("bleu", "rouge_l", "relevance", "exact_match")},
                        "grounding_source_hit_rate": (metrics.get("grounding") or {}).get("source_hit_rate")},
            "generation": cfg.generation.to_dict(),
            "dataset_fingerprint": prepared.fingerprint,
            "dataset": {"source": prepared.summary.get("source"), "train_size": len(prepared.train),
                        "validation_size": len(prepared.validation)},
            "config": config_record,
            "training": training_summary(fit, cached_encoder_states=fit.cached_encoder),
            "mlflow_run_id": tracker.run_id,
        }

        def write(target: Path) -> None:
            save_generator(fit.model, fit.tokenizer, fit.spec, cfg.generation, fit.vocab, target)
            write_prepared_replies(prepared, target / DATA_SUBDIR)

        info, carried = publish_component(registry, COMPONENT, "response-generator",
                                          source=src.name if src else None, write=write, metrics=metrics,
                                          history={"epochs": fit.history, "log": fit.log_history},
                                          summary=summary, monitor=monitor, tracker=tracker, listener=listener)
    log.info("trained generator %s: BLEU %.2f ROUGE-L %.4f (baseline BLEU %.2f) in %.1fs", info.name, g["bleu"],
             g["rouge_l"], b["bleu"], fit.duration)
    emit(TrainingEvent("end", fit.steps, fit.steps, fit.epochs_run, cfg.epochs,
                       metrics={"bleu": g["bleu"], "rouge_l": g["rouge_l"], "perplexity": g["perplexity"]},
                       message=info.name))
    return generator_result(info, metrics, fit.duration, tracker.run_id, fit.history, carried)


__all__ = [
    "GenerationSettings", "GeneratorConfig", "GeneratorSpec", "PreparedReplies", "ReplyPair",
    "Responder", "VocabMap", "corpus_bleu", "corpus_rouge_l", "detect_architecture", "evaluate_generator",
    "evaluate_version", "fit_generator", "load_generator", "load_reply_data", "perplexity", "prepare_replies",
    "read_reply_file", "rouge_l", "save_generator", "split_pairs", "train_generator", "write_prepared_replies",
]
