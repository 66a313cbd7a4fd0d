"""The ONNX export of a BASE sentence encoder (the knowledge base's query encoder, the packaged e5 by
default), kept in the model cache beside the converted base models, never in a registry version (the
registry refers to base models by fingerprint: issue 19's rule), so every version built on the same base
shares one copy per machine:

    <models_dir>/onnx/<name>-<sha256(fingerprint)[:16]>/
        encoder.onnx (+ .data, .embeddings.data)   (input_ids, attention_mask) -> embedding (pooled,
                                                   L2-normalised), last_hidden_state and
                                                   upper_hidden_state (the states entering the top
                                                   UPPER_LAYERS layers); fused like the classifier's graph
        upper_layers.safetensors                   those top layers' weights (a reply model's tuned
                                                   question layers are a change from them)
        tokenizer.json, tokenizer_config.json, ... the base model's tokenizer (+ tokenizer.unigram.bin)
        encoder.json                               fingerprint, pooling, max length, dimension, and the
                                                   check against PyTorch (max |difference| of the vectors)

It is written once (by `train --model-type embeddings`, or on a knowledge base's first query on a machine
whose cache lacks it), in a temporary directory renamed into place, and used only when its vectors
reproduce PyTorch's (fp32, within 1e-4). torch is imported inside the functions (see export.graph).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..runtime.encoder import (
    ENCODER_FILE,
    ENCODER_FORMAT,
    ENCODER_GRAPH,
    ENCODER_INT8_GRAPH,
    UPPER_LAYERS,
    UPPER_OUTPUT,
    UPPER_WEIGHTS,
    OnnxSentenceEncoder,
    encoder_cache_dir,
    upper_blocks,
    upper_parameters,
)
from ..runtime.tokenizers import write_unigram_index
from .graph import OPSET, PROBE_TEXTS, _eager_attention, _externalize, _fuse, _quiet_export, graph_files
from .quantize import _keep_fp32, _outlier_inputs, _quantize

log = logging.getLogger("hotelbot.onnx")

MAX_VECTOR_DIFF = 1e-4


def export_sentence_encoder(
    encoder: Any,
    tokenizer: Any,
    models_dir: Path,
    *,
    name: str,
    fingerprint: str,
    pooling: str,
    max_length: int,
    query_prefix: str,
    passage_prefix: str,
    probe_texts: Sequence[str] = (),
) -> Path | None:
    """Write (once) the cache directory of this encoder (module docstring); returns it, or None when the
    export failed or did not reproduce PyTorch (logged: the caller keeps the torch encoder)."""
    import numpy as np
    import torch

    from ..modeling import pool  # modeling imports torch

    target = encoder_cache_dir(models_dir, name, fingerprint)
    if (target / ENCODER_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:

        class Sentence(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.encoder = inner

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=upper)
                hidden = out.last_hidden_state
                pooled = torch.nn.functional.normalize(pool(hidden, attention_mask, pooling), dim=-1)
                return (pooled, hidden, out.hidden_states[-1 - UPPER_LAYERS]) if upper else (pooled, hidden)

        upper = bool(upper_blocks(encoder))  # a BERT-like layer list: a reply model may tune its top layers
        outputs = ["embedding", "last_hidden_state"] + ([UPPER_OUTPUT] if upper else [])
        wrapped = Sentence(encoder).eval()
        texts = [query_prefix + t for t in PROBE_TEXTS[2:]]
        device = next(encoder.parameters()).device  # the encoder may run on a GPU (runtime.device)
        enc = {
            k: v.to(device)
            for k, v in tokenizer(
                texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).items()
        }
        path = scratch / ENCODER_GRAPH
        axes = {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "embedding": {0: "batch"},
            "last_hidden_state": {0: "batch", 1: "sequence"},
            UPPER_OUTPUT: {0: "batch", 1: "sequence"},
        }
        with _eager_attention(wrapped) as attention, _quiet_export(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                wrapped,
                (enc["input_ids"], enc["attention_mask"]),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=outputs,
                dynamic_axes={k: v for k, v in axes.items() if k in outputs or k in ("input_ids", "attention_mask")},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        probe = list(PROBE_TEXTS) + list(probe_texts)[:32]
        feed_enc = tokenizer(
            [query_prefix + t for t in probe], padding=True, truncation=True, max_length=max_length, return_tensors="np"
        )
        feed = {
            "input_ids": feed_enc["input_ids"].astype("int64"),
            "attention_mask": feed_enc["attention_mask"].astype("int64"),
        }
        fused = _fuse(path, encoder.config, feed)
        _externalize(path)
        int8: dict[str, Any] = {}
        try:  # dynamic int8 beside it, outlier-fed MatMuls kept fp32 (as the classifier's); chosen per knowledge base
            one = [
                {k: v[i : i + 1, : int(feed["attention_mask"][i].sum())] for k, v in feed.items()}
                for i in range(len(probe))
            ]
            kept = _keep_fp32(_outlier_inputs(path, one))
            _quantize(path, scratch / ENCODER_INT8_GRAPH, kept)
            _externalize(scratch / ENCODER_INT8_GRAPH)
            int8 = {"files": graph_files(scratch / ENCODER_INT8_GRAPH), "kept_fp32": kept}
        except Exception as exc:  # noqa: BLE001 - fp32 still serves
            log.warning("int8 quantization of the query encoder failed (%s); fp32 only", exc)
        tokenizer.save_pretrained(str(scratch))
        write_unigram_index(scratch)
        if upper:
            from safetensors.numpy import save_file

            save_file(upper_parameters(encoder), str(scratch / UPPER_WEIGHTS))
        with torch.inference_mode():
            want = (
                wrapped(
                    torch.from_numpy(feed["input_ids"]).to(device), torch.from_numpy(feed["attention_mask"]).to(device)
                )[0]
                .float()
                .cpu()
                .numpy()
            )
        record = {
            "format": ENCODER_FORMAT,
            "name": name,
            "fingerprint": fingerprint,
            "pooling": pooling,
            "max_length": max_length,
            "dim": int(want.shape[-1]),
            "query_prefix": query_prefix,
            "passage_prefix": passage_prefix,
            "opset": OPSET,
            "attention": attention,
            "fused_operators": fused,
            "files": graph_files(path),
            "outputs": outputs,
            "upper_layers": UPPER_LAYERS if upper else 0,
            "int8": int8 or None,
            "quantization": "dynamic int8, per-channel weights, outlier-fed MatMuls in fp32" if int8 else None,
        }
        (scratch / ENCODER_FILE).write_text(json.dumps(record, indent=2), "utf-8")
        got = OnnxSentenceEncoder.load(scratch, fingerprint).embed(probe, kind="query")
        diff = float(np.abs(got - want).max())
        if diff > MAX_VECTOR_DIFF:
            log.warning("the ONNX query encoder differs from PyTorch by %.2g; the knowledge base stays on torch", diff)
            return None
        record["max_abs_diff_vs_torch"] = round(diff, 8)
        (scratch / ENCODER_FILE).write_text(json.dumps(record, indent=2), "utf-8")
        for item in scratch.iterdir():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
        try:
            os.rename(scratch, target)
        except OSError:  # another process wrote it meanwhile: keep theirs
            if not (target / ENCODER_FILE).is_file():
                raise
        _remove_older_formats(target)
        return target
    except Exception as exc:  # noqa: BLE001 - an optimisation: the torch encoder still answers
        log.warning("ONNX export of the query encoder failed (%s); the knowledge base stays on torch", exc)
        return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_older_formats(target: Path) -> None:
    """Delete the exports of the same encoder in an older cache format (``<name>-<digest>-v<N>``, ~600 MB for
    e5-small): nothing of this version reads them any more."""
    stem, _, _ = target.name.rpartition("-v")
    for old in target.parent.glob(f"{stem}-v*"):
        if old != target and old.name[len(stem) + 2 :].isdigit() and (old / ENCODER_FILE).is_file():
            log.info("removing %s: an older format of %s", old, target.name)
            shutil.rmtree(old, ignore_errors=True)


__all__ = ["MAX_VECTOR_DIFF", "export_sentence_encoder"]
