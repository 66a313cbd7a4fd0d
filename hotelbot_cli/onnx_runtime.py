"""ONNX export, the onnxruntime predictor, and the choice of the runtime a version serves with.

At train time :func:`export_onnx` writes, next to the PyTorch weights of a *staged* version (the
weights stay the source of truth)::

    model/model.onnx(.data)       encoder + pooling + head in one graph: (input_ids, attention_mask) ->
                                  logits, batch and sequence axes dynamic; exported with eager attention
                                  and fused by onnxruntime's transformer optimizer (Attention,
                                  EmbedLayerNormalization, SkipLayerNormalization, BiasGelu); the word
                                  embeddings live in the memory-mapped .data file
    model/model.int8.onnx(.data)  the same graph, dynamic int8 quantization with per-channel weights,
                                  except the MatMuls fed by outlier activations (kept fp32). If int8
                                  alone misses the accuracy gate, its close calls (top-2 gap or distance
                                  to the out-of-scope threshold under ``recheck_margin``) re-run on fp32
    model/tokenizer.unigram.bin   for a Unigram tokenizer (e5): a sorted index of its pieces that loads in
                                  milliseconds (see :class:`UnigramSubsetEncoder`)
    model/runtime.json            what was measured (accuracy on the validation split, single-text
                                  latency) and the runtime chosen: the fastest of torch / onnx-fp32 /
                                  onnx-int8 whose accuracy is within ``tolerance_points`` of PyTorch's

:class:`OnnxPredictor` has the interface of :class:`~hotelbot_cli.inference.Predictor` but needs only
onnxruntime, tokenizers and numpy: importing this module imports none of torch, transformers or
onnxruntime (those are imported inside the functions that need them), so ``hotelbot predict`` and
``hotelbot serve`` start without torch when a version carries an ONNX model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .data import OUT_OF_SCOPE, clean_text
from .errors import ConfigError, DataError, IntegrityError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from .inference import Prediction
    from .registry import VersionInfo

log = logging.getLogger("hotelbot.onnx")

MODEL_SUBDIR = "model"
ONNX_FP32_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
RUNTIME_FILE = "runtime.json"
CLASSIFIER_FILE = "classifier.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_INDEX_FILE = "tokenizer.unigram.bin"
TOKENIZER_FULL = "full"
TOKENIZER_SUBSET = "unigram-subset"
WORD_CACHE_SIZE = 100_000
EXTERNAL_DATA_THRESHOLD = 1 << 20  # initializers of 1 MiB or more go to model*.onnx.data (memory-mapped)
RUNTIME_ENV = "HOTELBOT_RUNTIME"
THREADS_ENV = "HOTELBOT_ONNX_THREADS"
RECHECK_ENV = "HOTELBOT_RUNTIME_RECHECK_MARGIN"
SPIN_ENV = "HOTELBOT_ONNX_SPIN"
TORCH = "torch"
ONNX_FP32 = "onnx-fp32"
ONNX_INT8 = "onnx-int8"
RUNTIMES = (TORCH, ONNX_FP32, ONNX_INT8)
ONNX_FILES = {ONNX_FP32: ONNX_FP32_FILE, ONNX_INT8: ONNX_INT8_FILE}
DEFAULT_TOLERANCE_POINTS = 0.5
# When int8 alone misses the gate, its answers this close (in probability) to changing are re-run on
# fp32 (Recheck). 0.3: on four e5 trainings every int8/fp32 disagreement on the validation split had a
# margin below 0.27 (README "Fast inference").
DEFAULT_RECHECK_MARGIN = 0.3
# Weight MatMuls whose input's max|x| / rms(x) reaches OUTLIER_RATIO stay fp32 in the int8 graph (at
# most OUTLIER_MAX_SHARE of them); see _outlier_inputs. 60: on e5-small the inputs of the FFN output
# projections of layers 0, 1, 2, 4 and 5 measure 64-107, every other input 4-52.
OUTLIER_RATIO = 60.0
OUTLIER_MAX_SHARE = 0.25
SPEED_TIE = 0.10  # latencies within 10 % of the fastest count as equally fast
OPSET = 17
RUNTIME_FORMAT = "hotelbot-runtime/1"
# fp32 ONNX must reproduce PyTorch's probabilities; past this the export is wrong and is not used.
FP32_MAX_PROB_DIFF = 1e-3
PROBE_TEXTS = ("hola", "quiero ver las noticias", "¿a qué hora es el desayuno?",
               "la clave del wifi no funciona en mi habitación, ¿me ayudan por favor?")


# ------------------------------------------------------------------ runtime choice


def requested_runtime(explicit: str | None = None) -> str | None:
    """The runtime asked for by ``explicit`` or ``HOTELBOT_RUNTIME`` (None: use what the version says)."""
    value = explicit if explicit else os.environ.get(RUNTIME_ENV, "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in RUNTIMES:
        raise ConfigError(f"{RUNTIME_ENV} must be one of {', '.join(RUNTIMES)} (or auto), got {value!r}")
    return value


def read_runtime_spec(model_dir: Path) -> dict[str, Any] | None:
    """``model/runtime.json`` as a dict, or None when the version has no ONNX export."""
    try:
        spec = json.loads((Path(model_dir) / RUNTIME_FILE).read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{Path(model_dir) / RUNTIME_FILE} is unreadable: {exc}") from None
    if not isinstance(spec, dict) or spec.get("runtime") not in RUNTIMES:
        raise ModelError(f"{Path(model_dir) / RUNTIME_FILE} names no known runtime")
    return spec


def choose_runtime(measurements: dict[str, dict[str, Any]], tolerance_points: float = DEFAULT_TOLERANCE_POINTS) -> str:
    """The fastest runtime whose accuracy is within ``tolerance_points`` (percentage points) of torch's.

    ``measurements[name]`` holds ``accuracy`` (0..1 or None), ``latency_ms_p50`` and optionally
    ``usable`` (False: never chosen, e.g. an fp32 export that does not reproduce PyTorch). Torch is the
    reference and always qualifies. Without a torch accuracy (no validation data), only the numerically
    checked fp32 export can replace torch: int8 changes predictions, and nothing measured says by how much.
    """
    if tolerance_points < 0:
        raise ConfigError(f"tolerance_points must be >= 0, got {tolerance_points}")
    candidates = [TORCH] + [name for name in (ONNX_FP32, ONNX_INT8) if _qualifies(measurements, name, tolerance_points)]

    def speed(name: str) -> float:
        value = (measurements.get(name) or {}).get("latency_ms_p50")
        return float("inf") if value is None else float(value)

    # Latencies within SPEED_TIE of the fastest are a tie (timing noise on a shared machine): the
    # smaller model (int8, then fp32) wins it: less memory, faster to load.
    fastest = min(speed(n) for n in candidates)
    order = {ONNX_INT8: 0, ONNX_FP32: 1, TORCH: 2}
    return min((n for n in candidates if speed(n) <= fastest * (1.0 + SPEED_TIE)), key=lambda n: (order[n], speed(n)))


def _qualifies(measurements: dict[str, dict[str, Any]], name: str, tolerance_points: float) -> bool:
    """Whether runtime ``name`` may replace torch: usable, and its accuracy within the gate (see choose_runtime)."""
    reference = (measurements.get(TORCH) or {}).get("accuracy")
    m = measurements.get(name)
    if not m or m.get("usable") is False:
        return False
    if reference is None or m.get("accuracy") is None:
        return name == ONNX_FP32 and reference is None
    return 100.0 * (reference - m["accuracy"]) <= tolerance_points + 1e-9


def describe_choice(spec: dict[str, Any]) -> str:
    """One line on the runtime a version got, and why int8 was not chosen when it was not (its accuracy
    against torch's and the gate), since that decides how fast `serve` is."""
    runtimes = spec.get("runtimes") or {}
    chosen = spec.get("runtime") or TORCH
    torch_acc = (runtimes.get(TORCH) or {}).get("accuracy")

    def delta(name: str) -> str:
        acc = (runtimes.get(name) or {}).get("accuracy")
        return "" if acc is None or torch_acc is None else f"{100 * (acc - torch_acc):+.2f} points vs torch"

    facts = []
    ms = (runtimes.get(chosen) or {}).get("latency_ms_p50")
    if ms is not None:
        facts.append(f"{ms:.1f} ms per text")
    if chosen != TORCH and delta(chosen):
        facts.append(delta(chosen))
    recheck = (runtimes.get(chosen) or {}).get("recheck") if chosen == ONNX_INT8 else None
    if recheck and recheck.get("rate") is not None:
        facts.append(f"{100 * recheck['rate']:.1f}% of validation texts were close calls re-run on fp32")
    line = f"runtime {chosen}" + (f" ({', '.join(facts)})" if facts else "")
    int8 = runtimes.get(ONNX_INT8)
    if chosen != ONNX_INT8 and int8 and int8.get("accuracy") is not None and torch_acc is not None:
        line += (f"; int8 was {delta(ONNX_INT8)}, outside the {spec.get('tolerance_points')}-point gate, so serve "
                 f"runs {chosen} (slower); HOTELBOT_RUNTIME_TOLERANCE widens the gate")
    return line


# ------------------------------------------------------------------ tokenizer without transformers


@dataclass
class RuntimeClassifierConfig:
    """The parts of ``classifier.json`` that inference needs (modeling.ClassifierConfig imports torch)."""

    labels: list[str]
    pooling: str = "mean"
    query_prefix: str = ""
    max_length: int = 64
    oos_threshold: float | None = None
    base_model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path) -> "RuntimeClassifierConfig":
        try:
            data = json.loads(Path(path).read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("labels"), list) or not data["labels"]:
            raise ModelError(f"{path} has no labels")
        known = {"labels", "pooling", "query_prefix", "max_length", "oos_threshold", "base_model"}
        return cls(**{k: data[k] for k in known if k in data}, extra={k: v for k, v in data.items() if k not in known})

    @property
    def id_to_intent(self) -> dict[int, str]:
        return dict(enumerate(self.labels))


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):  # an AddedToken written as {"content": ..., ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_hf_config(model_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(model_dir) / TOKENIZER_CONFIG_FILE).read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _configure(tokenizer: Any, hf: dict[str, Any], max_length: int, token_to_id: Any) -> None:
    """Truncation and padding as ``tokenizer(texts, padding=True, truncation=True, max_length=...)``:
    pad to the longest text of the batch, truncate longest_first, both on the right unless
    tokenizer_config.json says otherwise."""
    padding = tokenizer.padding or {}
    pad_token = _token_content(hf.get("pad_token")) or padding.get("pad_token")
    pad_id = token_to_id(pad_token) if pad_token is not None else None
    if pad_id is None:
        pad_id = padding.get("pad_id", 0)
        pad_token = padding.get("pad_token", "[PAD]")
    tokenizer.enable_truncation(max_length=int(max_length), stride=0, strategy="longest_first",
                                direction=hf.get("truncation_side", "right"))
    tokenizer.enable_padding(direction=hf.get("padding_side", "right"), pad_id=int(pad_id), pad_type_id=0,
                             pad_token=pad_token, length=None, pad_to_multiple_of=None)


def load_fast_tokenizer(model_dir: Path, max_length: int) -> Any:
    """The saved ``tokenizer.json`` as a ``tokenizers.Tokenizer`` configured to give the ids the saved HF
    tokenizer gives for ``tokenizer(texts, padding=True, truncation=True, max_length=max_length)``."""
    from tokenizers import Tokenizer

    model_dir = Path(model_dir)
    try:
        tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file
        raise ModelError(f"cannot load {model_dir / TOKENIZER_FILE}: {exc}") from None
    _configure(tokenizer, _read_hf_config(model_dir), max_length, tokenizer.token_to_id)
    return tokenizer


class FullEncoder:
    """Texts -> (input_ids, attention_mask) with the whole ``tokenizers.Tokenizer``."""

    kind = TOKENIZER_FULL

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, texts: Sequence[str]) -> tuple[Any, Any]:
        import numpy as np

        batch = self.tokenizer.encode_batch(list(texts))
        return (np.array([e.ids for e in batch], dtype=np.int64),
                np.array([e.attention_mask for e in batch], dtype=np.int64))


class UnigramSubsetEncoder:
    """The ids of the whole Unigram tokenizer, without building its 250k-piece trie.

    Loading e5's tokenizer.json (250k SentencePiece pieces) with ``tokenizers`` costs ~0.7 s of CPU to
    build the trie and ~0.3 s to free it: most of a cold ``hotelbot predict``. A Unigram tokenizer
    segments each pre-tokenized word by Viterbi over the vocabulary pieces that occur in that word, and
    scores an unknown character with ``min(all scores) - 10``. So for a given batch, a Unigram model
    holding only the pieces that are substrings of the batch's words (plus the lowest-scoring piece,
    which keeps that unknown-character score, the unk piece and, with byte fallback, the byte pieces)
    segments exactly as the whole one. Each call builds that small model (microseconds) and maps its ids
    back to the full vocabulary's. The normalizer, pre-tokenizer, post-processor, truncation and
    padding are the saved ones. A text containing an added token (``<s>``, ``<mask>``, ...) goes
    through the whole tokenizer, loaded on first need.

    The pieces come from ``tokenizer.unigram.bin`` (written by :func:`write_unigram_index`: the pieces
    sorted for binary search, their ids and scores, and tokenizer.json without its vocabulary), which
    loads in milliseconds, or from tokenizer.json itself. Equality with the HF tokenizer is checked at
    export time on the validation texts (runtime.json ``tokenizer``) and in the tests.
    """

    kind = TOKENIZER_SUBSET

    def __init__(self, skeleton: dict[str, Any], sorted_pieces: list[str], sorted_ids: list[int], scores: Any,
                 model_dir: Path, max_length: int, hf: dict[str, Any]) -> None:
        import threading

        from tokenizers import Tokenizer

        model = skeleton["model"]
        if not sorted_pieces or len(sorted_pieces) != len(sorted_ids) or len(scores) != len(sorted_ids):
            raise ValueError("inconsistent vocabulary")
        self._sorted, self._sorted_ids, self._scores = sorted_pieces, sorted_ids, scores
        self._unk_id = int(model["unk_id"]) if model.get("unk_id") is not None else None
        self._byte_fallback = bool(model.get("byte_fallback", False))
        self._max_piece = max(map(len, sorted_pieces))
        # The lowest-scoring piece fixes the unknown-character score (min score - 10): always keep it.
        self._always = {int(min(range(len(scores)), key=scores.__getitem__)) if not hasattr(scores, "argmin")
                        else int(scores.argmin())}
        if self._unk_id is not None:
            self._always.add(self._unk_id)
        if self._byte_fallback:
            self._always |= {i for p, i in zip(sorted_pieces, sorted_ids)
                             if len(p) == 6 and p.startswith("<0x") and p.endswith(">")}
        added = {t["content"]: int(t["id"]) for t in skeleton.get("added_tokens") or [] if t.get("content")}
        self._added = list(added)
        self._word_cache: dict[str, dict[int, str]] = {}
        stub = dict(skeleton)
        stub["model"] = {**model, "vocab": [["<unk>", 0.0]], "unk_id": 0}
        self._tokenizer = Tokenizer.from_str(json.dumps(stub))
        _configure(self._tokenizer, hf, max_length, lambda token: added.get(token, self._lookup(token)))
        padding = self._tokenizer.padding or {}
        self._pad_id = int(padding.get("pad_id", 0))
        self._pad_left = str(padding.get("direction", "right")).lower() == "left"
        self._tokenizer.no_padding()  # padded here, after mapping the ids back
        self._normalizer = self._tokenizer.normalizer
        self._pre_tokenizer = self._tokenizer.pre_tokenizer
        self._model_dir = Path(model_dir)
        self._max_length = max_length
        self._full: FullEncoder | None = None
        self._lock = threading.Lock()
        self._id_to_piece: dict[int, str] | None = None

    # --- construction
    @classmethod
    def eligible(cls, data: dict[str, Any]) -> bool:
        """A Unigram model with unique pieces, added tokens and special tokens that map to one id each."""
        model = data.get("model") or {}
        if model.get("type") != "Unigram" or not model.get("vocab"):
            return False
        pieces = [p[0] for p in model["vocab"]]
        index = dict(zip(pieces, range(len(pieces))))
        if len(index) != len(pieces):
            return False
        added = {t.get("content"): t.get("id") for t in data.get("added_tokens") or []}
        for content, token_id in added.items():
            if content in index and index[content] != token_id:
                return False
        post = data.get("post_processor")
        if post is not None:
            if post.get("type") != "TemplateProcessing":
                return False
            for special in (post.get("special_tokens") or {}).values():
                ids = [index.get(t, added.get(t)) for t in special.get("tokens", [])]
                if ids != list(special.get("ids", [])):
                    return False
        return True

    @classmethod
    def from_tokenizer_json(cls, data: dict[str, Any], model_dir: Path, max_length: int,
                            hf: dict[str, Any]) -> "UnigramSubsetEncoder":
        vocab = data["model"]["vocab"]
        order = sorted(range(len(vocab)), key=lambda i: vocab[i][0])
        skeleton = {**data, "model": {**data["model"], "vocab": []}}
        return cls(skeleton, [vocab[i][0] for i in order], order, [float(p[1]) for p in vocab], model_dir,
                   max_length, hf)

    @classmethod
    def from_index(cls, path: Path, model_dir: Path, max_length: int, hf: dict[str, Any]) -> "UnigramSubsetEncoder":
        import numpy as np

        header, ids, scores, pieces = _read_unigram_index(path)
        return cls(header["skeleton"], pieces, ids.tolist(), np.asarray(scores, dtype=np.float64), model_dir,
                   max_length, hf)

    # --- lookups
    def _lookup(self, piece: str) -> int | None:
        from bisect import bisect_left

        i = bisect_left(self._sorted, piece)
        if i < len(self._sorted) and self._sorted[i] == piece:
            return self._sorted_ids[i]
        return None

    def _pieces_in(self, word: str) -> dict[int, str]:
        """{id: piece} of every vocabulary piece that occurs in ``word``."""
        from bisect import bisect_left

        pieces, ids, longest, n = self._sorted, self._sorted_ids, self._max_piece, len(word)
        total = len(pieces)
        found = {}
        for i in range(n):
            # Every piece starting at i is a prefix of word[i:]: walk them in sorted order.
            for j in range(i + 1, min(n, i + longest) + 1):
                sub = word[i:j]
                k = bisect_left(pieces, sub)
                if k < total and pieces[k] == sub:
                    found[ids[k]] = sub
                elif k >= total or not pieces[k].startswith(sub):
                    break  # no piece starts with word[i:j]: none starts with a longer prefix either
        return found

    def _normalize(self, text: str) -> str:
        return self._normalizer.normalize_str(text) if self._normalizer is not None else text

    def _words(self, normalized: str) -> list[str]:
        if self._pre_tokenizer is None:
            return [normalized]
        return [w for w, _ in self._pre_tokenizer.pre_tokenize_str(normalized)]

    def _has_added(self, text: str) -> bool:
        return any(token in text for token in self._added)

    def encode(self, texts: Sequence[str]) -> tuple[Any, Any]:
        import numpy as np
        from tokenizers import models

        texts = list(texts)
        normalized = [self._normalize(t) for t in texts]
        if any(self._has_added(t) or self._has_added(n) for t, n in zip(texts, normalized)):
            with self._lock:
                if self._full is None:
                    self._full = FullEncoder(load_fast_tokenizer(self._model_dir, self._max_length))
            return self._full.encode(texts)
        found: dict[int, str] = {}
        cache = self._word_cache
        for text in normalized:
            for word in self._words(text):
                hit = cache.get(word)
                if hit is None:
                    hit = self._pieces_in(word)
                    if len(cache) >= WORD_CACHE_SIZE:
                        cache.clear()
                    cache[word] = hit
                found.update(hit)
        for piece_id in self._always:
            if piece_id not in found:
                found[piece_id] = self._piece_at(piece_id)
        order = sorted(found)
        vocab = [(found[i], float(self._scores[i])) for i in order]
        unk = order.index(self._unk_id) if self._unk_id is not None else None
        model = models.Unigram(vocab, unk, self._byte_fallback)
        with self._lock:  # the model is swapped per call: one encode at a time on this tokenizer
            self._tokenizer.model = model
            # One by one: encode_batch's thread pool costs more than it saves on a few short texts.
            batch = [self._tokenizer.encode(t) for t in texts]
        # Model tokens carry ids of the small model: map them back. Tokens the post-processor added
        # (special_tokens_mask 1) already carry the full vocabulary's ids.
        local_to_global = np.asarray(order, dtype=np.int64)
        width = max((len(e.ids) for e in batch), default=0)
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, e in enumerate(batch):
            local = np.asarray(e.ids, dtype=np.int64)
            special = np.asarray(e.special_tokens_mask, dtype=bool)
            tokens = np.where(special, local, local_to_global[np.where(special, 0, local)])
            cols = slice(width - len(tokens), width) if self._pad_left else slice(0, len(tokens))
            ids[row, cols] = tokens
            mask[row, cols] = np.asarray(e.attention_mask, dtype=np.int64)
        return ids, mask

    def _piece_at(self, piece_id: int) -> str:
        """The piece with ``piece_id`` (only for the few always-kept ids; a linear scan, then cached)."""
        if self._id_to_piece is None:
            self._id_to_piece = {}
        if piece_id not in self._id_to_piece:
            self._id_to_piece[piece_id] = self._sorted[self._sorted_ids.index(piece_id)]
        return self._id_to_piece[piece_id]


UNIGRAM_INDEX_MAGIC = b"HOTELBOT-UNIGRAM-INDEX/1\n"


def write_unigram_index(model_dir: Path) -> bool:
    """Write ``model_dir/tokenizer.unigram.bin`` for a Unigram tokenizer.json; False when not one.

    Layout: magic line, 8-byte little-endian header length, JSON header (counts + tokenizer.json without
    its vocabulary), int32 ids of the pieces in sorted order, float64 scores by id, then the sorted
    pieces as UTF-8 joined by newlines (a vocabulary with a newline in a piece gets no index).
    """
    import numpy as np

    from ._atomic import atomic_write_bytes

    model_dir = Path(model_dir)
    data = json.loads((model_dir / TOKENIZER_FILE).read_text("utf-8"))
    if not UnigramSubsetEncoder.eligible(data):
        return False
    vocab = data["model"]["vocab"]
    if any("\n" in p[0] for p in vocab):
        return False
    order = sorted(range(len(vocab)), key=lambda i: vocab[i][0])
    blob = "\n".join(vocab[i][0] for i in order).encode("utf-8")
    header = json.dumps({"count": len(vocab), "pieces_bytes": len(blob),
                         "skeleton": {**data, "model": {**data["model"], "vocab": []}}},
                        ensure_ascii=False).encode("utf-8")
    body = (UNIGRAM_INDEX_MAGIC + len(header).to_bytes(8, "little") + header
            + np.asarray(order, dtype="<i4").tobytes() + np.asarray([p[1] for p in vocab], dtype="<f8").tobytes() + blob)
    atomic_write_bytes(model_dir / TOKENIZER_INDEX_FILE, body)
    return True


def _read_unigram_index(path: Path) -> tuple[dict[str, Any], Any, Any, list[str]]:
    import numpy as np

    try:
        raw = Path(path).read_bytes()
        if not raw.startswith(UNIGRAM_INDEX_MAGIC):
            raise ValueError("not a hotelbot unigram index")
        at = len(UNIGRAM_INDEX_MAGIC)
        size = int.from_bytes(raw[at:at + 8], "little")
        header = json.loads(raw[at + 8:at + 8 + size])
        count = int(header["count"])
        at += 8 + size
        ids = np.frombuffer(raw, dtype="<i4", count=count, offset=at)
        at += 4 * count
        scores = np.frombuffer(raw, dtype="<f8", count=count, offset=at)
        at += 8 * count
        blob = raw[at:]
        if len(blob) != int(header["pieces_bytes"]):
            raise ValueError("truncated")
        pieces = blob.decode("utf-8").split("\n")
        if len(pieces) != count:
            raise ValueError("piece count mismatch")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    return header, ids, scores, pieces


def load_text_encoder(model_dir: Path, max_length: int, kind: str | None = None) -> Any:
    """The tokenizer of a saved model for the ONNX predictor: a :class:`UnigramSubsetEncoder` for a
    Unigram tokenizer (from tokenizer.unigram.bin when the export wrote one), else the whole tokenizer
    (:class:`FullEncoder`); ``kind="full"`` forces the whole one."""
    model_dir = Path(model_dir)
    if kind != TOKENIZER_FULL:
        hf = _read_hf_config(model_dir)
        index = model_dir / TOKENIZER_INDEX_FILE
        try:
            if index.is_file():
                return UnigramSubsetEncoder.from_index(index, model_dir, max_length, hf)
            if kind == TOKENIZER_SUBSET or kind is None:
                data = _read_tokenizer_json(model_dir)
                if UnigramSubsetEncoder.eligible(data):
                    return UnigramSubsetEncoder.from_tokenizer_json(data, model_dir, max_length, hf)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - the whole tokenizer still works
            log.warning("fast Unigram tokenizer unavailable (%s); loading the whole tokenizer", exc)
    return FullEncoder(load_fast_tokenizer(model_dir, max_length))


def _read_tokenizer_json(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / TOKENIZER_FILE
    try:
        raw = path.read_bytes()
        try:
            import orjson

            data = orjson.loads(raw)
        except ImportError:  # pragma: no cover - orjson is a dependency
            data = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a tokenizer")
    return data


# ------------------------------------------------------------------ numpy helpers


def softmax(logits: Any) -> Any:
    import numpy as np

    logits = np.asarray(logits, dtype=np.float32)
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check_texts(texts: Sequence[str]) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not clean_text(text):
            raise DataError(f"text {i + 1} is empty")


def _threads_env() -> int:
    try:
        threads = int(os.environ.get(THREADS_ENV, "0") or 0)
    except ValueError:
        raise ConfigError(f"{THREADS_ENV} must be a whole number of threads (0: one per core)") from None
    if threads < 0:
        raise ConfigError(f"{THREADS_ENV} must be a whole number of threads (0: one per core)")
    return threads


def _recheck_margin(spec: dict[str, Any]) -> float:
    """The margin of int8's fp32 recheck: the one recorded at export (none when int8 alone passed the
    gate), unless HOTELBOT_RUNTIME_RECHECK_MARGIN is set (0: off), which applies to any version whose fp32
    graph reproduced PyTorch at export."""
    raw = os.environ.get(RECHECK_ENV, "").strip()
    if not raw:
        return float((spec.get("recheck") or {}).get("margin") or 0.0)
    if not ((spec.get("runtimes") or {}).get(ONNX_FP32) or {}).get("usable"):
        return 0.0
    try:
        margin = float(raw)
    except ValueError:
        margin = -1.0
    if not 0.0 <= margin <= 1.0:
        raise ConfigError(f"{RECHECK_ENV} must be a probability margin in [0, 1] (0: no recheck), got {raw!r}")
    return margin


def thread_budget() -> int:
    """Threads onnxruntime may use: HOTELBOT_ONNX_THREADS, else one per core."""
    return _threads_env() or os.cpu_count() or 1


def _session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no "Removing initializer" chatter on stderr
    threads = threads if threads is not None else _threads_env()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle worker threads sleep instead of spinning: spinning buys ~0.5 ms on an idle machine but, on
    # cores shared with other processes (2-core CI, a server next to other services), it made single
    # texts ~2x slower and batches ~2x less throughput in our measurements. HOTELBOT_ONNX_SPIN=1 turns it on.
    spin = os.environ.get(SPIN_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelError(f"cannot load the ONNX model {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None


# ------------------------------------------------------------------ the predictor


class Recheck:
    """The fp32 second opinion of an int8 model: texts whose int8 answer is within ``margin`` of changing
    (the gap between its two best intents, or between its confidence and the out-of-scope threshold)
    are re-run on the fp32 graph, whose answer is kept.

    int8 and fp32 differ by up to ~0.2-0.3 in a probability, so int8 alone disagrees with fp32 on 0.3-1.6 %
    of texts, nearly all of them close calls; re-running only those keeps int8's speed on the clear ones
    and fp32's answers on the close ones. Export turns it on for a version only when int8 alone misses
    the accuracy gate: each re-run costs an fp32 pass (~7 ms on one core for e5-small, vs ~3 ms for
    int8), and serve's throughput drops with the share of close calls. The fp32 session
    (single-threaded: it runs on the int8 lanes) is opened on first use unless :meth:`open` is called;
    ``before_open`` (e.g. a checksum check of the fp32 files) runs once, just before.
    """

    def __init__(self, path: Path, margin: float, before_open: Any = None) -> None:
        if not margin > 0:
            raise ConfigError(f"recheck margin must be > 0, got {margin}")
        self.path = Path(path)
        self.margin = float(margin)
        self._before_open = before_open
        self._session: Any = None
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.checked = 0  # texts looked at, and re-run on fp32 (serve's /metrics, export's rate)
        self.rerun = 0

    def open(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    if self._before_open is not None:
                        self._before_open()
                    self._session = _session(self.path, threads=1)
        return self._session

    def needed(self, probs: Any, threshold: float | None) -> bool:
        """Whether an int8 probability row is a close call."""
        import numpy as np

        top2 = np.partition(probs, -2)[-2:] if probs.shape[-1] > 1 else np.array([0.0, probs[-1]])
        best, second = float(top2.max()), float(top2.min())
        close = best - second < self.margin or (threshold is not None and abs(best - threshold) < self.margin)
        with self._count_lock:
            self.checked += 1
            self.rerun += close
        return close

    @property
    def rate(self) -> float | None:
        return self.rerun / self.checked if self.checked else None


class OnnxPredictor:
    """A version's ONNX model on onnxruntime: the interface of :class:`inference.Predictor`, without torch."""

    def __init__(self, session: Any, tokenizer: Any, config: RuntimeClassifierConfig, version: str,
                 runtime: str = ONNX_INT8, lanes: int = 1, recheck: Recheck | None = None) -> None:
        self.session = session
        self.recheck = recheck  # int8 only: close calls re-run on fp32
        self.tokenizer = tokenizer  # FullEncoder or UnigramSubsetEncoder: .encode(texts) -> (ids, mask)
        self.config = config
        self.version = version
        self.runtime = runtime
        self.labels = list(config.labels)
        self._inputs = {i.name for i in session.get_inputs()}
        self.batch_invariant = runtime == ONNX_INT8  # see probabilities()
        self.lanes = lanes  # int8: parallel one-text session calls
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_model_dir(cls, model_dir: Path, runtime: str = ONNX_INT8, version: str = "",
                       tokenizer: str | None = None, *, before_session: Any = None,
                       recheck_margin: float | None = None, before_recheck: Any = None,
                       open_recheck: bool = True) -> "OnnxPredictor":
        """``tokenizer``: "full" or "unigram-subset" (default: what runtime.json says, else the fastest).
        ``before_session()`` runs after the tokenizer is loaded and before the ONNX file is opened.

        int8 only: ``recheck_margin`` (default: runtime.json's ``recheck``; 0: none) re-runs close calls on
        the fp32 graph (:class:`Recheck`), opened now with ``open_recheck`` or else on the first close
        call, after ``before_recheck()``."""
        if runtime not in ONNX_FILES:
            raise ConfigError(f"not an ONNX runtime: {runtime!r} (use {ONNX_FP32} or {ONNX_INT8})")
        model_dir = Path(model_dir)
        path = model_dir / ONNX_FILES[runtime]
        if not path.is_file():
            raise ModelError(f"{path} does not exist: this version has no {runtime} model",
                             hint=f"unset {RUNTIME_ENV} or retrain with a hotelbot that exports ONNX")
        config = RuntimeClassifierConfig.from_file(model_dir / CLASSIFIER_FILE)
        spec: dict[str, Any] = {}
        if tokenizer is None or recheck_margin is None:
            spec = read_runtime_spec(model_dir) or {}
        if tokenizer is None:
            tokenizer = spec.get("tokenizer")
        encoder = load_text_encoder(model_dir, config.max_length, tokenizer)
        if before_session is not None:
            before_session()
        if runtime == ONNX_INT8:
            # One short text is too little work to split across threads (on 2 cores, e5-small int8: 4.5 ms
            # per text with 2 intra-op threads, 3.5 ms with 1), so the int8 model runs single-threaded
            # calls side by side, one lane per core of the thread budget: 2.4x the texts/s on 2 cores
            # (benchmarks/latency.py).
            lanes = thread_budget()
            if recheck_margin is None:
                recheck_margin = _recheck_margin(spec)
            recheck = None
            if recheck_margin > 0:
                recheck = Recheck(model_dir / ONNX_FP32_FILE, recheck_margin, before_recheck)
                if open_recheck:
                    recheck.open()
            return cls(_session(path, threads=1), encoder, config, version or model_dir.parent.name, runtime, lanes,
                       recheck)
        return cls(_session(path), encoder, config, version or model_dir.parent.name, runtime)

    @classmethod
    def from_version(cls, info: "VersionInfo", runtime: str | None = None, verify: bool = False) -> "OnnxPredictor":
        """Load a version's ONNX model; ``verify`` checks the checksums of exactly the files read.

        The small files (runtime.json, classifier.json, the tokenizer files) are checked before they are
        read; the .onnx file is hashed in a background thread while the tokenizer loads (hashlib runs
        without the GIL), and the session is created only once that hash matched.
        """
        model_dir = info.path / MODEL_SUBDIR
        if verify:
            require_files_intact(info, [f"{MODEL_SUBDIR}/{RUNTIME_FILE}"])
        if runtime is None:
            spec = read_runtime_spec(model_dir) or {}
            runtime = spec.get("runtime") if spec.get("runtime") in ONNX_FILES else ONNX_INT8
        if runtime not in ONNX_FILES:
            raise ConfigError(f"not an ONNX runtime: {runtime!r} (use {ONNX_FP32} or {ONNX_INT8})")
        check = None
        if verify:
            files = onnx_files_read(runtime)
            require_files_intact(info, files[:-2])
            check = _BackgroundCheck(info, files[-2:])
        # With verify (the fast `predict` path) the fp32 graph of int8's recheck is checksummed and opened
        # only if a close call needs it; without (serve, validate: the whole version was checked), now.
        fp32_files = onnx_files_read(ONNX_FP32)[-2:]  # the graph and its .data
        return cls.from_model_dir(model_dir, runtime, info.name,
                                  before_session=check.require if check is not None else None,
                                  before_recheck=(lambda: require_files_intact(info, fp32_files)) if verify else None,
                                  open_recheck=not verify)

    def with_recheck(self, recheck: Recheck | None) -> "OnnxPredictor":
        """This predictor (same session, tokenizer, lanes) with ``recheck`` instead of its own (None: int8 alone)."""
        return OnnxPredictor(self.session, self.tokenizer, self.config, self.version, self.runtime, self.lanes, recheck)

    @classmethod
    def from_registry(cls, registry: Any, version: str | None = None, verify: bool = True,
                      runtime: str | None = None) -> "OnnxPredictor":
        """Load ``version`` (default: deployed, else newest), checking the checksums of the files it reads."""
        return cls.from_version(registry.resolve(version), runtime, verify=verify)

    # --- the Predictor interface
    @property
    def threshold(self) -> float | None:
        return self.config.oos_threshold

    @property
    def query_prefix(self) -> str:
        return self.config.query_prefix

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def encode(self, texts: Sequence[str]) -> tuple[Any, Any]:
        """(input_ids, attention_mask) as int64 arrays, exactly as the torch Predictor builds them."""
        return self.tokenizer.encode([self.config.query_prefix + clean_text(t) for t in texts])

    def logits(self, texts: Sequence[str]) -> Any:
        ids, mask = self.encode(texts)
        feed = {"input_ids": ids, "attention_mask": mask}
        return self.session.run(["logits"], {k: v for k, v in feed.items() if k in self._inputs})[0]

    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        """Softmax over the labels, one row per text (a numpy array; the torch Predictor returns a tensor).

        The int8 model runs one text at a time: dynamic quantization scales each activation tensor by
        its own range, so in a padded batch a text's answer would depend on the other texts in it (on
        e5, 4 % of the labels changed between batch-32 and one-by-one). fp32 batches (same answers to 1e-6).
        The int8 texts are tokenized together, then run in ``lanes`` parallel single-threaded
        session calls (see :meth:`from_model_dir`).
        """
        import numpy as np

        if self.batch_invariant:
            return self._one_by_one(texts)
        step = max(1, batch_size)
        rows = [softmax(self.logits(texts[start:start + step])) for start in range(0, len(texts), step)]
        return np.concatenate(rows) if rows else np.empty((0, len(self.labels)), dtype=np.float32)

    def _one_by_one(self, texts: Sequence[str]) -> Any:
        import numpy as np

        if not texts:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        ids, mask = self.encode(texts)
        if self.lanes > 1 and len(texts) > 1:
            rows = list(self._lane_pool().map(lambda row: self._row_probs(ids, mask, row), range(len(texts))))
        else:
            rows = [self._row_probs(ids, mask, row) for row in range(len(texts))]
        return np.stack(rows)

    def _row_logits(self, ids: Any, mask: Any, row: int, session: Any = None) -> Any:
        """One text of an encoded batch, run alone: its own tokens only, exactly its one-text encoding."""
        keep = mask[row].astype(bool)
        feed = {"input_ids": ids[row:row + 1, keep], "attention_mask": mask[row:row + 1, keep]}
        return (session or self.session).run(["logits"], {k: v for k, v in feed.items() if k in self._inputs})[0]

    def _row_probs(self, ids: Any, mask: Any, row: int) -> Any:
        """One text's probabilities on int8, or on fp32 when int8 made a close call (:class:`Recheck`)."""
        probs = softmax(self._row_logits(ids, mask, row))[0]
        if self.recheck is not None and self.recheck.needed(probs, self.threshold):
            probs = softmax(self._row_logits(ids, mask, row, self.recheck.open()))[0]
        return probs

    def _lane_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="hotelbot-onnx")
        return self._pool

    @property
    def streams(self) -> bool:
        """True when :meth:`submit_each` can answer texts independently on parallel lanes (int8)."""
        return self.batch_invariant and self.lanes > 1

    def submit_each(self, texts: Sequence[str], top_k: int = 3) -> list[Any]:
        """int8: one concurrent.futures.Future per text, each resolving to its Prediction as soon as that
        text has run. The texts are tokenized together here; their passes queue on the lanes, first in
        first out. The answers equal :meth:`predict`'s."""
        _check_texts(texts)
        ids, mask = self.encode(texts)
        pool = self._lane_pool()
        k = max(1, min(top_k, len(self.labels)))

        def one(row: int) -> "Prediction":
            return self._prediction(texts[row], self._row_probs(ids, mask, row), k)

        return [pool.submit(one, row) for row in range(len(texts))]

    def _prediction(self, text: str, row: Any, k: int) -> "Prediction":
        import numpy as np

        from .inference import Prediction

        idxs = np.argsort(-row, kind="stable")[:k]
        ranked = [{"intent": self.labels[i], "confidence": round(float(row[i]), 6)} for i in idxs]
        fallback = self.threshold is not None and float(row[idxs[0]]) < self.threshold
        intent = OUT_OF_SCOPE if fallback else ranked[0]["intent"]
        return Prediction(text, intent, ranked[0]["confidence"], ranked, fallback)

    def predict(self, texts: Sequence[str], top_k: int = 3, batch_size: int = 32) -> list["Prediction"]:
        _check_texts(texts)
        probs = self.probabilities(texts, batch_size)
        k = max(1, min(top_k, len(self.labels)))
        return [self._prediction(text, row, k) for text, row in zip(texts, probs)]

    def predict_labels(self, texts: Sequence[str], batch_size: int = 32, apply_threshold: bool = True) -> list[str]:
        probs = self.probabilities(texts, batch_size)
        threshold = self.threshold if apply_threshold else None
        best = probs.argmax(axis=-1)
        confidence = probs.max(axis=-1)
        return [OUT_OF_SCOPE if threshold is not None and float(c) < threshold else self.labels[int(i)]
                for c, i in zip(confidence, best)]


# ------------------------------------------------------------------ partial checksum verification


def onnx_files_read(runtime: str) -> list[str]:
    """The version files (relative to the version dir) that an ONNX predictor reads."""
    onnx_file = ONNX_FILES[runtime]
    return [f"{MODEL_SUBDIR}/{name}" for name in (RUNTIME_FILE, CLASSIFIER_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE,
                                                   TOKENIZER_INDEX_FILE, onnx_file, onnx_file + ".data")]


def verify_files(info: "VersionInfo", rels: Sequence[str]) -> list[str]:
    """Problems with ``rels`` against the version's recorded checksums (the fast path of ``predict``:
    hashing only what the ONNX runtime reads, not the ~470 MB of PyTorch weights it never opens).

    A file that exists but has no recorded checksum is a problem (added after publishing); a file
    that neither exists nor is recorded is fine (e.g. no tokenizer_config.json)."""
    from .registry.store import sha256_file

    recorded: dict[str, str] = info.metadata.get("files") or {}
    problems = []
    for rel in rels:
        path = info.path / rel
        expected = recorded.get(rel)
        if expected is None:
            if path.exists():
                problems.append(f"{info.name}/{rel}: not recorded in metadata (added after publishing)")
        elif not path.is_file():
            problems.append(f"{info.name}/{rel}: missing")
        elif sha256_file(path) != expected:
            problems.append(f"{info.name}/{rel}: checksum mismatch (corrupt or modified)")
    return problems


class _BackgroundCheck:
    """:func:`verify_files` in a thread; :meth:`require` waits for it and raises on a problem."""

    def __init__(self, info: "VersionInfo", rels: Sequence[str]) -> None:
        import threading

        self._info, self._problems, self._error = info, [], None

        def run() -> None:
            try:
                self._problems = verify_files(info, rels)
            except BaseException as exc:  # noqa: BLE001 - re-raised in require()
                self._error = exc

        self._thread = threading.Thread(target=run, name="hotelbot-verify", daemon=True)
        self._thread.start()

    def require(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        _raise_problems(self._info, self._problems)


def _raise_problems(info: "VersionInfo", problems: Sequence[str]) -> None:
    if problems:
        raise IntegrityError(f"version {info.name} failed its checksum check: {problems[0]}",
                             hint="run `hotelbot verify` for the full list")


def require_files_intact(info: "VersionInfo", rels: Sequence[str]) -> None:
    if info.metadata.get("corrupt"):
        raise IntegrityError(f"version {info.name} failed its checksum check: metadata.json is unreadable")
    _raise_problems(info, verify_files(info, rels))


# ------------------------------------------------------------------ export (imports torch)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Keep exporter/quantizer chatter (warnings, root-logger advice) off the CLI's stderr."""
    import warnings

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return False

    root = logging.getLogger()
    drop = _Drop()
    root.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(drop)


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[str]:
    """Export with the encoder's eager attention: its graph is the classic BERT pattern that
    onnxruntime fuses into one Attention op (the SDPA graph is not recognised). Restored after."""
    encoder = model.encoder
    before = getattr(encoder.config, "_attn_implementation", None) or "sdpa"
    try:
        encoder.set_attn_implementation("eager")
        now = "eager"
    except Exception:  # noqa: BLE001 - an encoder without the switch: export what it has
        now = before
    try:
        yield now
    finally:
        if now != before:
            with contextlib.suppress(Exception):
                encoder.set_attn_implementation(before)


def _export_raw(model: Any, tokenizer: Any, path: Path, opset: int) -> str:
    """Write encoder + pooling + head as one ONNX graph; returns the exporter used."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)["logits"]

    wrapped = LogitsOnly(model).eval()
    cfg = model.classifier_config
    # Two texts of different lengths: the traced graph sees padding, so nothing is specialised to it.
    enc = tokenizer([cfg.query_prefix + t for t in PROBE_TEXTS[2:]], padding=True, truncation=True,
                    max_length=cfg.max_length, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"])
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"}}
    with _quiet_export(), torch.inference_mode(False), torch.no_grad():
        try:
            # The TorchScript exporter: seconds (dynamo takes several times longer) and its graph
            # fuses and quantizes as is.
            torch.onnx.export(wrapped, args, str(path), input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
            return "torchscript"
        except Exception as exc:  # noqa: BLE001 - fall back to the dynamo exporter (a torch without the old one)
            log.warning("TorchScript ONNX export failed (%s); trying the dynamo exporter", exc)
        import io

        batch = torch.export.Dim("batch", min=1, max=4096)
        seq = torch.export.Dim("sequence", min=1, max=max(2, int(cfg.max_length)))
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(wrapped, args, None, input_names=["input_ids", "attention_mask"],
                                        output_names=["logits"], dynamo=True, verbose=False, opset_version=18,
                                        dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                        "attention_mask": {0: batch, 1: seq}})
            program.save(str(path), external_data=False)
    import onnx

    graph = onnx.load(str(path))
    del graph.graph.value_info[:]  # dynamo's shape annotations trip the quantizer's shape inference
    onnx.save(graph, str(path))
    return "dynamo"


def _probe_feed(tokenizer: Any, cfg: Any, texts: Sequence[str] = PROBE_TEXTS) -> dict[str, Any]:
    enc = tokenizer([cfg.query_prefix + clean_text(t) for t in texts], padding=True, truncation=True,
                    max_length=cfg.max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype("int64"), "attention_mask": enc["attention_mask"].astype("int64")}


def _run(path: Path, feed: dict[str, Any]) -> Any:
    session = _session(path)
    names = {i.name for i in session.get_inputs()}
    return session.run(["logits"], {k: v for k, v in feed.items() if k in names})[0]


def _fuse(path: Path, encoder_config: Any, feed: dict[str, Any]) -> dict[str, int]:
    """Fuse attention / layer norms / GELU with onnxruntime's transformer optimizer, in place.

    Kept only when the fused graph gives the same logits as the plain one on the probe texts;
    returns the fused-op counts ({} when nothing was fused or the fusion was rejected).
    """
    import numpy as np

    tmp = path.with_name(path.name + ".fused.tmp")
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with _quiet_export():
            fused = optimize_model(str(path), model_type="bert",
                                   num_heads=int(getattr(encoder_config, "num_attention_heads", 0) or 0),
                                   hidden_size=int(getattr(encoder_config, "hidden_size", 0) or 0), opt_level=0)
            stats = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
            if not stats:
                return {}
            fused.save_model_to_file(str(tmp))
        if np.abs(_run(tmp, feed) - _run(path, feed)).max() > 1e-4:
            log.warning("the fused ONNX graph does not reproduce the plain one; keeping the plain graph")
            return {}
        os.replace(tmp, path)
        return stats
    except Exception as exc:  # noqa: BLE001 - fusion is an optimisation: the plain graph still works
        log.warning("ONNX graph fusion skipped: %s", exc)
        return {}
    finally:
        tmp.unlink(missing_ok=True)


def _externalize(path: Path) -> None:
    """Move the large initializers (the word embeddings) of ``path`` into ``path.data``.

    onnxruntime memory-maps that file instead of parsing ~100 MB of protobuf: a cold session is ~3x
    faster to create, and only the embedding rows actually used are paged in.
    """
    import onnx

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=EXTERNAL_DATA_THRESHOLD, convert_attribute=False)


def _quantize(src: Path, dst: Path, exclude: Sequence[str] = ()) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights: per-tensor int8 scales flip ~10% of a small model's answers, per-channel
    # about half as many. DefaultTensorType: the fused contrib ops have no ONNX shape inference.
    # ``exclude``: nodes kept in fp32 (see _outlier_inputs).
    with _quiet_export():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=list(exclude), extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _outlier_inputs(path: Path, feeds: Sequence[dict[str, Any]]) -> dict[str, float]:
    """For each weight MatMul / Attention node of the (externalized) fp32 graph at ``path``: the median,
    over ``feeds`` (one text each), of max|x| / rms(x) of its input activation x.

    Dynamic int8 quantizes an activation with one scale per tensor, set by its largest value; an input
    whose largest value is ~100x its typical one (the "outlier features" of transformer FFNs) keeps only
    a few of its 256 levels for everything else. On e5-small these are the FFN output projections of a
    few early layers (ratios 64-111 where the other inputs are 4-52); they carry most of int8's error.
    """
    import numpy as np
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    weights = {i.name for i in graph.graph.initializer}
    nodes = {n.name: n.input[0] for n in graph.graph.node
             if n.op_type in ("MatMul", "Attention") and len(n.input) > 1 and n.input[1] in weights}
    names = sorted(set(nodes.values()) - {o.name for o in graph.graph.output})
    for name in names:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    probe = path.with_name(path.name + ".probe.tmp")  # beside the .data file it references
    try:
        onnx.save(graph, str(probe))
        session = _session(probe, threads=1)
        inputs = {i.name for i in session.get_inputs()}
        ratios: dict[str, list[float]] = {name: [] for name in names}
        for feed in feeds:
            for name, x in zip(names, session.run(names, {k: v for k, v in feed.items() if k in inputs})):
                rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
                if rms > 0:
                    ratios[name].append(float(np.abs(x).max()) / rms)
    finally:
        probe.unlink(missing_ok=True)
    return {node: round(float(np.median(ratios[inp])), 2) for node, inp in nodes.items() if ratios.get(inp)}


def _keep_fp32(ratios: dict[str, float], cutoff: float = OUTLIER_RATIO, share: float = OUTLIER_MAX_SHARE) -> list[str]:
    """The nodes whose input outlier ratio is at least ``cutoff``, the worst first, at most ``share`` of them."""
    worst = sorted((r, n) for n, r in ratios.items() if r >= cutoff)[::-1]
    return sorted(n for _, n in worst[:int(len(ratios) * share)])


def _latencies_ms(predictors: dict[str, Any], texts: Sequence[str], runs: int,
                  block: int = 10) -> dict[str, dict[str, float]]:
    """Single-text ``predict`` latency (tokenize + forward + top-k) of each predictor.

    Measured in alternating blocks of ``block`` calls, so that load from other processes hits every
    runtime alike; the first call of each block is not timed (onnxruntime's worker threads keep
    spinning for a moment after a run and would slow whichever runtime comes next).
    """
    import numpy as np

    texts = list(texts) or list(PROBE_TEXTS)
    for predictor in predictors.values():
        for text in texts[:2]:
            predictor.predict([text])
    times: dict[str, list[float]] = {name: [] for name in predictors}
    done = 0
    while done < max(1, runs):
        for name, predictor in predictors.items():
            for i in range(block + 1):
                text = texts[(done + i) % len(texts)]
                start = time.perf_counter()
                predictor.predict([text])
                if i:
                    times[name].append((time.perf_counter() - start) * 1000.0)
        done += block
    return {name: {"latency_ms_p50": round(float(np.percentile(t, 50)), 3),
                   "latency_ms_p90": round(float(np.percentile(t, 90)), 3)} for name, t in times.items()}


def _accuracy(labels: list[str], truth: list[str]) -> float | None:
    return sum(p == t for p, t in zip(labels, truth)) / len(truth) if truth else None


def drop_export(model_dir: Path) -> list[str]:
    """Remove a model directory's ONNX export (graphs, data, tokenizer index, runtime.json).

    For a *staged* copy whose PyTorch weights were changed: the export is derived from them and would
    no longer match. Returns the names removed. (Published versions are immutable: never call this on one.)
    """
    model_dir = Path(model_dir)
    names = [ONNX_FP32_FILE, ONNX_FP32_FILE + ".data", ONNX_INT8_FILE, ONNX_INT8_FILE + ".data",
             TOKENIZER_INDEX_FILE, RUNTIME_FILE]
    removed = []
    for name in names:
        if (model_dir / name).exists():
            (model_dir / name).unlink()
            removed.append(name)
    return removed


def _check_tokenizers(model_dir: Path, hf_tokenizer: Any, cfg: Any, texts: Sequence[str]) -> tuple[str, bool]:
    """(tokenizer kind for runtime.json, whether it reproduces the HF tokenizer's ids on ``texts``).

    The fast Unigram encoder is kept only when it gives exactly the HF ids; else the whole tokenizer.
    """
    import numpy as np

    prepared = [cfg.query_prefix + clean_text(t) for t in texts if clean_text(t)]

    def same(encoder: Any) -> bool:
        for start in range(0, len(prepared), 32):
            chunk = prepared[start:start + 32]
            ids, mask = encoder.encode(chunk)
            want = hf_tokenizer(chunk, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="np")
            if ids.shape != want["input_ids"].shape or not (np.array_equal(ids, want["input_ids"]) and
                                                           np.array_equal(mask, want["attention_mask"])):
                return False
        return True

    encoder = load_text_encoder(model_dir, cfg.max_length)
    if same(encoder):
        return encoder.kind, True
    if encoder.kind != TOKENIZER_FULL:
        log.warning("the fast Unigram tokenizer differs from the HF tokenizer; the ONNX runtime loads the whole one")
        if same(load_text_encoder(model_dir, cfg.max_length, TOKENIZER_FULL)):
            return TOKENIZER_FULL, True
    log.warning("tokenizer.json does not reproduce the HF tokenizer's ids: the ONNX runtimes are not used")
    return TOKENIZER_FULL, False


def export_onnx(model: Any, tokenizer: Any, model_dir: Path, validation_examples: Sequence[Any],
                tolerance_points: float = DEFAULT_TOLERANCE_POINTS, *, latency_runs: int = 50,
                opset: int = OPSET, recheck_margin: float = DEFAULT_RECHECK_MARGIN) -> dict[str, Any]:
    """Export a trained classifier to ONNX (fp32 and dynamic int8) into ``model_dir`` and choose a runtime.

    Call it on a *staged* version after :func:`modeling.save_classifier` wrote ``model_dir`` (it reads
    classifier.json and tokenizer.json from there, as predict will). Measures accuracy (out-of-scope
    threshold applied, as predict answers) of torch fp32, ONNX fp32 and ONNX int8 on
    ``validation_examples`` (objects with .text and .intent), and their single-text latency; chooses
    with :func:`choose_runtime`; writes ``model_dir/runtime.json``; returns the same dict (for
    ``metadata["inference"]``). When int8 alone is outside the gate and ``recheck_margin`` > 0 (and the
    fp32 export is usable), int8 is measured again with its close calls re-run on fp32 (:class:`Recheck`)
    and, if that passes, serves that way (``recheck`` in runtime.json; int8 alone is recorded beside):
    slower than int8 alone (each re-run costs an fp32 pass), faster than fp32.
    """
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    from ._atomic import atomic_write_json
    from .inference import Predictor

    model_dir = Path(model_dir)
    for needed in (CLASSIFIER_FILE, TOKENIZER_FILE):
        if not (model_dir / needed).is_file():
            raise ModelError(f"{model_dir / needed} is missing: call save_classifier before export_onnx")
    if next(model.parameters()).device.type != "cpu":
        model = model.to("cpu")
    model.eval()
    start = time.monotonic()
    fp32_path, int8_path = model_dir / ONNX_FP32_FILE, model_dir / ONNX_INT8_FILE
    try:
        with _eager_attention(model) as attention:
            exporter = _export_raw(model, tokenizer, fp32_path, opset)
        fused = _fuse(fp32_path, model.encoder.config, _probe_feed(tokenizer, model.classifier_config))
        _externalize(fp32_path)
        cfg = model.classifier_config
        stats_texts = [e.text for e in validation_examples[:64]] + list(PROBE_TEXTS)
        ratios = _outlier_inputs(fp32_path, [_probe_feed(tokenizer, cfg, [t]) for t in stats_texts])
        kept_fp32 = _keep_fp32(ratios)
        _quantize(fp32_path, int8_path, kept_fp32)
        _externalize(int8_path)
    except Exception as exc:  # noqa: BLE001 - surface one clear line; the torch weights are still saved
        for path in (fp32_path, int8_path):
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".data").unlink(missing_ok=True)
        raise ModelError(f"ONNX export failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    export_seconds = time.monotonic() - start

    texts = [e.text for e in validation_examples]
    truth = [e.intent for e in validation_examples]
    probe = texts[:64] or list(PROBE_TEXTS)
    cfg = model.classifier_config
    write_unigram_index(model_dir)
    tokenizer_kind, tokenizer_ok = _check_tokenizers(model_dir, tokenizer, cfg, texts + list(PROBE_TEXTS))
    if tokenizer_kind != TOKENIZER_SUBSET:
        (model_dir / TOKENIZER_INDEX_FILE).unlink(missing_ok=True)
    predictors: dict[str, Any] = {TORCH: Predictor(model, tokenizer, model_dir.parent.name)}
    for name in ONNX_FILES:
        predictors[name] = OnnxPredictor.from_model_dir(model_dir, name, model_dir.parent.name, tokenizer_kind,
                                                        recheck_margin=0.0)
    recheck: dict[str, Any] | None = None
    with torch.inference_mode():
        reference = predictors[TORCH].probabilities(probe).float().numpy()
        measurements: dict[str, dict[str, Any]] = {}
        predicted: dict[str, list[str]] = {}

        recheck_rates: dict[str, float | None] = {}

        def measure(name: str, predictor: Any) -> dict[str, Any]:
            predicted[name] = predictor.predict_labels(texts) if texts else []
            if getattr(predictor, "recheck", None) is not None:
                recheck_rates[name] = predictor.recheck.rate  # on the validation texts, before the probe texts
            probs = reference if name == TORCH else predictor.probabilities(probe)
            entry: dict[str, Any] = {"accuracy": _accuracy(predicted[name], truth),
                                     "max_abs_prob_diff_vs_torch": round(float(np.abs(probs - reference).max()), 7)}
            if name != TORCH:
                entry["agreement_with_torch"] = _accuracy(predicted[name], predicted[TORCH])
                entry["file"] = ONNX_FILES[name]
                entry["size_bytes"] = sum(p.stat().st_size for p in (model_dir / ONNX_FILES[name],
                                                                     model_dir / (ONNX_FILES[name] + ".data"))
                                          if p.exists())
            return entry

        for name, predictor in predictors.items():
            measurements[name] = measure(name, predictor)
        measurements[ONNX_FP32]["usable"] = (measurements[ONNX_FP32]["max_abs_prob_diff_vs_torch"] <= FP32_MAX_PROB_DIFF
                                             and tokenizer_ok)
        if not tokenizer_ok:
            measurements[ONNX_INT8]["usable"] = False
        # int8 alone outside the gate: measure it with its close calls re-run on fp32 (what would then serve)
        if (recheck_margin > 0 and measurements[ONNX_FP32]["usable"] and tokenizer_ok and texts
                and not _qualifies(measurements, ONNX_INT8, tolerance_points)):
            alone = measurements[ONNX_INT8]
            guarded = predictors[ONNX_INT8] = predictors[ONNX_INT8].with_recheck(
                Recheck(model_dir / ONNX_FP32_FILE, recheck_margin))
            entry = measure(ONNX_INT8, guarded)
            rate = recheck_rates.get(ONNX_INT8)
            recheck = {"runtime": ONNX_FP32, "file": ONNX_FP32_FILE, "margin": recheck_margin}
            entry["recheck"] = dict(recheck, rate=None if rate is None else round(rate, 4))
            entry["without_recheck"] = {k: alone[k] for k in ("accuracy", "agreement_with_torch",
                                                              "max_abs_prob_diff_vs_torch")}
            measurements[ONNX_INT8] = entry
        for name, latency in _latencies_ms(predictors, probe, latency_runs).items():
            measurements[name].update(latency)
    chosen = choose_runtime(measurements, tolerance_points)
    result = {
        "format": RUNTIME_FORMAT,
        "runtime": chosen,
        "tolerance_points": tolerance_points,
        "selection": (f"fastest single-text p50 among the runtimes within {tolerance_points} accuracy points of "
                      f"torch; latencies within {SPEED_TIE:.0%} of the fastest are ties, won by the smaller model"),
        "files": {name: [n for n in (f, f + ".data") if (model_dir / n).exists()] for name, f in ONNX_FILES.items()},
        "inputs": ["input_ids", "attention_mask"],
        "output": "logits",
        "exporter": exporter,
        "opset": opset,
        "attention": attention,
        "fused_operators": fused,
        "quantization": "dynamic int8, per-channel QInt8 weights (onnxruntime.quantization.quantize_dynamic)",
        "kept_fp32": {name: ratios[name] for name in kept_fp32},
        "outlier_ratio_cutoff": OUTLIER_RATIO,
        "recheck": recheck,
        "tokenizer": tokenizer_kind,
        "tokenizer_matches_hf": tokenizer_ok,
        "validation_examples": len(texts),
        "runtimes": measurements,
        "export_seconds": round(export_seconds, 2),
        "cpu_threads": torch.get_num_threads(),
        "library_versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                             "torch": torch.__version__},
    }
    atomic_write_json(model_dir / RUNTIME_FILE, result)
    return result


# ------------------------------------------------------------------ validate: int8 against fp32


def compare_runtimes(info: "VersionInfo", examples: Sequence[Any], *, include_torch: bool = False,
                     tolerance_points: float | None = None) -> dict[str, Any]:
    """Accuracy of the version's ONNX fp32 and int8 models (and torch with ``include_torch``) on
    ``examples`` (.text/.intent), the int8 - fp32 difference in points, and whether int8 is within the
    tolerance (default: the one recorded at export). For ``hotelbot validate``; does not write anything.
    """
    from .inference import Predictor

    model_dir = info.path / MODEL_SUBDIR
    spec = read_runtime_spec(model_dir)
    texts = [e.text for e in examples]
    truth = [e.intent for e in examples]
    tolerance = float(tolerance_points if tolerance_points is not None else
                      (spec or {}).get("tolerance_points", DEFAULT_TOLERANCE_POINTS))
    result: dict[str, Any] = {"available": spec is not None, "runtime": (spec or {}).get("runtime", TORCH),
                              "tolerance_points": tolerance, "examples": len(texts), "accuracy": {},
                              "int8_minus_fp32_points": None, "int8_within_tolerance": None,
                              "int8_agreement_with_fp32": None, "max_abs_prob_diff_int8_vs_fp32": None}
    labels: dict[str, list[str]] = {}
    probs: dict[str, Any] = {}
    names = [n for n in ONNX_FILES if (model_dir / ONNX_FILES[n]).is_file()] if spec is not None else []
    for name in names:
        predictor = OnnxPredictor.from_model_dir(model_dir, name, info.name)
        probs[name] = predictor.probabilities(texts) if texts else None
        labels[name] = predictor.predict_labels(texts) if texts else []
        result["accuracy"][name] = _accuracy(labels[name], truth)
        if predictor.recheck is not None:
            # int8 as it serves (close calls re-run on fp32) above; int8 alone here, for comparison
            plain = predictor.with_recheck(None)
            labels["int8-alone"] = plain.predict_labels(texts) if texts else []
            result["int8_recheck"] = {"margin": predictor.recheck.margin, "rate": predictor.recheck.rate,
                                      "accuracy_without": _accuracy(labels["int8-alone"], truth)}
    if include_torch:
        predictor = Predictor.from_version(info)
        labels[TORCH] = predictor.predict_labels(texts) if texts else []
        result["accuracy"][TORCH] = _accuracy(labels[TORCH], truth)
    fp32, int8 = result["accuracy"].get(ONNX_FP32), result["accuracy"].get(ONNX_INT8)
    if fp32 is not None and int8 is not None:
        import numpy as np

        delta = 100.0 * (int8 - fp32)
        result["int8_minus_fp32_points"] = round(delta, 4)
        result["int8_within_tolerance"] = -delta <= tolerance + 1e-9
        result["int8_agreement_with_fp32"] = _accuracy(labels[ONNX_INT8], labels[ONNX_FP32])
        if "int8-alone" in labels:
            result["int8_recheck"]["agreement_with_fp32_without"] = _accuracy(labels["int8-alone"], labels[ONNX_FP32])
        result["max_abs_prob_diff_int8_vs_fp32"] = round(float(np.abs(probs[ONNX_INT8] - probs[ONNX_FP32]).max()), 6)
    return result
