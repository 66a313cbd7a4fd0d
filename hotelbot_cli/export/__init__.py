"""Building a version's ONNX files at train time (:func:`export_onnx`) and measuring its runtimes against
each other (:func:`compare_runtimes`, for ``hotelbot validate``). Predicting is :mod:`hotelbot_cli.runtime`'s
business: this package imports it, never the reverse.

Modules: ``graph`` (the fp32 graph: export, fusion, external data), ``quantize`` (dynamic int8, outlier
inputs kept fp32), ``compare`` (accuracy, latency, compare_runtimes), ``onnx`` (export_onnx: the whole
export and the runtime choice; drop_export). Importing this package imports none of torch, onnx,
onnxruntime or numpy.
"""

from .compare import compare_runtimes
from .onnx import DEFAULT_RECHECK_MARGIN, drop_export, export_onnx

__all__ = ["DEFAULT_RECHECK_MARGIN", "compare_runtimes", "drop_export", "export_onnx"]
