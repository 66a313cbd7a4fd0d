"""Writing the fp32 ONNX graph of a trained classifier: encoder + pooling + head in one graph,
(input_ids, attention_mask) -> logits (+ the pooled embedding for a kNN out-of-scope detector) with dynamic batch and sequence axes, exported with eager attention,
fused by onnxruntime's transformer optimizer (Attention, EmbedLayerNormalization, SkipLayerNormalization,
BiasGelu), its large initializers (the word embeddings) moved to a memory-mapped ``.data`` file.

torch, onnx, onnxruntime and numpy are imported inside the functions that use them: the CLI imports
this package (train, validate) and must not pay for them before an export runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, cast

from ..data import clean_text
from ..runtime.detector import EMBEDDING_OUTPUT, KNN
from ..runtime.layout import EMBEDDINGS_DATA_SUFFIX, EMBEDDINGS_FILE
from ..runtime.onnx import open_session

if TYPE_CHECKING:
    from torch.onnx import ONNXProgram

log = logging.getLogger("hotelbot.onnx")

EXTERNAL_DATA_THRESHOLD = 1 << 20  # initializers of 1 MiB or more go to model*.onnx.data (memory-mapped)
OPSET = 17
PROBE_TEXTS = (
    "hola",
    "quiero ver las noticias",
    "¿a qué hora es el desayuno?",
    "la clave del wifi no funciona en mi habitación, ¿me ayudan por favor?",
)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Keep exporter/quantizer chatter (warnings, root-logger advice) off the CLI's stderr."""

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


def _export_raw(
    model: Any,
    tokenizer: Any,
    path: Path,
    opset: int,
    *,
    prefix: str | None = None,
    max_length: int | None = None,
    per_token: bool = False,
) -> str:
    """Write encoder + pooling + head as one ONNX graph; returns the exporter used.

    A classifier's prefix and length come from its ``classifier_config``; a model without one (the entity
    tagger) passes ``prefix`` and ``max_length``, and ``per_token`` when its ``logits`` are per token
    (batch, sequence, tags)."""
    import torch  # heavy: imported on use (module docstring)

    outputs = ("logits",) if per_token else output_names(model)
    if prefix is None or max_length is None:
        prefix, max_length = model.classifier_config.query_prefix, model.classifier_config.max_length

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                **({"return_embedding": True} if EMBEDDING_OUTPUT in outputs else {}),
            )
            return tuple(out[name] for name in outputs) if len(outputs) > 1 else out["logits"]

    wrapped = LogitsOnly(model).eval()
    # Two texts of different lengths: the traced graph sees padding, so nothing is specialised to it.
    enc = tokenizer(
        [prefix + t for t in PROBE_TEXTS[2:]],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    args = (enc["input_ids"], enc["attention_mask"])
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"} if per_token else {0: "batch"},
        "sentiment_logits": {0: "batch"},
        "token_logits": {0: "batch", 1: "sequence"},
        EMBEDDING_OUTPUT: {0: "batch"},
    }
    axes = {k: v for k, v in axes.items() if k in ("input_ids", "attention_mask", *outputs)}
    with _quiet_export(), torch.inference_mode(False), torch.no_grad():
        try:
            # The TorchScript exporter: seconds (dynamo takes several times longer) and its graph
            # fuses and quantizes as is.
            torch.onnx.export(
                wrapped,
                args,
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=list(outputs),
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
            return "torchscript"
        except Exception as exc:  # noqa: BLE001 - fall back to the dynamo exporter (a torch without the old one)
            log.warning("TorchScript ONNX export failed (%s); trying the dynamo exporter", exc)
        batch = torch.export.Dim("batch", min=1, max=4096)
        seq = torch.export.Dim("sequence", min=1, max=max(2, int(max_length)))
        with contextlib.redirect_stdout(io.StringIO()):
            program = cast(  # dynamo=True: always a program (None is the TorchScript exporter's return)
                "ONNXProgram",
                torch.onnx.export(
                    wrapped,
                    args,
                    None,
                    input_names=["input_ids", "attention_mask"],
                    output_names=list(outputs),
                    dynamo=True,
                    verbose=False,
                    opset_version=18,
                    dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                ),
            )
            program.save(str(path), external_data=False)
    import onnx  # heavy: imported on use (module docstring)

    graph = onnx.load(str(path))
    del graph.graph.value_info[:]  # dynamo's shape annotations trip the quantizer's shape inference
    onnx.save(graph, str(path))
    return "dynamo"


def output_names(model: Any) -> tuple[str, ...]:
    """The graph's outputs: ``logits`` (the intents), a joint NLU model's ``sentiment_logits`` (batch,
    labels) and ``token_logits`` (batch, sequence, BIO tags), and, when the version's out-of-scope detector
    is kNN, the pooled ``embedding`` (batch, hidden) it reads."""
    cfg = model.classifier_config
    outputs: tuple[str, ...] = (
        ("logits", "sentiment_logits", "token_logits") if getattr(cfg, "tasks", None) else ("logits",)
    )
    if (getattr(cfg, "oos_detector", None) or {}).get("method") == KNN:
        outputs += (EMBEDDING_OUTPUT,)
    return outputs


def _probe_feed(tokenizer: Any, cfg: Any, texts: Sequence[str] = PROBE_TEXTS) -> dict[str, Any]:
    enc = tokenizer(
        [cfg.query_prefix + clean_text(t) for t in texts],
        padding=True,
        truncation=True,
        max_length=cfg.max_length,
        return_tensors="np",
    )
    return {"input_ids": enc["input_ids"].astype("int64"), "attention_mask": enc["attention_mask"].astype("int64")}


def _run(path: Path, feed: dict[str, Any]) -> Any:
    """The graph's first output (a classifier's ``logits``, a sentence encoder's ``embedding``) on ``feed``."""
    session = open_session(path)
    names = {i.name for i in session.get_inputs()}
    return session.run([session.get_outputs()[0].name], {k: v for k, v in feed.items() if k in names})[0]


def _fuse(path: Path, encoder_config: Any, feed: dict[str, Any]) -> dict[str, int]:
    """Fuse attention / layer norms / GELU with onnxruntime's transformer optimizer, in place.

    Kept only when the fused graph gives the same logits as the plain one on the probe texts;
    returns the fused-op counts ({} when nothing was fused or the fusion was rejected).
    """
    import numpy as np  # imported on use (module docstring)

    tmp = path.with_name(path.name + ".fused.tmp")
    try:
        from onnxruntime.transformers.optimizer import optimize_model  # heavy: imported on use

        with _quiet_export():
            fused = optimize_model(
                str(path),
                model_type="bert",
                num_heads=int(getattr(encoder_config, "num_attention_heads", 0) or 0),
                hidden_size=int(getattr(encoder_config, "hidden_size", 0) or 0),
                opt_level=0,
            )
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


def _safetensors_region(path: Path, tensor: Any) -> tuple[int, int] | None:
    """(offset, length) of the bytes of a tensor in the safetensors file ``path`` that are exactly ``tensor``'s
    raw data (same dtype, same bytes), or None. The safetensors layout: an 8-byte little-endian header
    length, a JSON header with each tensor's dtype, shape and data offsets, then the data."""
    import json
    import struct

    import onnx

    dtypes = {
        onnx.TensorProto.FLOAT: "F32",
        onnx.TensorProto.FLOAT16: "F16",
        onnx.TensorProto.INT8: "I8",
        onnx.TensorProto.UINT8: "U8",
    }
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
            data = tensor.raw_data
            for name, entry in header.items():
                if name == "__metadata__" or entry.get("dtype") != dtypes.get(tensor.data_type):
                    continue
                start, end = entry["data_offsets"]
                if end - start != len(data) or list(entry["shape"]) != list(tensor.dims):
                    continue
                handle.seek(8 + size + start)
                if handle.read(len(data)) == data:
                    return 8 + size + start, len(data)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return None


def _externalize(path: Path) -> None:
    """Move the large initializers of ``path`` into external data files next to it:

    - the word-embedding matrix (``*word_embeddings*`` initializers, whatever their size): read in place
      from ``embeddings.safetensors`` beside the graph (the PyTorch weights' own copy, which a model that
      kept it frozen shares with every other version on the same base) when that file holds the same
      bytes; else in ``path.embeddings.data``. For e5-small that is 384 MB stored once instead of twice;
    - ``path.data``: every other initializer of at least 1 MiB.

    onnxruntime memory-maps these files instead of parsing ~100 MB of protobuf: a cold session is ~3x
    faster to create, and only the embedding rows actually used are paged in. The layout is deterministic
    (graph order, 64-byte aligned offsets), so the same weights always give the same files.
    """
    import onnx  # heavy: imported on use (module docstring)
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(path))  # with its current external data, if any
    shared_file = path.with_name(EMBEDDINGS_FILE)
    targets = {
        name: path.with_name(path.name + suffix)
        for name, suffix in (("data", ".data"), ("embeddings", EMBEDDINGS_DATA_SUFFIX))
    }
    temps = {name: target.with_name(f".{target.name}.tmp") for name, target in targets.items()}
    handles = {name: open(tmp, "wb") for name, tmp in temps.items()}
    try:
        for tensor in model.graph.initializer:
            if not tensor.HasField("raw_data"):
                continue
            embeddings = "word_embeddings" in tensor.name
            if not embeddings and len(tensor.raw_data) < EXTERNAL_DATA_THRESHOLD:
                continue
            region = _safetensors_region(shared_file, tensor) if embeddings and shared_file.is_file() else None
            if region is not None:
                set_external_data(tensor, location=shared_file.name, offset=region[0], length=region[1])
            else:
                handle = handles["embeddings" if embeddings else "data"]
                offset = -(-handle.tell() // 64) * 64
                handle.write(b"\0" * (offset - handle.tell()))
                handle.write(tensor.raw_data)
                set_external_data(
                    tensor,
                    location=targets["embeddings" if embeddings else "data"].name,
                    offset=offset,
                    length=len(tensor.raw_data),
                )
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
        for handle in handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        for name, tmp in temps.items():
            if tmp.stat().st_size:
                os.replace(tmp, targets[name])
            else:
                targets[name].unlink(missing_ok=True)
        onnx.save_model(model, str(path))
    finally:
        for name, tmp in temps.items():
            handles[name].close()
            tmp.unlink(missing_ok=True)


def _node_tensors(nodes: Iterable[Any]) -> Iterator[Any]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for graph in attr.graphs:
                yield from _graph_tensors(graph)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def external_entries(model: Any) -> Iterator[Any]:
    """The ``location`` entry of every tensor of ``model`` (graph, subgraphs, functions) stored outside it."""
    import onnx  # heavy: imported on use

    tensors = list(_graph_tensors(model.graph))
    for function in model.functions:
        tensors += list(_node_tensors(function.node))
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield from (entry for entry in tensor.external_data if entry.key == "location")


def graph_files(path: Path) -> list[str]:
    """The graph's file name and every external data file it references (file names in its directory)."""
    import onnx  # heavy: imported on use (module docstring)

    model = onnx.load(str(path), load_external_data=False)
    return [path.name, *sorted({entry.value for entry in external_entries(model)})]
