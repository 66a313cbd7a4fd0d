"""Where inference runs: ``HOTELBOT_DEVICE`` = auto (default: CUDA when there is one, else the CPU), cpu,
cuda or cuda:N.

- PyTorch models (the torch predictor, sentiment, entities, the generator) go to :func:`torch_device`;
- onnxruntime sessions get :func:`onnx_providers`: CUDAExecutionProvider first when the installed
  onnxruntime has it (the onnxruntime-gpu package) and the device allows it, the CPU provider always
  last (operators the CUDA provider lacks fall back to it).

Asking torch for CUDA where there is none is a ConfigError, not a silent CPU run; asking it of an
onnxruntime without the CUDA provider runs ONNX models on the CPU with one warning (the torch models still
use the GPU). Importing this module
imports neither torch nor onnxruntime: :func:`onnx_providers` never imports torch (an ONNX-only serve
install has none).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from contextvars import ContextVar
from typing import Any, Iterator

from ..errors import ConfigError

DEVICE_ENV = "HOTELBOT_DEVICE"
AUTO, CPU, CUDA = "auto", "cpu", "cuda"
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
_VALID = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


log = logging.getLogger("hotelbot.inference")
_WARNED: list[str] = []  # onnx_providers said once per process that CUDA was asked of a CPU onnxruntime
_FORCED: ContextVar[str | None] = ContextVar("hotelbot_device_forced", default=None)


@contextlib.contextmanager
def on_cpu() -> Iterator[None]:
    """Inside the block every predictor and session this module places runs on the CPU, whatever
    HOTELBOT_DEVICE says: the runtime choice at export measures the CPU runtimes a serve-only replica runs
    (torch on a GPU against ONNX on the CPU would always pick torch)."""
    token = _FORCED.set(CPU)
    try:
        yield
    finally:
        _FORCED.reset(token)


def requested_device(value: str | None = None) -> str:
    """``value``, else the device forced by :func:`on_cpu`, else HOTELBOT_DEVICE, checked: auto, cpu, cuda or
    cuda:N (default auto)."""
    if value is None:
        value = _FORCED.get()
    raw = (value if value is not None else os.environ.get(DEVICE_ENV, "")).strip().lower() or AUTO
    if not _VALID.match(raw):
        raise ConfigError(f"{DEVICE_ENV} must be auto, cpu, cuda or cuda:N, got {raw!r}")
    return raw


def torch_device(value: str | None = None) -> Any:
    """The torch.device inference runs on (imports torch: only torch paths call it)."""
    import torch

    asked = requested_device(value)
    if asked == AUTO:
        return torch.device(CUDA if torch.cuda.is_available() else CPU)
    if asked.startswith(CUDA):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{DEVICE_ENV}={asked} but torch sees no CUDA device", hint=f"unset {DEVICE_ENV} or set it to cpu"
            )
        index = int(asked.split(":")[1]) if ":" in asked else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{DEVICE_ENV}={asked} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(asked)


def place(model: Any, value: str | None = None) -> Any:
    """``model`` (a torch module) moved to :func:`torch_device`, in eval mode."""
    return model.to(torch_device(value)).eval()


def onnx_providers(value: str | None = None, available: list[str] | None = None) -> list[Any]:
    """The execution providers of an onnxruntime session: ``[CUDA (with its device id), CPU]`` when the
    installed onnxruntime offers CUDA and the device is auto or cuda[:N], else ``[CPU]``. ``available``
    defaults to ``onnxruntime.get_available_providers()``."""
    asked = requested_device(value)
    if asked == CPU:
        return [CPU_PROVIDER]
    if available is None:
        import onnxruntime as ort

        available = list(ort.get_available_providers())
    if CUDA_PROVIDER not in available:
        if asked.startswith(CUDA) and not _WARNED:  # torch models honour it; onnxruntime (the CPU build) cannot
            _WARNED.append(asked)
            log.warning(
                "%s=%s: the installed onnxruntime has no CUDA provider (install onnxruntime-gpu); "
                "ONNX models run on the CPU",
                DEVICE_ENV,
                asked,
            )
        return [CPU_PROVIDER]
    index = int(asked.split(":")[1]) if ":" in asked else 0
    return [(CUDA_PROVIDER, {"device_id": index}), CPU_PROVIDER]


__all__ = ["DEVICE_ENV", "on_cpu", "onnx_providers", "place", "requested_device", "torch_device"]
