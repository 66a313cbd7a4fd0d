"""The generator's model: its settings (:class:`GeneratorConfig`, :class:`GenerationSettings`), what
``generator.json`` records (:class:`GeneratorSpec`), the restricted vocabulary (:class:`VocabMap`), and
building, saving and loading the model. Three architectures, picked from the base model:

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
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence, cast

from ..._io import atomic_write_bytes, atomic_write_json
from ...config import TrainingConfig, load_settings
from ...errors import ConfigError, ModelError
from ...runtime.encoder import transformer_layers
from ...runtime.tokenizers import LightTextTokenizer
from ..exporting import CLEAN_SNIPPET, MODEL_CARD, TEXT_CLEANING, card

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedTokenizerBase

    from ...config import Settings

MODEL_SUBDIR = "model"
DATA_SUBDIR = "data"
GENERATOR_FILE = "generator.json"
GENERATION_FILE = "generation.json"
VOCAB_FILE = "vocab_map.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"
GENERATOR_FORMAT = "hotelbot-generator/1"
VOCAB_FORMAT = "hotelbot-vocab-map/1"
ARCHITECTURES = ("encoder-decoder", "seq2seq", "causal")


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
    def build(
        cls, token_ids: Iterable[Iterable[int]], *, pad: int, bos: int, eos: int, unk: int, full_vocab_size: int
    ) -> VocabMap:
        specials = []
        for special in (pad, bos, eos, unk):
            if special in specials:
                raise ModelError(
                    f"the tokenizer uses id {special} for two of pad/bos/eos/unk; the decoder needs four "
                    "distinct special tokens"
                )
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
        return {
            "format": VOCAB_FORMAT,
            "full_vocab_size": self.full_vocab_size,
            "specials": {"pad": self.pad, "bos": self.bos, "eos": self.eos, "unk": self.unk},
            "ids": self.ids,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VocabMap:
        if data.get("format") != VOCAB_FORMAT:
            raise ModelError(f"not a hotelbot vocabulary map (format {data.get('format')!r})")
        try:
            s = data["specials"]
            return cls(
                [int(i) for i in data["ids"]],
                int(data["full_vocab_size"]),
                int(s["pad"]),
                int(s["bos"]),
                int(s["eos"]),
                int(s["unk"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"vocabulary map is malformed: {exc}") from None


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
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown generation setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(data))

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        out: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            out.update(do_sample=True, top_p=self.top_p, temperature=self.temperature, num_beams=1)
        else:
            out.update(
                do_sample=False,
                num_beams=self.num_beams,
                length_penalty=self.length_penalty if self.num_beams > 1 else 1.0,
                early_stopping=self.num_beams > 1,
            )
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
    # "scratch": a new decoder (below); "encoder": warm-started from the encoder's bottom layers (BERT2BERT,
    # Rothe et al. 2020): the encoder's width, heads and FFN, its self-attention and FFN weights copied
    # (cross-attention new); measured in benchmarks/replies.py --train-generators, not the default
    decoder_init: str = "scratch"
    decoder_hidden: int = 0  # 0: the encoder's hidden size, at most 256
    decoder_heads: int = 0  # 0: decoder hidden size / 64 (at least 1)
    decoder_ffn: int = 0  # 0: 4 x decoder hidden size
    dropout: float = 0.1
    freeze_encoder: str = "auto"  # auto (frozen without a GPU) | yes | no
    restrict_vocab: bool = True
    max_source_length: int = 192
    max_target_length: int = 96
    grounding_passages: int = 2  # knowledge-base chunks given as context (0: never ground)
    passage_chars: int = 300  # each passage is cut to this many characters
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
        if self.decoder_init not in ("scratch", "encoder"):
            raise ConfigError(f"decoder_init must be scratch or encoder, got {self.decoder_init!r}")
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
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown generator setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(data))

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> GeneratorConfig:
        """The generator's config from the project settings plus ``overrides`` (None = not given).

        ``base_model`` and ``seed`` come from training_config. epochs, batch_size, learning_rate,
        early_stopping_patience and max_length (-> max_source_length) are taken from training_config only
        when they differ from the CLASSIFIER's defaults (set by a file, a profile, the environment or a flag):
        the classifier's values (4 epochs, 1e-4) are wrong for a decoder trained from scratch, so left
        alone they give way to the generator's own defaults. Generation settings go in ``generation``."""
        t, d = settings.training, TrainingConfig()
        values: dict[str, Any] = {"base_model": t.base_model, "seed": t.seed}
        for ours, theirs in (
            ("epochs", "epochs"),
            ("batch_size", "batch_size"),
            ("learning_rate", "learning_rate"),
            ("early_stopping_patience", "early_stopping_patience"),
            ("max_source_length", "max_length"),
        ):
            if getattr(t, theirs) != getattr(d, theirs):
                values[ours] = getattr(t, theirs)
        generation = dict(overrides.pop("generation", None) or {})
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls.from_dict(values)
        if generation:
            cfg.generation = GenerationSettings.from_dict(
                {**cfg.generation.to_dict(), **{k: v for k, v in generation.items() if v is not None}}
            )
        return cfg


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No weight-loading bars or config-overwrite notices on stderr (modeling.quiet_transformers)."""
    from ...modeling import quiet_transformers as quiet  # modeling imports torch

    with quiet():
        yield


_ENCODER_ONLY = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "electra",
    "camembert",
    "deberta",
    "deberta-v2",
    "albert",
    "mpnet",
    "modernbert",
}


def detect_architecture(hf_config: Any) -> str:
    """``seq2seq`` for encoder-decoder configs (T5, mT5, BART), ``causal`` for decoder-only LMs (GPT-2, ...),
    ``encoder-decoder`` for encoder-only models (BERT, XLM-R, e5), which get a decoder trained from scratch."""
    from transformers.models.auto.modeling_auto import (  # transformers is heavy: imported on use
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

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
    return {
        "bos": bos if bos is not None else eos,
        "eos": eos,
        "pad": pad if pad is not None else eos,
        "unk": unk if unk is not None else eos,
    }


def _encoder_input_conventions(resolved: Any) -> tuple[str, str]:
    """(query prefix, passage prefix): e5 wants "query: " / "passage: "."""
    from ..knowledge.embedding import PASSAGE_PREFIXES, _input_conventions  # imports numpy

    query_prefix, _ = _input_conventions(resolved)
    return query_prefix, PASSAGE_PREFIXES.get(query_prefix, query_prefix)


@dataclass
class GeneratorSpec:
    """What ``generator.json`` holds: everything needed to rebuild inputs and decode outputs."""

    architecture: str
    base_model: dict[str, Any]
    encoder: dict[str, Any]  # {"saved": bool, "spec", "location", "fingerprint"} (encoder-decoder only)
    query_prefix: str
    passage_prefix: str
    max_source_length: int
    max_target_length: int
    grounding_passages: int
    passage_chars: int
    special_ids: dict[str, int]  # tokenizer ids
    restricted_vocab: bool
    grounded: bool = False
    format: str = GENERATOR_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorSpec:
        if data.get("format") != GENERATOR_FORMAT:
            raise ModelError(f"not a hotelbot generator (format {data.get('format')!r})")
        try:
            return cls(**{k: data[k] for k in (f.name for f in fields(cls)) if k in data})
        except TypeError as exc:
            raise ModelError(f"{GENERATOR_FILE} is incomplete: {exc}") from None


def should_freeze_encoder(setting: str) -> bool:
    """``freeze_encoder``: "yes", or "auto" without a GPU."""
    import torch  # heavy: imported on use

    return setting == "yes" or (setting == "auto" and not torch.cuda.is_available())


def _new_encoder_decoder(cfg: GeneratorConfig, tokenizer: Any, encoder: Any, vocab: VocabMap | None) -> Any:
    """EncoderDecoderModel: the pretrained encoder + a BERT-style decoder from scratch (see the module doc)."""
    import torch  # heavy: imported on use
    from transformers import BertConfig, BertLMHeadModel, EncoderDecoderModel  # heavy: imported on use

    enc_hidden = int(encoder.config.hidden_size)
    warm = cfg.decoder_init == "encoder"
    source_layers = list(transformer_layers(encoder) or [])
    if warm and len(source_layers) < cfg.decoder_layers:
        raise ConfigError(
            f"decoder_init encoder: the encoder has {len(source_layers)} BERT layers to copy, "
            f"decoder_layers is {cfg.decoder_layers}"
        )
    hidden = enc_hidden if warm else (cfg.decoder_hidden or min(enc_hidden, 256))
    specials = _special_ids(tokenizer)
    if vocab is not None:
        dec_vocab, pad, bos, eos = len(vocab), vocab.pad, vocab.bos, vocab.eos
    else:
        dec_vocab = int(encoder.config.vocab_size)
        pad, bos, eos = specials["pad"], specials["bos"], specials["eos"]
    heads = int(encoder.config.num_attention_heads) if warm else (cfg.decoder_heads or max(1, hidden // 64))
    if hidden % heads:
        raise ConfigError(f"decoder_heads ({heads}) must divide the encoder's hidden size ({hidden})")
    positions = max(128, cfg.max_target_length + 2, cfg.generation.max_new_tokens + 2)
    dec_config = BertConfig(
        vocab_size=dec_vocab,
        hidden_size=hidden,
        num_hidden_layers=cfg.decoder_layers,
        num_attention_heads=heads,
        intermediate_size=int(encoder.config.intermediate_size) if warm else (cfg.decoder_ffn or 4 * hidden),
        hidden_act=str(getattr(encoder.config, "hidden_act", "gelu")) if warm else "gelu",
        layer_norm_eps=float(getattr(encoder.config, "layer_norm_eps", 1e-12)) if warm else 1e-12,
        max_position_embeddings=positions,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        is_decoder=True,
        add_cross_attention=True,
        tie_word_embeddings=True,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
        type_vocab_size=1,
    )
    decoder: Any = BertLMHeadModel(dec_config)  # typed Any: nn.Module's __getattr__ types .weight Tensor | Module
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
        if warm:  # BERT2BERT: the encoder's bottom layers (self-attention, FFN, norms) start the decoder's
            for target, layer in zip(decoder.bert.encoder.layer, source_layers):
                for part in ("attention", "intermediate", "output"):
                    getattr(target, part).load_state_dict(getattr(layer, part).state_dict())
            norm = getattr(getattr(encoder, "embeddings", None), "LayerNorm", None)
            if norm is not None:
                decoder.bert.embeddings.LayerNorm.load_state_dict(norm.state_dict())
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)  # adds enc_to_dec_proj when the sizes differ
    _set_generation_ids(model, bos=bos, eos=eos, pad=pad, vocab_size=dec_vocab)
    return model


def _state_statistics(states: Sequence[Any]) -> tuple[Any, Any]:
    """Per-dimension mean and spread (at least 1e-4) of encoder states, each (..., dim)."""
    import torch  # heavy: imported on use

    rows = torch.cat([s.reshape(-1, s.shape[-1]).float() for s in states])
    return rows.mean(0), rows.std(0).clamp(min=1e-4)


def standardize_projection(model: Any, states: Sequence[Any], seed: int = 0) -> bool:
    """Initialise ``enc_to_dec_proj`` (present when the decoder's hidden size differs from the encoder's) as
    per-dimension standardisation of the encoder's states followed by a random orthogonal projection.

    Sentence encoders' token states share a large common component (e5: per-dimension means up to 0.46
    against a typical per-dimension spread of 0.12, mean-pooled messages at cosine 0.86 to each other):
    a cross-attention trained from scratch sees tiny differences between messages and learns to ignore
    them. Standardised, the differences reach the decoder at unit scale. ``states``: (tokens, dim) rows
    of the training inputs' encoder states. Returns False when the model has no projection."""
    import torch  # heavy: imported on use

    proj = getattr(model, "enc_to_dec_proj", None)
    if proj is None or not states:
        return False
    mean, std = _state_statistics(states)
    generator = torch.Generator().manual_seed(seed)
    out_dim, in_dim = proj.weight.shape
    q, _ = torch.linalg.qr(torch.randn(max(out_dim, in_dim), min(out_dim, in_dim), generator=generator))
    rotation = q if out_dim >= in_dim else q.T  # (out, in) with orthonormal rows or columns
    rotation = rotation[:out_dim, :in_dim] if out_dim >= in_dim else rotation
    with torch.no_grad():
        proj.weight.copy_(rotation / std[None, :])
        proj.bias.copy_(-(proj.weight @ mean))
    return True


def standardize_cross_attention(model: Any, states: Sequence[Any]) -> bool:
    """For a decoder as wide as the encoder (no ``enc_to_dec_proj``): fold :func:`standardize_projection`'s
    per-dimension standardisation of the encoder's states into each cross-attention's key and value layers
    (W / std, b - W mean / std), for the same reason. Returns False when there is nothing to fold into."""
    import torch  # heavy: imported on use

    layers = getattr(getattr(getattr(getattr(model, "decoder", None), "bert", None), "encoder", None), "layer", None)
    if getattr(model, "enc_to_dec_proj", None) is not None or not layers or not states:
        return False
    mean, std = _state_statistics(states)
    with torch.no_grad():
        for layer in layers:
            for linear in (layer.crossattention.self.key, layer.crossattention.self.value):
                linear.weight.div_(std[None, :])
                linear.bias.sub_(linear.weight @ mean)
    return True


def _set_generation_ids(
    model: Any, *, bos: int | None, eos: int | None, pad: int | None, vocab_size: int | None = None
) -> None:
    model.config.decoder_start_token_id = bos
    model.config.pad_token_id = pad
    model.config.eos_token_id = eos
    if vocab_size is not None:
        model.config.vocab_size = vocab_size
    gc = model.generation_config
    gc.decoder_start_token_id, gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = bos, bos, eos, pad


def encoder_of(model: Any, architecture: str) -> Any | None:
    return model.get_encoder() if architecture in ("encoder-decoder", "seq2seq") else None


def freeze_encoder(model: Any, architecture: str) -> int:
    """Freeze the encoder's own parameters (not those it shares with the decoder, e.g. T5's embeddings)."""
    encoder = encoder_of(model, architecture)
    if encoder is None:
        return 0
    shared = {
        id(p)
        for name, p in model.named_parameters()
        if not name.startswith("encoder.") and any(p is q for q in encoder.parameters())
    }
    frozen = 0
    for p in encoder.parameters():
        if id(p) not in shared and p.requires_grad:
            p.requires_grad_(False)
            frozen += p.numel()
    encoder.eval()
    return frozen


def build_new_model(
    cfg: GeneratorConfig, models_dir: Path, vocab_texts: Callable[[Any], list[list[int]]]
) -> tuple[Any, Any, GeneratorSpec, VocabMap | None]:
    """(model, tokenizer, spec, vocab map) for a fresh training run."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,  # transformers is heavy: imported on use
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    from ...modeling import load_base_encoder, resolve_base_model  # modeling imports torch

    resolved = resolve_base_model(cfg.base_model, Path(models_dir))
    try:
        with quiet_transformers():
            hf_config = AutoConfig.from_pretrained(resolved.location)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load base model {cfg.base_model!r}: {str(exc).strip().splitlines()[0]}",
            hint="offline, use a local directory or packaged:multilingual-e5-small",
        ) from None
    architecture = detect_architecture(hf_config)
    base = {
        "spec": cfg.base_model,
        "location": resolved.location,
        "model_type": hf_config.model_type,
        "packaged": resolved.packaged,
    }
    vocab = None
    encoder_record: dict[str, Any] = {}
    if architecture == "encoder-decoder":
        with quiet_transformers():
            tokenizer, encoder = load_base_encoder(resolved)
        query_prefix, passage_prefix = _encoder_input_conventions(resolved)
        specials = _special_ids(tokenizer)
        if cfg.restrict_vocab:
            vocab = VocabMap.build(
                vocab_texts(tokenizer),
                pad=specials["pad"],
                bos=specials["bos"],
                eos=specials["eos"],
                unk=specials["unk"],
                full_vocab_size=int(encoder.config.vocab_size),
            )
        model = _new_encoder_decoder(cfg, tokenizer, encoder, vocab)
        from ..knowledge.embedding import model_fingerprint  # imports numpy

        encoder_record = {
            "spec": cfg.base_model,
            "location": resolved.location,
            "fingerprint": model_fingerprint(resolved.location),
            "packaged": resolved.packaged,
        }
    else:
        try:
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(resolved.location)
                auto = AutoModelForSeq2SeqLM if architecture == "seq2seq" else AutoModelForCausalLM
                model = auto.from_pretrained(resolved.location)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"cannot load base model {cfg.base_model!r} as a {architecture} LM: {str(exc).strip().splitlines()[0]}"
            ) from None
        query_prefix = passage_prefix = ""
        specials = _special_ids(tokenizer)
        if architecture == "seq2seq":
            start = model.config.decoder_start_token_id
            _set_generation_ids(
                model,
                bos=int(start if start is not None else specials["pad"]),
                eos=specials["eos"],
                pad=specials["pad"],
            )
        else:
            model.config.pad_token_id = specials["pad"]
            model.generation_config.pad_token_id = specials["pad"]
            model.generation_config.eos_token_id = specials["eos"]
    spec = GeneratorSpec(
        architecture,
        base,
        encoder_record,
        query_prefix,
        passage_prefix,
        cfg.max_source_length,
        cfg.max_target_length,
        cfg.grounding_passages,
        cfg.passage_chars,
        specials,
        vocab is not None,
    )
    return model, tokenizer, spec, vocab


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


def save_generator(
    model: Any,
    tokenizer: Any,
    spec: GeneratorSpec,
    generation: GenerationSettings,
    vocab: VocabMap | None,
    out_dir: Path,
) -> None:
    """Write ``generator.json``, ``generation.json``, ``vocab_map.json`` and ``model/`` into ``out_dir``."""
    from safetensors.torch import save_file  # imports torch

    out_dir = Path(out_dir)
    model_dir = out_dir / MODEL_SUBDIR
    model_dir.mkdir(parents=True, exist_ok=True)
    if spec.architecture == "encoder-decoder":
        referenced = not spec.encoder.get("saved", True)
        state = _unique_state(model, "encoder." if referenced else None)
        save_file(
            state,
            str(model_dir / WEIGHTS_FILE),
            metadata={"format": GENERATOR_FORMAT, "encoder": "referenced" if referenced else "saved"},
        )
        atomic_write_bytes(model_dir / MODEL_CONFIG_FILE, model.config.to_json_string().encode("utf-8"))
    else:
        model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    atomic_write_json(out_dir / GENERATOR_FILE, spec.to_dict())
    atomic_write_json(out_dir / GENERATION_FILE, generation.to_dict())
    if vocab is not None:
        atomic_write_json(out_dir / VOCAB_FILE, vocab.to_dict())


def _load_encoder_decoder(gen_dir: Path, spec: GeneratorSpec, models_dir: Path | None, encoder: Any | None) -> Any:
    import torch  # heavy: imported on use
    from safetensors.torch import load_file  # imports torch
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,  # heavy: imported on use
        EncoderDecoderConfig,
        EncoderDecoderModel,
    )

    from ...modeling import _no_pooler_kwargs  # modeling imports torch

    model_dir = gen_dir / MODEL_SUBDIR
    try:
        config = EncoderDecoderConfig.from_dict(json.loads((model_dir / MODEL_CONFIG_FILE).read_text("utf-8")))
        state = load_file(str(model_dir / WEIGHTS_FILE))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot load the generator in {gen_dir}: {exc}") from None
    saved = spec.encoder.get("saved", True)
    with quiet_transformers():
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
        raise ModelError(
            f"the generator's weights do not fit its architecture (missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    with torch.no_grad():
        result = model.load_state_dict(state, strict=False)
    left = [k for k in result.missing_keys if k in expected]
    if left or result.unexpected_keys:
        raise ModelError(f"the generator's weights did not load: {left[:2] or result.unexpected_keys[:2]}")
    _set_generation_ids(
        model,
        bos=config.decoder_start_token_id,
        eos=config.eos_token_id,
        pad=config.pad_token_id,
        vocab_size=cast("PreTrainedConfig", config.decoder).vocab_size,  # from_dict made it a config
    )
    return model.eval()


def load_referenced_encoder(spec: GeneratorSpec, models_dir: Path | None) -> Any:
    """The frozen packaged encoder a generator was trained on, re-materialised and fingerprint-checked."""
    from ...modeling import load_base_encoder, resolve_base_model  # modeling imports torch
    from ..knowledge.embedding import model_fingerprint  # imports numpy

    record = spec.encoder
    location = record.get("location", "")
    target = location if location and Path(location).is_dir() else record["spec"]
    if models_dir is None and not Path(target).is_dir():
        models_dir = load_settings().paths.models_dir
    resolved = resolve_base_model(target, Path(models_dir or "."))
    if model_fingerprint(resolved.location) != record.get("fingerprint"):
        raise ModelError(
            f"the encoder {record.get('spec')} ({resolved.location}) is not the one the generator was trained with",
            hint="retrain it: hotelbot train --model-type generator",
        )
    _, encoder = load_base_encoder(resolved, frozen=True, tokenizer=False)
    return encoder


def load_generator(
    gen_dir: Path, models_dir: Path | None = None, *, encoder: Any | None = None, light_tokenizer: bool = False
) -> tuple[Any, Any, GeneratorSpec, GenerationSettings, VocabMap | None]:
    """(model, tokenizer, spec, generation settings, vocab map) from a version's ``generator/``.
    ``encoder``: an already loaded copy of a referenced encoder to share (e.g. the knowledge base's).
    ``light_tokenizer``: for inference, a Unigram tokenizer (e5's) as
    :class:`~hotelbot_cli.runtime.tokenizers.LightTextTokenizer` (the same ids and text; ~300 MB and ~0.5 s
    less than the Hugging Face one); other tokenizers, and export, get the Hugging Face tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer  # heavy: imported on use

    gen_dir = Path(gen_dir)
    try:
        spec = GeneratorSpec.from_dict(json.loads((gen_dir / GENERATOR_FILE).read_text("utf-8")))
        generation = GenerationSettings.from_dict(json.loads((gen_dir / GENERATION_FILE).read_text("utf-8")))
        vocab = (
            VocabMap.from_dict(json.loads((gen_dir / VOCAB_FILE).read_text("utf-8"))) if spec.restricted_vocab else None
        )
        tokenizer: LightTextTokenizer | PreTrainedTokenizerBase | None = (
            LightTextTokenizer.load(gen_dir / MODEL_SUBDIR) if light_tokenizer else None
        )
        if tokenizer is None:
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(str(gen_dir / MODEL_SUBDIR))
    except FileNotFoundError as exc:
        raise ModelError(
            f"the generator in {gen_dir} is incomplete: {Path(exc.filename or '').name} is missing"
        ) from None
    except (OSError, ValueError, json.JSONDecodeError, ConfigError) as exc:
        raise ModelError(f"cannot load the generator in {gen_dir}: {exc}") from None
    if spec.architecture == "encoder-decoder":
        model = _load_encoder_decoder(gen_dir, spec, models_dir, encoder)
    elif spec.architecture in ARCHITECTURES:
        auto = AutoModelForSeq2SeqLM if spec.architecture == "seq2seq" else AutoModelForCausalLM
        try:
            with quiet_transformers():
                model = auto.from_pretrained(str(gen_dir / MODEL_SUBDIR)).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the generator in {gen_dir}: {exc}") from None
    else:
        raise ModelError(f"unknown generator architecture {spec.architecture!r}")
    return model, tokenizer, spec, generation, vocab


# ------------------------------------------------------------------------------------------------ export

_EXPORT_CLASSES = {
    "encoder-decoder": "EncoderDecoderModel",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "causal": "AutoModelForCausalLM",
}


def _prefixed(prefix: str, what: str) -> str:
    return f"the prefix {prefix!r} + {what}" if prefix else f"{what} (no prefix)"


def _generator_card(spec: GeneratorSpec, directory: str, version: str, restricted: bool) -> str:
    """How to reproduce `hotelbot reply`'s decoding from the exported generator (the snippet runs without
    grounding passages; step 2 says how a grounded generator gets them)."""
    cls = _EXPORT_CLASSES[spec.architecture]
    causal = spec.architecture == "causal"
    grounding = (
        f" Grounded (`grounded` in `{GENERATOR_FILE}`): the passages are the top {spec.grounding_passages} "
        "chunks of the version's knowledge base for the message (its own export shows how to search them), "
        f'each as "HEADING: TEXT" cut to {spec.passage_chars} characters, joined by spaces'
        if spec.grounded
        else ""
    )
    if causal:
        inputs = (
            "Build the prompt: the bos token, then `Contexto: PASSAGES\\n` when grounded, then "
            f"`Cliente: MESSAGE\\nRespuesta:`, within `max_source_length` = {spec.max_source_length} tokens."
            + (grounding + "." if grounding else "")
        )
    else:
        inputs = (
            f"Encoder input: {_prefixed(spec.query_prefix, 'the message')}, truncated at `max_source_length` = "
            f"{spec.max_source_length}."
            + (
                grounding + f"; they are the second segment, {_prefixed(spec.passage_prefix, 'the passages')}, "
                "the pair truncated longest-first."
                if grounding
                else ""
            )
        )
    steps = [
        f"Clean the guest's message: {TEXT_CLEANING} (`clean` below).",
        inputs,
        f"Generate with the decoding settings of `{GENERATION_FILE}` (beam search unless `do_sample`)"
        + (
            ": the decoder's vocabulary is restricted, so the unknown and padding ids are suppressed."
            if restricted
            else "."
        ),
        (
            f"Map the generated ids through `{VOCAB_FILE}` (`ids[i]` is the tokenizer id of decoder id i), "
            if restricted
            else ""
        )
        + "decode skipping special tokens, and clean the text.",
    ]
    if causal:
        build = (
            'passages = ""  # grounded: the knowledge-base passages for the message (step 2)\n'
            'context = tokenizer(f"Contexto: {passages}\\n", add_special_tokens=False)["input_ids"] if passages '
            "else []\n"
            "bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []\n"
            'ids = bos + context + tokenizer(f"Cliente: {message}\\nRespuesta:", add_special_tokens=False)'
            '["input_ids"]\n'
            'enc = {"input_ids": torch.tensor([ids])}\n'
            'enc["attention_mask"] = torch.ones_like(enc["input_ids"])\n'
        )
        limit = 'g["max_new_tokens"]'
    else:
        build = (
            'passages = ""  # grounded: the knowledge-base passages for the message (step 2)\n'
            'pair = [spec["passage_prefix"] + passages] if passages else []\n'
            'enc = tokenizer(spec["query_prefix"] + message, *pair, truncation="longest_first",\n'
            '                max_length=spec["max_source_length"], return_tensors="pt")\n'
        )
        limit = (
            'min(g["max_new_tokens"], model.config.decoder.max_position_embeddings - 1)'
            if spec.architecture == "encoder-decoder"
            else 'g["max_new_tokens"]'
        )
    snippet = (
        CLEAN_SNIPPET
        + f"""
import json

import torch
from transformers import AutoTokenizer, {cls}

path = "{directory}"
spec = json.load(open(f"{{path}}/{GENERATOR_FILE}", encoding="utf-8"))
g = json.load(open(f"{{path}}/{GENERATION_FILE}", encoding="utf-8"))
tokenizer = AutoTokenizer.from_pretrained(path)
model = {cls}.from_pretrained(path).eval()

message = clean("¿a qué hora es el desayuno?")
{build}kwargs = {{"max_new_tokens": {limit},
          "no_repeat_ngram_size": g["no_repeat_ngram_size"], "repetition_penalty": g["repetition_penalty"]}}
kwargs["min_new_tokens"] = min(g["min_new_tokens"], kwargs["max_new_tokens"])
if g["do_sample"]:
    kwargs.update(do_sample=True, top_p=g["top_p"], temperature=g["temperature"], num_beams=1)
else:
    kwargs.update(do_sample=False, num_beams=g["num_beams"], early_stopping=g["num_beams"] > 1,
                  length_penalty=g["length_penalty"] if g["num_beams"] > 1 else 1.0)
"""
    )
    if restricted:
        snippet += f"""vocab = json.load(open(f"{{path}}/{VOCAB_FILE}", encoding="utf-8"))
kwargs["suppress_tokens"] = [vocab["specials"]["unk"], vocab["specials"]["pad"]]
"""
    snippet += (
        "with torch.no_grad():\n"
        '    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],\n'
        "                         **kwargs)[0]\n"
    )
    if causal:
        snippet += 'out = out[enc["input_ids"].shape[1]:]\n'
    snippet += 'ids = [vocab["ids"][int(i)] for i in out]\n' if restricted else "ids = out.tolist()\n"
    snippet += "reply = clean(tokenizer.decode(ids, skip_special_tokens=True))\nprint(reply)\n"
    return card(
        f"hotelbot response generator ({version})",
        "text-generation" if causal else "text2text-generation",
        f"The response generator of hotelbot version {version}: a complete `{cls}` (every weight saved here, "
        f"the encoder included) with its tokenizer; `{GENERATOR_FILE}` records how inputs are built and "
        f"`{GENERATION_FILE}` the decoding settings.",
        steps,
        snippet,
    )


def export_generator(gen_dir: Path, models_dir: Path | None, target: Path, version: str) -> dict[str, Any]:
    """`hotelbot export --format hf` of a version's generator: loaded with :func:`load_generator` (a referenced
    encoder is re-materialised from its package and fingerprint-checked), saved with ``save_pretrained`` as a
    complete model (``EncoderDecoderModel.from_pretrained`` / the Auto class of its architecture loads it), with
    its tokenizer, ``generator.json``, ``generation.json``, ``vocab_map.json`` (restricted vocabulary) and the
    model card. Returns the export record's facts."""
    model, tokenizer, spec, generation, vocab = load_generator(gen_dir, models_dir)
    target.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(str(target))
        tokenizer.save_pretrained(str(target))
    record = spec.to_dict()  # without this machine's paths
    record["base_model"] = {k: v for k, v in spec.base_model.items() if k != "location"}
    if spec.architecture == "encoder-decoder":
        record["encoder"] = {
            **{k: v for k, v in spec.encoder.items() if k != "location"},
            "saved": True,
            "in_version": "saved" if spec.encoder.get("saved", True) else "referenced",
        }
    atomic_write_json(target / GENERATOR_FILE, record)
    atomic_write_json(target / GENERATION_FILE, generation.to_dict())
    if vocab is not None:
        atomic_write_json(target / VOCAB_FILE, vocab.to_dict())
    (target / MODEL_CARD).write_text(_generator_card(spec, target.name, version, vocab is not None), encoding="utf-8")
    return {
        "loads_with": f"{_EXPORT_CLASSES[spec.architecture]}.from_pretrained + AutoTokenizer ({MODEL_CARD} shows "
        "how to build inputs and decode)",
        "architecture": spec.architecture,
        "encoder_in_version": "saved" if spec.encoder.get("saved", True) else "referenced",
        "restricted_vocab": vocab is not None,
    }
