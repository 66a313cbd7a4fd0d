"""Everything needed to predict with a version's classifier (nothing here builds an ONNX file: see
:mod:`hotelbot_cli.export`).

Two predictors share one interface (:class:`Predictor`): :class:`TorchPredictor` on PyTorch, and
:class:`OnnxPredictor` on onnxruntime + tokenizers. :func:`load_predictor` and
:func:`predictor_from_registry` pick the one the version's ``model/runtime.json`` names (override:
``HOTELBOT_RUNTIME=torch|onnx-fp32|onnx-int8``). Importing this package imports none of torch,
transformers, onnxruntime, tokenizers or numpy: each is imported inside the code that needs it, so
``hotelbot --help`` stays fast and ``hotelbot predict`` on an ONNX version never loads torch.

Modules: ``prediction`` (Prediction, the Predictor interface, the out-of-scope fallback), ``layout``
(runtime and file names), ``selection`` (runtime.json, HOTELBOT_RUNTIME, the runtime choice),
``reference`` (TorchPredictor, the PyTorch predictor), ``tokenizers`` (tokenizing without transformers),
``onnx`` (OnnxPredictor, Recheck, sessions), ``files`` (checksums of the files an ONNX predictor reads),
``loading`` (the factories).
"""

from .files import onnx_files_read, require_files_intact, verify_files
from .layout import MODEL_SUBDIR, ONNX_FILES, ONNX_FP32, ONNX_INT8, RUNTIME_FILE, RUNTIMES, TORCH
from .loading import load_predictor, predictor_from_registry
from .onnx import OnnxPredictor, Recheck, RuntimeClassifierConfig
from .prediction import Prediction, Predictor, apply_fallback, apply_fallback_labels
from .selection import RUNTIME_ENV, choose_runtime, describe_choice, read_runtime_spec, requested_runtime
from .reference import TorchPredictor

__all__ = [
    "MODEL_SUBDIR",
    "ONNX_FILES",
    "ONNX_FP32",
    "ONNX_INT8",
    "RUNTIMES",
    "RUNTIME_ENV",
    "RUNTIME_FILE",
    "TORCH",
    "OnnxPredictor",
    "Prediction",
    "Predictor",
    "Recheck",
    "RuntimeClassifierConfig",
    "TorchPredictor",
    "apply_fallback",
    "apply_fallback_labels",
    "choose_runtime",
    "describe_choice",
    "load_predictor",
    "onnx_files_read",
    "predictor_from_registry",
    "read_runtime_spec",
    "require_files_intact",
    "requested_runtime",
    "verify_files",
]
