"""Load a version's predictor: :func:`load_predictor` and :func:`predictor_from_registry` pick the one the
version's ``model/runtime.json`` names (override: ``HOTELBOT_RUNTIME=torch|onnx-fp32|onnx-int8``), the
ONNX one only when its file exists and onnxruntime is installed, else the PyTorch one."""

from __future__ import annotations

import logging
from pathlib import Path

from ..registry import ModelRegistry, VersionInfo
from .files import require_files_intact
from .layout import MODEL_SUBDIR, ONNX_FILES, RUNTIME_FILE, TORCH
from .onnx import OnnxPredictor
from .prediction import Predictor
from .selection import read_runtime_spec, requested_runtime
from .reference import TorchPredictor

log = logging.getLogger("hotelbot.inference")


def _plan(info: VersionInfo, runtime: str | None) -> tuple[str, bool]:
    """(runtime to load, whether it was asked for explicitly) for a version."""
    asked = requested_runtime(runtime)
    if asked is not None:
        return asked, True
    spec = read_runtime_spec(info.path / MODEL_SUBDIR)
    return (spec["runtime"] if spec else TORCH), False


def _onnx_usable(info: VersionInfo, runtime: str, explicit: bool) -> bool:
    return graph_usable(info.path / MODEL_SUBDIR, info.name, runtime, explicit)


def graph_usable(model_dir: Path, what: str, runtime: str, explicit: bool) -> bool:
    """Whether ``runtime`` can serve the model in ``model_dir`` (``what`` names it in the warnings): an ONNX
    runtime whose graph is there, with onnxruntime installed."""
    if runtime == TORCH:
        return False
    if not (Path(model_dir) / ONNX_FILES[runtime]).is_file():
        if explicit:
            log.warning("%s has no %s model; using torch", what, runtime)
        return False
    try:
        import onnxruntime  # noqa: F401 - only whether it is installed; the session imports it anyway
    except ImportError:
        log.warning("onnxruntime is not installed; %s runs on torch", what)
        return False
    return True


def load_predictor(info: VersionInfo, runtime: str | None = None) -> Predictor:
    """The predictor for an (already verified) version: ONNX when its runtime.json (or ``runtime`` /
    ``HOTELBOT_RUNTIME``) names an ONNX runtime whose file exists, else the PyTorch one."""
    chosen, explicit = _plan(info, runtime)
    if _onnx_usable(info, chosen, explicit):
        return OnnxPredictor.from_version(info, chosen)
    return TorchPredictor.from_version(info)


def predictor_from_registry(
    registry: ModelRegistry, version: str | None = None, verify: bool = True, runtime: str | None = None
) -> Predictor:
    """Load ``version`` (default: deployed, else newest) for predict/serve, refusing corrupt versions.

    With an ONNX runtime only the files it reads are checksummed (runtime.json, classifier.json,
    tokenizer.json, tokenizer_config.json, tokenizer.unigram.bin, the .onnx file and its .data), not the ~470 MB
    of PyTorch weights it never opens; the torch runtime checks the whole version as before.
    """
    info = registry.resolve(version)
    if verify and info.manifest.corrupt:
        info = registry.require_intact(info.name)  # raises with the reason
    explicit = requested_runtime(runtime) is not None
    if verify and not explicit:
        # runtime.json decides what gets loaded: check it before believing it.
        require_files_intact(info, [f"{MODEL_SUBDIR}/{RUNTIME_FILE}"])
    chosen, explicit = _plan(info, runtime)
    if _onnx_usable(info, chosen, explicit):
        return OnnxPredictor.from_version(info, chosen, verify=verify)
    if verify:
        info = registry.require_intact(info.name)
    return TorchPredictor.from_version(info)


def dir_runtime(model_dir: Path, what: str, runtime: str | None = None) -> str:
    """The runtime to load a model saved in a directory of its own (the entity and sentiment models) with:
    ``runtime`` / HOTELBOT_RUNTIME when asked and its graph is there, else the one its ``runtime.json``
    chose (their export keeps only that graph), else torch. ``what`` names the model in warnings."""
    asked = requested_runtime(runtime)
    if asked == TORCH:
        return TORCH  # runtime.json is not even read: a broken one cannot stand in the way
    spec = read_runtime_spec(model_dir)
    chosen = spec["runtime"] if spec else TORCH
    if asked is not None and asked != chosen:
        if graph_usable(model_dir, what, asked, False):
            return asked
        log.warning("%s has no %s model; using the %s it was exported for", what, asked, chosen)
    return chosen if graph_usable(model_dir, what, chosen, False) else TORCH


def load_dir_predictor(model_dir: Path, version: str, what: str, runtime: str | None = None) -> Predictor:
    """A sentence classifier saved in a directory of its own (the sentiment model: ``save_classifier`` plus
    its export) on :func:`dir_runtime`'s runtime. ``what`` names it in warnings ("v0004's sentiment model")."""
    chosen = dir_runtime(model_dir, what, runtime)
    if chosen != TORCH:
        return OnnxPredictor.from_model_dir(model_dir, chosen, version)
    from ..modeling import load_classifier  # imports torch: only for a model that runs on it

    model, tokenizer = load_classifier(model_dir)
    return TorchPredictor(model, tokenizer, version, model_dir)
