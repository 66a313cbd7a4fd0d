"""Dynamic int8 quantization of the fp32 graph: per-channel weights, except the MatMuls fed by outlier
activations, which stay fp32 (:func:`_outlier_inputs`, :func:`_keep_fp32`).

onnx, onnxruntime and numpy are imported inside the functions that use them (see export.graph).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..runtime.onnx import open_session
from .graph import _quiet_export

# Weight MatMuls whose input's max|x| / rms(x) reaches OUTLIER_RATIO stay fp32 in the int8 graph (at
# most OUTLIER_MAX_SHARE of them); see _outlier_inputs. 60: on e5-small the inputs of the FFN output
# projections of layers 0, 1, 2, 4 and 5 measure 64-107, every other input 4-52.
OUTLIER_RATIO = 60.0
OUTLIER_MAX_SHARE = 0.25


def _quantize(src: Path, dst: Path, exclude: Sequence[str] = ()) -> None:
    import onnx  # heavy: imported on use (module docstring)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights: per-tensor int8 scales flip ~10% of a small model's answers, per-channel
    # about half as many. DefaultTensorType: the fused contrib ops have no ONNX shape inference.
    # ``exclude``: nodes kept in fp32 (see _outlier_inputs).
    with _quiet_export():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=list(exclude),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _outlier_inputs(path: Path, feeds: Sequence[dict[str, Any]]) -> dict[str, float]:
    """For each weight MatMul / Attention node of the (externalized) fp32 graph at ``path``: the median,
    over ``feeds`` (one text each), of max|x| / rms(x) of its input activation x.

    Dynamic int8 quantizes an activation with one scale per tensor, set by its largest value; an input
    whose largest value is ~100x its typical one (the "outlier features" of transformer FFNs) keeps only
    a few of its 256 levels for everything else. On e5-small these are the FFN output projections of a
    few early layers (ratios 64-111 where the other inputs are 4-52); they carry most of int8's error.
    """
    import numpy as np  # imported on use (module docstring)
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    weights = {i.name for i in graph.graph.initializer}
    nodes = {
        n.name: n.input[0]
        for n in graph.graph.node
        if n.op_type in ("MatMul", "Attention") and len(n.input) > 1 and n.input[1] in weights
    }
    names = sorted(set(nodes.values()) - {o.name for o in graph.graph.output})
    for name in names:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    probe = path.with_name(path.name + ".probe.tmp")  # beside the .data file it references
    try:
        onnx.save(graph, str(probe))
        session = open_session(probe, threads=1)
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


def embedding_nodes(path: Path) -> list[str]:
    """The nodes of the graph at ``path`` that read its word-embedding matrix (the Gather, or the fused
    EmbedLayerNormalization). Left out of the int8 quantization, the matrix stays the fp32 bytes that
    ``_externalize`` reads in place from the PyTorch weights' embeddings.safetensors: the int8 graph then
    stores only its layers (~31 MB for e5-small: graph and data), and its embedding rows are exact."""
    import onnx  # imported on use (module docstring)

    graph = onnx.load(str(path), load_external_data=False)
    matrices = {i.name for i in graph.graph.initializer if "word_embeddings" in i.name}
    return sorted(n.name for n in graph.graph.node if n.name and matrices.intersection(n.input))


def _keep_fp32(ratios: dict[str, float], cutoff: float = OUTLIER_RATIO, share: float = OUTLIER_MAX_SHARE) -> list[str]:
    """The nodes whose input outlier ratio is at least ``cutoff``, the worst first, at most ``share`` of them."""
    worst = sorted((r, n) for n, r in ratios.items() if r >= cutoff)[::-1]
    return sorted(n for _, n in worst[: int(len(ratios) * share)])
