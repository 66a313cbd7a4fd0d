"""Names shared by the runtimes and the export: the runtimes a version can serve with, and the files of
its ``model/`` directory that they read (written by ``modeling.save_classifier`` and ``export.export_onnx``)::

    model/model.onnx(.data)       fp32 ONNX graph (encoder + pooling + head), large initializers in .data;
                                  its word embeddings are read IN PLACE from embeddings.safetensors (the
                                  PyTorch weights' own file, shared by every version that froze them) when
                                  the bytes are the same, else from model.onnx.embeddings.data
    model/model.int8.onnx(.data)  the same graph, dynamic int8
    model/tokenizer.unigram.bin   index of a Unigram tokenizer's pieces (see runtime.tokenizers)
    model/runtime.json            what the export measured and the runtime chosen (see runtime.selection)
"""

from __future__ import annotations

MODEL_SUBDIR = "model"
ONNX_FP32_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
RUNTIME_FILE = "runtime.json"
CLASSIFIER_FILE = "classifier.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_INDEX_FILE = "tokenizer.unigram.bin"
EMBEDDINGS_FILE = "embeddings.safetensors"  # the word-embedding matrix of the PyTorch weights (modeling.py)

TORCH = "torch"
ONNX_FP32 = "onnx-fp32"
ONNX_INT8 = "onnx-int8"
RUNTIMES = (TORCH, ONNX_FP32, ONNX_INT8)
ONNX_FILES = {ONNX_FP32: ONNX_FP32_FILE, ONNX_INT8: ONNX_INT8_FILE}
DATA_SUFFIX = ".data"
EMBEDDINGS_DATA_SUFFIX = ".embeddings.data"


def onnx_data_files(onnx_file: str) -> tuple[str, str]:
    """The external data files a graph may reference: its ``.data`` and its word embeddings' own file."""
    return onnx_file + DATA_SUFFIX, onnx_file + EMBEDDINGS_DATA_SUFFIX


def onnx_graph_files(onnx_file: str) -> tuple[str, str, str]:
    """A graph and the external data files that belong to it (those that exist are the export's own; a graph
    may also reference files it shares with the PyTorch weights: :func:`onnx_referenced_files`)."""
    return (onnx_file, *onnx_data_files(onnx_file))


def onnx_referenced_files(onnx_file: str, spec: dict | None) -> list[str]:
    """Every file of ``model/`` that the graph ``onnx_file`` reads: the names runtime.json (``spec``) recorded
    for it at export, else :func:`onnx_graph_files`. A recorded name must be a plain file name (runtime.json
    is checksummed before it is read; a name with a path is refused all the same)."""
    recorded = (spec or {}).get("files") or {}
    for runtime, name in ONNX_FILES.items():
        if name == onnx_file and isinstance(recorded.get(runtime), list):
            names = [str(n) for n in recorded[runtime]]
            if all(n and "/" not in n and "\\" not in n and n not in (".", "..") for n in names):
                return names if onnx_file in names else [onnx_file, *names]
    return list(onnx_graph_files(onnx_file))
