"""ONNX export at train time: :func:`export_onnx` writes, next to the PyTorch weights of a *staged*
version (the weights stay the source of truth)::

    model/model.onnx(.data)       encoder + pooling + head in one graph: (input_ids, attention_mask) ->
                                  logits, batch and sequence axes dynamic; exported with eager attention
                                  and fused by onnxruntime's transformer optimizer (Attention,
                                  EmbedLayerNormalization, SkipLayerNormalization, BiasGelu); large
                                  weights live in the memory-mapped .data file, the word embeddings in
                                  their own .embeddings.data (shared across versions; export.graph)
    model/model.int8.onnx(.data)  the same graph, dynamic int8 quantization with per-channel weights,
                                  except the MatMuls fed by outlier activations (kept fp32; export.quantize).
                                  If int8 alone misses the accuracy gate, its close calls (top-2 gap or
                                  distance to the out-of-scope threshold under ``recheck_margin``) re-run
                                  on fp32
    model/tokenizer.unigram.bin   for a Unigram tokenizer (e5): a sorted index of its pieces that loads in
                                  milliseconds (see runtime.tokenizers.UnigramSubsetEncoder)
    model/runtime.json            what was measured (accuracy on the validation split, single-text
                                  latency) and the runtime chosen: the fastest of torch / onnx-fp32 /
                                  onnx-int8 whose accuracy is within ``tolerance_points`` of PyTorch's

torch, onnx, onnxruntime and numpy are imported inside the functions that use them (see export.graph).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .._io import atomic_write_json
from ..data import clean_text
from ..errors import ModelError
from ..runtime import selection
from ..runtime.device import on_cpu
from ..runtime.layout import (
    CLASSIFIER_FILE,
    ONNX_FILES,
    ONNX_FP32,
    ONNX_FP32_FILE,
    ONNX_INT8,
    ONNX_INT8_FILE,
    RUNTIME_FILE,
    TOKENIZER_FILE,
    TOKENIZER_INDEX_FILE,
    TORCH,
    onnx_graph_files,
)
from ..runtime.onnx import OnnxPredictor, Recheck
from ..runtime.reference import TorchPredictor
from ..runtime.selection import DEFAULT_TOLERANCE_POINTS, RUNTIME_FORMAT, SPEED_TIE, choose_runtime
from ..runtime.tokenizers import TOKENIZER_FULL, TOKENIZER_SUBSET, load_text_encoder, write_unigram_index
from .compare import _accuracy, _latencies_ms
from .graph import (
    OPSET,
    PROBE_TEXTS,
    _eager_attention,
    _export_raw,
    _externalize,
    _fuse,
    _probe_feed,
    graph_files,
    output_names,
)
from .quantize import OUTLIER_RATIO, _keep_fp32, _outlier_inputs, _quantize, embedding_nodes

log = logging.getLogger("hotelbot.onnx")

# When int8 alone misses the gate, its answers this close (in probability) to changing are re-run on
# fp32 (Recheck). 0.3: on four e5 trainings every int8/fp32 disagreement on the validation split had a
# margin below 0.27 (README "Fast inference").
DEFAULT_RECHECK_MARGIN = 0.3
# fp32 ONNX must reproduce PyTorch's probabilities; past this the export is wrong and is not used.
FP32_MAX_PROB_DIFF = 1e-3


def drop_export(model_dir: Path) -> list[str]:
    """Remove a model directory's ONNX export (graphs, data, tokenizer index, runtime.json).

    For a *staged* copy whose PyTorch weights were changed: the export is derived from them and would
    no longer match. Returns the names removed. (Published versions are immutable: never call this on one.)
    """
    model_dir = Path(model_dir)
    names = [*onnx_graph_files(ONNX_FP32_FILE), *onnx_graph_files(ONNX_INT8_FILE), TOKENIZER_INDEX_FILE, RUNTIME_FILE]
    removed = []
    for name in names:
        if (model_dir / name).exists():
            (model_dir / name).unlink()
            removed.append(name)
    return removed


def _drop_unchosen(
    model_dir: Path, read_files: dict[str, list[str]], chosen: str, recheck: dict[str, Any] | None
) -> dict[str, list[str]]:
    """Delete the export's own files of each ONNX graph that will not serve (not ``chosen``, not the fp32
    graph of int8's ``recheck``); returns ``read_files`` without them. Files a graph shares with the PyTorch
    weights (embeddings.safetensors) are never its own and stay."""
    needed = {chosen, *([ONNX_FP32] if recheck and chosen == ONNX_INT8 else [])}
    kept = {}
    for name, file in ONNX_FILES.items():
        if name in needed:
            kept[name] = read_files[name]
            continue
        for own in onnx_graph_files(file):
            (Path(model_dir) / own).unlink(missing_ok=True)
    return kept


def _check_tokenizers(model_dir: Path, hf_tokenizer: Any, cfg: Any, texts: Sequence[str]) -> tuple[str, bool]:
    """(tokenizer kind for runtime.json, whether it reproduces the HF tokenizer's ids on ``texts``).

    The fast Unigram encoder is kept only when it gives exactly the HF ids; else the whole tokenizer.
    """
    import numpy as np  # imported on use (module docstring)

    prepared = [cfg.query_prefix + clean_text(t) for t in texts if clean_text(t)]

    def same(encoder: Any) -> bool:
        for start in range(0, len(prepared), 32):
            chunk = prepared[start : start + 32]
            ids, mask = encoder.encode(chunk)
            want = hf_tokenizer(chunk, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="np")
            if ids.shape != want["input_ids"].shape or not (
                np.array_equal(ids, want["input_ids"]) and np.array_equal(mask, want["attention_mask"])
            ):
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


def export_onnx(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`export_on_cpu` (its docstring) with every predictor and session on the CPU
    (runtime.device.on_cpu), whatever HOTELBOT_DEVICE says: the runtime choice compares the CPU runtimes."""
    with on_cpu():
        return export_on_cpu(*args, **kwargs)


def export_on_cpu(
    model: Any,
    tokenizer: Any,
    model_dir: Path,
    validation_examples: Sequence[Any],
    tolerance_points: float = DEFAULT_TOLERANCE_POINTS,
    *,
    latency_runs: int = 50,
    opset: int = OPSET,
    recheck_margin: float = DEFAULT_RECHECK_MARGIN,
    task_checks: Callable[[Any], dict[str, float]] | None = None,
    quantize_embeddings: bool = True,
    keep_unchosen: bool = True,
) -> dict[str, Any]:
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

    ``task_checks(predictor)`` (a joint NLU model): the scores of its other tasks ({"sentiment_macro_f1": ..,
    "entities_micro_f1": ..}) with that predictor; an ONNX runtime more than ``tolerance_points`` below
    torch on any of them is not usable (recorded under ``tasks`` of each runtime).

    ``quantize_embeddings=False`` keeps the word embeddings fp32 in the int8 graph (shared with the PyTorch
    weights' file: :func:`~.quantize.embedding_nodes`); ``keep_unchosen=False`` deletes the graph files of
    the ONNX runtime not chosen (their measurements stay in runtime.json): a component's model that only
    ever serves with its chosen runtime stores nothing else.
    """
    import numpy as np  # heavy: imported on use (module docstring)
    import onnx
    import onnxruntime
    import torch

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
        _quantize(fp32_path, int8_path, kept_fp32 + ([] if quantize_embeddings else embedding_nodes(fp32_path)))
        _externalize(int8_path)
    except Exception as exc:  # noqa: BLE001 - surface one clear line; the torch weights are still saved
        for path in (fp32_path, int8_path):
            for name in onnx_graph_files(path.name):
                path.with_name(name).unlink(missing_ok=True)
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
    read_files = {name: graph_files(model_dir / f) for name, f in ONNX_FILES.items()}
    predictors: dict[str, Any] = {TORCH: TorchPredictor(model, tokenizer, model_dir.parent.name, model_dir)}
    for name in ONNX_FILES:
        predictors[name] = OnnxPredictor.from_model_dir(
            model_dir, name, model_dir.parent.name, tokenizer_kind, recheck_margin=0.0
        )
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
            entry: dict[str, Any] = {
                "accuracy": _accuracy(predicted[name], truth),
                "max_abs_prob_diff_vs_torch": round(float(np.abs(probs - reference).max()), 7),
            }
            if name != TORCH:
                entry["agreement_with_torch"] = _accuracy(predicted[name], predicted[TORCH])
                entry["file"] = ONNX_FILES[name]
                entry["size_bytes"] = sum((model_dir / n).stat().st_size for n in read_files[name])
            return entry

        for name, predictor in predictors.items():
            measurements[name] = measure(name, predictor)
        measurements[ONNX_FP32]["usable"] = (
            measurements[ONNX_FP32]["max_abs_prob_diff_vs_torch"] <= FP32_MAX_PROB_DIFF and tokenizer_ok
        )
        if not tokenizer_ok:
            measurements[ONNX_INT8]["usable"] = False
        # int8 alone outside the gate: measure it with its close calls re-run on fp32 (what would then serve)
        if (
            recheck_margin > 0
            and measurements[ONNX_FP32]["usable"]
            and tokenizer_ok
            and texts
            and not selection._qualifies(measurements, ONNX_INT8, tolerance_points)
        ):
            alone = measurements[ONNX_INT8]
            guarded = predictors[ONNX_INT8] = predictors[ONNX_INT8].with_recheck(
                Recheck(model_dir / ONNX_FP32_FILE, recheck_margin)
            )
            entry = measure(ONNX_INT8, guarded)
            rate = recheck_rates.get(ONNX_INT8)
            recheck = {"runtime": ONNX_FP32, "file": ONNX_FP32_FILE, "margin": recheck_margin}
            entry["recheck"] = dict(recheck, rate=None if rate is None else round(rate, 4))
            entry["without_recheck"] = {
                k: alone[k] for k in ("accuracy", "agreement_with_torch", "max_abs_prob_diff_vs_torch")
            }
            measurements[ONNX_INT8] = entry
        if task_checks is not None:
            scores = {name: task_checks(predictor) for name, predictor in predictors.items()}
            for name in ONNX_FILES:
                measurements[name]["tasks"] = scores[name]
                worse = [
                    task
                    for task, value in scores[name].items()
                    if 100.0 * (scores[TORCH][task] - value) > tolerance_points + 1e-9
                ]
                if worse:
                    measurements[name]["usable"] = False
                    measurements[name]["unusable_because"] = (
                        f"{', '.join(worse)} more than {tolerance_points} points below torch"
                    )
            measurements[TORCH]["tasks"] = scores[TORCH]
        for name, latency in _latencies_ms(predictors, probe, latency_runs).items():
            measurements[name].update(latency)
    chosen = choose_runtime(measurements, tolerance_points)
    if not keep_unchosen:
        read_files = _drop_unchosen(model_dir, read_files, chosen, recheck)
    result = {
        "format": RUNTIME_FORMAT,
        "runtime": chosen,
        "tolerance_points": tolerance_points,
        "selection": (
            f"fastest single-text p50 among the runtimes within {tolerance_points} accuracy points of "
            f"torch; latencies within {SPEED_TIE:.0%} of the fastest are ties, won by the smaller model"
        ),
        "files": read_files,  # what each graph reads (a reader checks these): the graph, its data, shared files
        "inputs": ["input_ids", "attention_mask"],
        "output": "logits",
        "outputs": list(output_names(model)),
        "exporter": exporter,
        "opset": opset,
        "attention": attention,
        "fused_operators": fused,
        "quantization": "dynamic int8, per-channel QInt8 weights (onnxruntime.quantization.quantize_dynamic)"
        + ("" if quantize_embeddings else "; word embeddings kept fp32 (shared with the PyTorch weights)"),
        "kept_fp32": {name: ratios[name] for name in kept_fp32},
        "outlier_ratio_cutoff": OUTLIER_RATIO,
        "recheck": recheck,
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
