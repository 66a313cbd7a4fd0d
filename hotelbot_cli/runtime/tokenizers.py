"""Tokenizing for the ONNX predictor with ``tokenizers`` alone (no transformers): the saved
``tokenizer.json`` configured as the HF tokenizer pads and truncates (:class:`FullEncoder`), or, for a
Unigram tokenizer such as e5's, :class:`UnigramSubsetEncoder`, which gives the same ids without building
the whole 250k-piece model, from the index the export writes (``tokenizer.unigram.bin``)."""

from __future__ import annotations

import json
import logging
import threading
from bisect import bisect_left
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .._io import atomic_write_bytes
from ..errors import ModelError
from .layout import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_INDEX_FILE

if TYPE_CHECKING:
    from types import ModuleType

orjson: ModuleType | None  # None where it is not installed
try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency
    orjson = None

log = logging.getLogger("hotelbot.onnx")

TOKENIZER_FULL = "full"
TOKENIZER_SUBSET = "unigram-subset"
WORD_CACHE_SIZE = 100_000


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
    tokenizer.enable_truncation(
        max_length=int(max_length), stride=0, strategy="longest_first", direction=hf.get("truncation_side", "right")
    )
    tokenizer.enable_padding(
        direction=hf.get("padding_side", "right"),
        pad_id=int(pad_id),
        pad_type_id=0,
        pad_token=pad_token,
        length=None,
        pad_to_multiple_of=None,
    )


def load_fast_tokenizer(model_dir: Path, max_length: int) -> Any:
    """The saved ``tokenizer.json`` as a ``tokenizers.Tokenizer`` configured to give the ids the saved HF
    tokenizer gives for ``tokenizer(texts, padding=True, truncation=True, max_length=max_length)``."""
    from tokenizers import Tokenizer  # imported on use: `hotelbot --help` and torch predictors never load it

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
        return self.encode_with_offsets(texts)[:2]

    def encode_with_offsets(
        self, texts: Sequence[str]
    ) -> tuple[Any, Any, list[list[tuple[int, int]]], list[list[int]]]:
        """(input_ids, attention_mask, each token's character offsets in its text, special-token masks)."""
        import numpy as np  # imported on use: importing the runtime stays light (see runtime/__init__)

        batch = self.tokenizer.encode_batch(list(texts))
        return (
            np.array([e.ids for e in batch], dtype=np.int64),
            np.array([e.attention_mask for e in batch], dtype=np.int64),
            [list(e.offsets) for e in batch],
            [list(e.special_tokens_mask) for e in batch],
        )


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

    def __init__(
        self,
        skeleton: dict[str, Any],
        sorted_pieces: list[str],
        sorted_ids: list[int],
        scores: Any,
        model_dir: Path,
        max_length: int,
        hf: dict[str, Any],
    ) -> None:
        from tokenizers import Tokenizer  # imported on use (see load_fast_tokenizer)

        model = skeleton["model"]
        if not sorted_pieces or len(sorted_pieces) != len(sorted_ids) or len(scores) != len(sorted_ids):
            raise ValueError("inconsistent vocabulary")
        self._sorted, self._sorted_ids, self._scores = sorted_pieces, sorted_ids, scores
        self._unk_id = int(model["unk_id"]) if model.get("unk_id") is not None else None
        self._byte_fallback = bool(model.get("byte_fallback", False))
        self._max_piece = max(map(len, sorted_pieces))
        # The lowest-scoring piece fixes the unknown-character score (min score - 10): always keep it.
        self._always = {
            int(min(range(len(scores)), key=scores.__getitem__))
            if not hasattr(scores, "argmin")
            else int(scores.argmin())
        }
        if self._unk_id is not None:
            self._always.add(self._unk_id)
        if self._byte_fallback:
            self._always |= {
                i for p, i in zip(sorted_pieces, sorted_ids) if len(p) == 6 and p.startswith("<0x") and p.endswith(">")
            }
        added = {t["content"]: int(t["id"]) for t in skeleton.get("added_tokens") or [] if t.get("content")}
        self._added = list(added)
        self._added_by_id = {i: content for content, i in added.items()}
        self._special_ids = {int(t["id"]) for t in skeleton.get("added_tokens") or [] if t.get("special")}
        self._inverse: Any = None
        self._truncation_side = hf.get("truncation_side", "right")
        self._clean_up_spaces = bool(hf.get("clean_up_tokenization_spaces", False))
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
    def from_tokenizer_json(
        cls, data: dict[str, Any], model_dir: Path, max_length: int, hf: dict[str, Any]
    ) -> UnigramSubsetEncoder:
        vocab = data["model"]["vocab"]
        order = sorted(range(len(vocab)), key=lambda i: vocab[i][0])
        skeleton = {**data, "model": {**data["model"], "vocab": []}}
        return cls(
            skeleton, [vocab[i][0] for i in order], order, [float(p[1]) for p in vocab], model_dir, max_length, hf
        )

    @classmethod
    def from_index(cls, path: Path, model_dir: Path, max_length: int, hf: dict[str, Any]) -> UnigramSubsetEncoder:
        import numpy as np  # imported on use (see FullEncoder.encode)

        header, ids, scores, pieces = _read_unigram_index(path)
        return cls(
            header["skeleton"], pieces, ids.tolist(), np.asarray(scores, dtype=np.float64), model_dir, max_length, hf
        )

    # --- lookups
    def _lookup(self, piece: str) -> int | None:
        i = bisect_left(self._sorted, piece)
        if i < len(self._sorted) and self._sorted[i] == piece:
            return self._sorted_ids[i]
        return None

    def _pieces_in(self, word: str) -> dict[int, str]:
        """{id: piece} of every vocabulary piece that occurs in ``word``."""
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
        return self.encode_with_offsets(texts)[:2]

    def encode_with_offsets(
        self, texts: Sequence[str]
    ) -> tuple[Any, Any, list[list[tuple[int, int]]], list[list[int]]]:
        """(input_ids, attention_mask, each token's character offsets in its text, special-token masks); the
        offsets and masks are the unpadded tokens' (the segmentation is the whole tokenizer's, so are they)."""
        import numpy as np  # imported on use (see FullEncoder.encode)

        texts = list(texts)
        normalized = [self._normalize(t) for t in texts]
        if any(self._has_added(t) or self._has_added(n) for t, n in zip(texts, normalized)):
            return self._full_encoder().encode_with_offsets(texts)
        model, local_to_global = self._subset_model(normalized)
        with self._lock:  # the model is swapped per call: one encode at a time on this tokenizer
            self._tokenizer.model = model
            # One by one: encode_batch's thread pool costs more than it saves on a few short texts.
            batch = [self._tokenizer.encode(t) for t in texts]
        width = max((len(e.ids) for e in batch), default=0)
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, e in enumerate(batch):
            tokens = self._global_ids(e, local_to_global)
            cols = slice(width - len(tokens), width) if self._pad_left else slice(0, len(tokens))
            ids[row, cols] = tokens
            mask[row, cols] = np.asarray(e.attention_mask, dtype=np.int64)
        return ids, mask, [list(e.offsets) for e in batch], [list(e.special_tokens_mask) for e in batch]

    def _subset_model(self, normalized: Sequence[str]) -> tuple[Any, Any]:
        """(a Unigram model of only the pieces that occur in these normalized texts' words, plus the always-kept
        ones; the array mapping its ids to the whole vocabulary's)."""
        import numpy as np  # imported on use (see FullEncoder.encode)
        from tokenizers import models  # imported on use (see load_fast_tokenizer)

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
        return models.Unigram(vocab, unk, self._byte_fallback), np.asarray(order, dtype=np.int64)

    @staticmethod
    def _global_ids(encoding: Any, local_to_global: Any) -> Any:
        """An encoding's ids in the whole vocabulary: model tokens carry the small model's ids, mapped back;
        tokens the post-processor added (special_tokens_mask 1) already carry the whole vocabulary's."""
        import numpy as np  # imported on use (see FullEncoder.encode)

        local = np.asarray(encoding.ids, dtype=np.int64)
        special = np.asarray(encoding.special_tokens_mask, dtype=bool)
        return np.where(special, local, local_to_global[np.where(special, 0, local)])

    def _full_encoder(self) -> FullEncoder:
        """The whole tokenizer (for a text with an added token such as ``<s>``), loaded on first need."""
        with self._lock:
            if self._full is None:
                self._full = FullEncoder(load_fast_tokenizer(self._model_dir, self._max_length))
        return self._full

    # --- single texts and pairs, ids out and back (the generator's tokenizer: :class:`LightTextTokenizer`)
    def encode_ids(
        self, text: str, pair: str | None = None, *, add_special_tokens: bool = True, max_length: int | None = None
    ) -> list[int]:
        """The whole tokenizer's ids for ``text`` (and ``pair``, with the saved pair template), truncated
        longest-first to ``max_length`` tokens when given (as ``tokenizer(text, pair, truncation=...,
        max_length=...)``), with or without the special tokens."""
        texts = [text] + ([pair] if pair is not None else [])
        local_to_global = None
        if any(self._has_added(t) or self._has_added(self._normalize(t)) for t in texts):
            tokenizer = self._full_encoder().tokenizer
        else:
            model, local_to_global = self._subset_model([self._normalize(t) for t in texts])
            tokenizer = self._tokenizer
        with self._lock:  # this call's model, truncation and padding, restored after
            if local_to_global is not None:
                tokenizer.model = model
            truncation, padding = tokenizer.truncation, tokenizer.padding
            if max_length is not None:
                tokenizer.enable_truncation(
                    max_length=int(max_length), strategy="longest_first", direction=self._truncation_side
                )
            else:
                tokenizer.no_truncation()
            tokenizer.no_padding()
            try:
                e = tokenizer.encode(text, pair, add_special_tokens=add_special_tokens)
            finally:
                if truncation:
                    tokenizer.enable_truncation(
                        **{k: truncation[k] for k in ("max_length", "stride", "strategy", "direction")}
                    )
                else:
                    tokenizer.no_truncation()
                if padding:
                    tokenizer.enable_padding(
                        **{
                            k: padding[k]
                            for k in ("direction", "pad_id", "pad_type_id", "pad_token", "length", "pad_to_multiple_of")
                        }
                    )
        if local_to_global is None:
            return list(e.ids)
        return self._global_ids(e, local_to_global).tolist()

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` through the saved decoder, as the Hugging Face tokenizer's ``decode``."""
        pieces = [self._id_piece(int(i)) for i in ids if not (skip_special_tokens and int(i) in self._special_ids)]
        decoder = self._tokenizer.decoder
        text = decoder.decode(pieces) if decoder is not None else " ".join(pieces)
        if self._clean_up_spaces:  # tokenizer_config.json's clean_up_tokenization_spaces, as transformers does it
            for a, b in (
                (" .", "."),
                (" ?", "?"),
                (" !", "!"),
                (" ,", ","),
                (" ' ", "'"),
                (" n't", "n't"),
                (" 'm", "'m"),
                (" 's", "'s"),
                (" 've", "'ve"),
                (" 're", "'re"),
            ):
                text = text.replace(a, b)
        return text

    def _id_piece(self, piece_id: int) -> str:
        if piece_id in self._added_by_id:
            return self._added_by_id[piece_id]
        if self._inverse is None:
            import numpy as np  # imported on use (see FullEncoder.encode)

            inverse = np.empty(len(self._sorted_ids), dtype=np.int64)
            inverse[np.asarray(self._sorted_ids, dtype=np.int64)] = np.arange(len(self._sorted_ids))
            self._inverse = inverse
        return self._sorted[int(self._inverse[piece_id])]

    def _piece_at(self, piece_id: int) -> str:
        """The piece with ``piece_id`` (only for the few always-kept ids; a linear scan, then cached)."""
        if self._id_to_piece is None:
            self._id_to_piece = {}
        if piece_id not in self._id_to_piece:
            self._id_to_piece[piece_id] = self._sorted[self._sorted_ids.index(piece_id)]
        return self._id_to_piece[piece_id]


class LightTextTokenizer:
    """What the response generator needs of a Hugging Face tokenizer (``tokenizer(text, pair, truncation=...,
    max_length=..., add_special_tokens=...)["input_ids"]``, ``decode(ids, skip_special_tokens=...)`` and the
    special token ids) on a :class:`UnigramSubsetEncoder`: the same ids and text, without building e5's
    250k-piece model (~300 MB and ~1 s for the Hugging Face tokenizer)."""

    def __init__(self, encoder: UnigramSubsetEncoder, hf: dict[str, Any]) -> None:
        self.encoder = encoder
        added = {content: i for i, content in encoder._added_by_id.items()}
        for role in ("bos", "eos", "pad", "unk"):
            token = _token_content(hf.get(f"{role}_token"))
            setattr(self, f"{role}_token_id", None if token is None else added.get(token, encoder._lookup(token)))

    @classmethod
    def load(cls, model_dir: Path) -> LightTextTokenizer | None:
        """The light tokenizer of a saved Unigram tokenizer (tokenizer.json), None for any other kind."""
        model_dir = Path(model_dir)
        data = _read_tokenizer_json(model_dir)
        if not UnigramSubsetEncoder.eligible(data):
            return None
        hf = _read_hf_config(model_dir)
        limit = int(hf.get("model_max_length") or 512)
        return cls(UnigramSubsetEncoder.from_tokenizer_json(data, model_dir, min(limit, 100_000), hf), hf)

    def __call__(
        self,
        text: str,
        text_pair: str | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: Any = False,
        max_length: int | None = None,
    ) -> dict[str, list[int]]:
        limit = max_length if truncation and max_length is not None else None
        return {
            "input_ids": self.encoder.encode_ids(
                text, text_pair, add_special_tokens=add_special_tokens, max_length=limit
            )
        }

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.encoder.decode(ids, skip_special_tokens)


UNIGRAM_INDEX_MAGIC = b"HOTELBOT-UNIGRAM-INDEX/1\n"


def write_unigram_index(model_dir: Path) -> bool:
    """Write ``model_dir/tokenizer.unigram.bin`` for a Unigram tokenizer.json; False when not one.

    Layout: magic line, 8-byte little-endian header length, JSON header (counts + tokenizer.json without
    its vocabulary), int32 ids of the pieces in sorted order, float64 scores by id, then the sorted
    pieces as UTF-8 joined by newlines (a vocabulary with a newline in a piece gets no index).
    """
    import numpy as np  # imported on use (see FullEncoder.encode)

    model_dir = Path(model_dir)
    data = json.loads((model_dir / TOKENIZER_FILE).read_text("utf-8"))
    if not UnigramSubsetEncoder.eligible(data):
        return False
    vocab = data["model"]["vocab"]
    if any("\n" in p[0] for p in vocab):
        return False
    order = sorted(range(len(vocab)), key=lambda i: vocab[i][0])
    blob = "\n".join(vocab[i][0] for i in order).encode("utf-8")
    header = json.dumps(
        {"count": len(vocab), "pieces_bytes": len(blob), "skeleton": {**data, "model": {**data["model"], "vocab": []}}},
        ensure_ascii=False,
    ).encode("utf-8")
    body = (
        UNIGRAM_INDEX_MAGIC
        + len(header).to_bytes(8, "little")
        + header
        + np.asarray(order, dtype="<i4").tobytes()
        + np.asarray([p[1] for p in vocab], dtype="<f8").tobytes()
        + blob
    )
    atomic_write_bytes(model_dir / TOKENIZER_INDEX_FILE, body)
    return True


def _read_unigram_index(path: Path) -> tuple[dict[str, Any], Any, Any, list[str]]:
    import numpy as np  # imported on use (see FullEncoder.encode)

    try:
        raw = Path(path).read_bytes()
        if not raw.startswith(UNIGRAM_INDEX_MAGIC):
            raise ValueError("not a hotelbot unigram index")
        at = len(UNIGRAM_INDEX_MAGIC)
        size = int.from_bytes(raw[at : at + 8], "little")
        header = json.loads(raw[at + 8 : at + 8 + size])
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
        data = orjson.loads(raw) if orjson is not None else json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a tokenizer")
    return data
