"""The entity tagger on onnxruntime: its export at train time (:func:`export_entity_onnx`) and its runtime
(:class:`OnnxEntityExtractor`), so that predict, serve and deploy answer entities without importing torch.

At train time, beside the PyTorch weights in the staged ``entities/``::

    model.onnx(.data)        encoder + token head, (input_ids, attention_mask) -> per-token ``logits``
                             (batch and sequence axes dynamic), fused like the classifier's graph
                             (export.graph); its word embeddings are read in place from
                             embeddings.safetensors (the weights' own file, stored once in the registry)
    model.int8.onnx(.data)   the same graph, dynamic int8, the word embeddings kept fp32 (the same shared
                             file): ~31 MB of its own for e5-small
    tokenizer.unigram.bin    the fast Unigram tokenizer's index (runtime.tokenizers)
    runtime.json             what was measured on the validation split (entity micro-F1 of torch, fp32 and
                             int8; single-text latency) and the runtime chosen: the fastest within
                             ``runtime_tolerance_points`` of torch's micro-F1 (runtime.selection); the
                             graph of the runtime not chosen is deleted

fp32 counts as usable only when it finds exactly torch's entities on every validation and probe text, with
confidences within 1e-3, and the runtime tokenizer gives the HF tokenizer's ids AND character offsets (the
entity spans are read from them). A version without ``runtime.json`` (trained before this export) runs on
torch as before.

torch, onnx, onnxruntime and numpy are imported inside the functions that use them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Sequence

from ..._io import atomic_write_json
from ...errors import HotelbotError, ModelError
from ...runtime.layout import (
    ONNX_FILES,
    ONNX_FP32,
    ONNX_FP32_FILE,
    ONNX_INT8,
    ONNX_INT8_FILE,
    RUNTIME_FILE,
    TOKENIZER_INDEX_FILE,
    TORCH,
)
from ...export.compare import _latencies_ms
from ...export.onnx import _drop_unchosen, drop_export
from ...export.graph import (
    OPSET,
    PROBE_TEXTS,
    _eager_attention,
    _export_raw,
    _externalize,
    _fuse,
    _probe_feed,
    graph_files,
)
from ...export.quantize import _keep_fp32, _outlier_inputs, _quantize, embedding_nodes
from ...runtime.loading import dir_runtime
from ...runtime.onnx import open_session
from ...runtime.selection import RUNTIME_FORMAT, SPEED_TIE, choose_runtime, read_runtime_spec
from ...runtime.tokenizers import TOKENIZER_FULL, load_text_encoder, write_unigram_index
from .tagger import (
    CONFIG_FILE,
    EntityConfig,
    EntityExtractor,
    Extracts,
    decode_token_logits,
    entity_metrics,
    entity_model_dir,
    token_char_spans,
)

if TYPE_CHECKING:
    from ...registry import VersionInfo

log = logging.getLogger("hotelbot.entities")

FP32_MAX_CONFIDENCE_DIFF = 1e-3


class OnnxEntityExtractor(Extracts):
    """A version's entity tagger on onnxruntime: the interface of :class:`~.tagger.EntityExtractor`."""

    def __init__(self, session: Any, encoder: Any, config: EntityConfig, version: str, runtime: str) -> None:
        self.session = session
        self.encoder = encoder  # runtime.tokenizers: encode_with_offsets(texts)
        self.config = config
        self.tags = config.tags
        self.version = version
        self.runtime = runtime

    @classmethod
    def from_dir(cls, path: Path, runtime: str, version: str = "", tokenizer: str | None = None) -> OnnxEntityExtractor:
        path = Path(path)
        config = _read_config(path)
        if tokenizer is None:
            tokenizer = (read_runtime_spec(path) or {}).get("tokenizer")
        encoder = load_text_encoder(path, config.max_length, tokenizer)
        return cls(open_session(path / ONNX_FILES[runtime]), encoder, config, version, runtime)

    def extract_spans(self, texts: Sequence[str], batch_size: int = 32) -> list[list[tuple[str, int, int, float]]]:
        """Per text: (type, start, end, confidence) with offsets into the text as given (not cleaned).

        int8 runs one text per call: dynamic quantization scales each activation by its whole range, padding
        included, so in a padded batch a text's entities would depend on the other texts (the classifier's
        int8 predictor does the same, runtime.onnx). fp32 runs in batches (the same answers, to 1e-6)."""
        import numpy as np

        if self.runtime == ONNX_INT8:
            batch_size = 1
        prefix = self.config.prefix
        out: list[list[tuple[str, int, int, float]]] = []
        for first in range(0, len(texts), batch_size):
            chunk = list(texts[first : first + batch_size])
            ids, mask, offsets, special = self.encoder.encode_with_offsets([prefix + t for t in chunk])
            (logits,) = self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
            rows, spans = [], []
            for i, text in enumerate(chunk):
                keep = np.flatnonzero(mask[i])
                offs, marks = offsets[i], special[i]
                if len(offs) == mask.shape[1]:  # the whole tokenizer pads offsets too: the text's own only
                    offs, marks = [offs[j] for j in keep], [marks[j] for j in keep]
                rows.append(logits[i][keep])
                spans.append(token_char_spans(text, offs, marks, len(prefix)))
            width = max((len(r) for r in rows), default=0)
            padded = np.zeros((len(rows), width, len(self.tags)), dtype=np.float32)
            for i, row in enumerate(rows):
                padded[i, : len(row)] = row
            out.extend(decode_token_logits(padded, spans, self.tags, chunk))
        return out


def _read_config(path: Path) -> EntityConfig:
    import json

    try:
        return EntityConfig.from_dict(json.loads((Path(path) / CONFIG_FILE).read_text("utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot read {Path(path) / CONFIG_FILE}: {exc}") from None


def load_version_extractor(info: VersionInfo, runtime: str | None = None) -> Any:
    """A version's own entity model (a joint NLU version's head: the component's ``load``) on the runtime its
    ``entities/runtime.json`` chose, or ``runtime`` / HOTELBOT_RUNTIME; a version trained before the tagger
    had an ONNX export runs on torch."""
    return load_entity_extractor(entity_model_dir(info), info.name, runtime)


def load_entity_extractor(path: Path, version: str, runtime: str | None = None) -> Any:
    """The tagger saved in ``path`` on the runtime its runtime.json chose (``runtime`` / HOTELBOT_RUNTIME:
    another one, when its graph is there), else on torch (runtime.loading.dir_runtime)."""
    chosen = dir_runtime(path, f"{version}'s entity model", runtime)
    if chosen != TORCH:
        return OnnxEntityExtractor.from_dir(path, chosen, version)
    return EntityExtractor.from_dir(path, version)


# ============================================================================ export


def export_entity_onnx(
    model: Any,
    tokenizer: Any,
    model_dir: Path,
    examples: Sequence[Any],
    tolerance_points: float,
    latency_runs: int = 30,
) -> dict[str, Any]:
    """Export the staged tagger in ``model_dir`` (written by save_entity_model) and choose its runtime; see
    the module docstring. ``examples``: the validation split (EntityExample). Returns runtime.json's dict."""
    from ...runtime.device import on_cpu  # with the export: torch's device switch

    model_dir = Path(model_dir)
    with on_cpu():
        try:
            return _export(model, tokenizer, model_dir, list(examples), tolerance_points, latency_runs)
        except Exception as exc:
            drop_export(model_dir)  # nothing unmeasured stays in the version: graphs, tokenizer index, runtime.json
            if isinstance(exc, HotelbotError):
                raise
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"ONNX export failed: {first}") from exc


def _export(
    model: Any, tokenizer: Any, model_dir: Path, examples: list[Any], tolerance_points: float, latency_runs: int
) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    cfg: EntityConfig = model.entity_config
    model = model.to("cpu").eval()
    fp32_path, int8_path = model_dir / ONNX_FP32_FILE, model_dir / ONNX_INT8_FILE
    texts = [e.text for e in examples]
    probe = texts[:64] + list(PROBE_TEXTS)
    feed_cfg = SimpleNamespace(query_prefix=cfg.prefix, max_length=cfg.max_length)
    start = time.monotonic()
    with _eager_attention(model) as attention:
        exporter = _export_raw(
            model, tokenizer, fp32_path, OPSET, prefix=cfg.prefix, max_length=cfg.max_length, per_token=True
        )
    fused = _fuse(fp32_path, model.encoder.config, _probe_feed(tokenizer, feed_cfg))
    _externalize(fp32_path)
    ratios = _outlier_inputs(fp32_path, [_probe_feed(tokenizer, feed_cfg, [t]) for t in probe])
    kept_fp32 = _keep_fp32(ratios)
    _quantize(fp32_path, int8_path, kept_fp32 + embedding_nodes(fp32_path))
    _externalize(int8_path)
    export_seconds = time.monotonic() - start

    write_unigram_index(model_dir)
    tokenizer_kind, tokenizer_ok = _check_tokenizer(model_dir, tokenizer, cfg, probe + texts)
    if tokenizer_kind == TOKENIZER_FULL:
        (model_dir / TOKENIZER_INDEX_FILE).unlink(missing_ok=True)
    read_files = {name: graph_files(model_dir / f) for name, f in ONNX_FILES.items()}
    extractors: dict[str, Any] = {TORCH: EntityExtractor(model, tokenizer, model_dir.parent.name)}
    for name in ONNX_FILES:
        extractors[name] = OnnxEntityExtractor.from_dir(model_dir, name, model_dir.parent.name, tokenizer_kind)
    gold = [e.gold() for e in examples]
    with torch.inference_mode():
        found = {name: x.extract_spans(texts + list(PROBE_TEXTS)) for name, x in extractors.items()}
        measurements: dict[str, dict[str, Any]] = {}
        for name in extractors:
            predicted = [{(k, s, e) for k, s, e, _ in spans} for spans in found[name][: len(texts)]]
            entry: dict[str, Any] = {
                "accuracy": entity_metrics(gold, predicted, cfg.labels)["micro_f1"] if texts else None,
                "score": "entity micro-F1 on the validation split",
            }
            if name != TORCH:
                entry["same_entities_as_torch"] = _agreement(found[name], found[TORCH])
                entry["max_confidence_diff_vs_torch"] = _confidence_diff(found[name], found[TORCH])
                entry["file"] = ONNX_FILES[name]
                entry["size_bytes"] = sum((model_dir / n).stat().st_size for n in read_files[name])
                entry["usable"] = tokenizer_ok
            measurements[name] = entry
        fp32 = measurements[ONNX_FP32]
        fp32["usable"] = (
            tokenizer_ok
            and fp32["same_entities_as_torch"] == 1.0
            and fp32["max_confidence_diff_vs_torch"] <= FP32_MAX_CONFIDENCE_DIFF
        )
        timed = {name: _Timed(x) for name, x in extractors.items()}
        for name, latency in _latencies_ms(timed, probe, latency_runs).items():
            measurements[name].update(latency)
    chosen = choose_runtime(measurements, tolerance_points)
    kept = _drop_unchosen(model_dir, read_files, chosen, None)
    result = {
        "format": RUNTIME_FORMAT,
        "runtime": chosen,
        "tolerance_points": tolerance_points,
        "selection": (
            f"fastest single-text p50 among the runtimes within {tolerance_points} points of torch's entity "
            f"micro-F1; latencies within {SPEED_TIE:.0%} of the fastest are ties, won by the smaller model; "
            "the graph not chosen is not kept"
        ),
        "files": kept,
        "inputs": ["input_ids", "attention_mask"],
        "output": "logits",
        "outputs": ["logits"],
        "per_token": True,
        "exporter": exporter,
        "opset": OPSET,
        "attention": attention,
        "fused_operators": fused,
        "quantization": "dynamic int8, per-channel QInt8 weights; word embeddings kept fp32 (shared with the "
        "PyTorch weights)",
        "kept_fp32": {name: ratios[name] for name in kept_fp32},
        "tokenizer": tokenizer_kind,
        "tokenizer_matches_hf": tokenizer_ok,
        "validation_examples": len(texts),
        "runtimes": measurements,
        "export_seconds": round(export_seconds, 2),
        "cpu_threads": torch.get_num_threads(),
        "library_versions": {
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
        },
    }
    atomic_write_json(model_dir / RUNTIME_FILE, result)
    return result


class _Timed:
    """``predict([text])`` for export.compare's latency loop: one text's extraction."""

    def __init__(self, extractor: Any) -> None:
        self.extractor = extractor

    def predict(self, texts: Sequence[str]) -> Any:
        return self.extractor.extract_spans(texts)


def _agreement(found: list[Any], reference: list[Any]) -> float:
    same = sum([(k, s, e) for k, s, e, _ in a] == [(k, s, e) for k, s, e, _ in b] for a, b in zip(found, reference))
    return round(same / len(reference), 6) if reference else 1.0


def _confidence_diff(found: list[Any], reference: list[Any]) -> float:
    worst = 0.0
    for a, b in zip(found, reference):
        if [x[:3] for x in a] != [x[:3] for x in b]:
            continue  # different entities: counted by the agreement
        worst = max([worst, *(abs(float(x[3]) - float(y[3])) for x, y in zip(a, b))])
    return round(worst, 7)


def _check_tokenizer(model_dir: Path, hf_tokenizer: Any, cfg: EntityConfig, texts: Sequence[str]) -> tuple[str, bool]:
    """(tokenizer kind for runtime.json, whether it gives the HF tokenizer's ids, special marks and character
    offsets on ``prefix + text``: the entity spans are read from the offsets)."""
    prepared = [cfg.prefix + t for t in texts if t.strip()]

    def same(encoder: Any) -> bool:
        for first in range(0, len(prepared), 32):
            chunk = prepared[first : first + 32]
            ids, mask, offsets, special = encoder.encode_with_offsets(chunk)
            want = hf_tokenizer(
                chunk,
                truncation=True,
                max_length=cfg.max_length,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
            )
            for row, text_ids in enumerate(want["input_ids"]):
                keep = [j for j, m in enumerate(mask[row]) if m]
                offs, marks = offsets[row], special[row]
                if len(offs) == len(mask[row]):
                    offs, marks = [offs[j] for j in keep], [marks[j] for j in keep]
                if (
                    [int(ids[row][j]) for j in keep] != list(text_ids)
                    or [tuple(o) for o in offs] != [tuple(o) for o in want["offset_mapping"][row]]
                    or list(marks) != list(want["special_tokens_mask"][row])
                ):
                    return False
        return True

    encoder = load_text_encoder(model_dir, cfg.max_length)
    if same(encoder):
        return encoder.kind, True
    if encoder.kind != TOKENIZER_FULL and same(load_text_encoder(model_dir, cfg.max_length, TOKENIZER_FULL)):
        return TOKENIZER_FULL, True
    log.warning(
        "tokenizer.json does not reproduce the HF tokenizer's tokens and offsets: the entity model runs on torch"
    )
    return TOKENIZER_FULL, False


__all__ = ["OnnxEntityExtractor", "export_entity_onnx", "load_entity_extractor", "load_version_extractor"]
