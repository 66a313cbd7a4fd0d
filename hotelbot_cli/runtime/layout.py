"""Names shared by the runtimes and the export: the runtimes a version can serve with, and the files of
its ``model/`` directory that they read (written by ``modeling.save_classifier`` and ``export.export_onnx``)::

    model/model.onnx(.data)       fp32 ONNX graph (encoder + pooling + head), large initializers in .data
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

TORCH = "torch"
ONNX_FP32 = "onnx-fp32"
ONNX_INT8 = "onnx-int8"
RUNTIMES = (TORCH, ONNX_FP32, ONNX_INT8)
ONNX_FILES = {ONNX_FP32: ONNX_FP32_FILE, ONNX_INT8: ONNX_INT8_FILE}
