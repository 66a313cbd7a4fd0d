"""System metrics while training (CPU, RAM, process RSS, GPU via pynvml) and the environment a version
records (library versions, hardware)."""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any


class SystemMonitor:
    """CPU %, RAM and process RSS via psutil; GPU utilisation and memory via pynvml when a GPU exists."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)
        self._nvml: Any = None  # the pynvml module when a GPU was found
        self._gpus: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._gpus = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - no driver / no GPU: CPU metrics only
            self._gpus = []

    def sample(self) -> dict[str, float]:
        vm = self._psutil.virtual_memory()
        out = {
            "system/cpu_percent": float(self._psutil.cpu_percent(None)),
            "system/ram_used_mb": vm.used / 2**20,
            "system/ram_percent": float(vm.percent),
            "system/process_rss_mb": self._process.memory_info().rss / 2**20,
        }
        for i, handle in enumerate(self._gpus):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                out[f"system/gpu{i}_utilization_percent"] = float(util.gpu)
                out[f"system/gpu{i}_memory_used_mb"] = mem.used / 2**20
                out[f"system/gpu{i}_memory_percent"] = 100.0 * mem.used / max(mem.total, 1)
            except Exception:  # noqa: BLE001
                continue
        return out

    def gpu_names(self) -> list[str]:
        names = []
        for handle in self._gpus:
            try:
                name = self._nvml.nvmlDeviceGetName(handle)
                names.append(name.decode() if isinstance(name, bytes) else str(name))
            except Exception:  # noqa: BLE001
                names.append("unknown GPU")
        return names

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "hotelbot-cli",
        "torch",
        "transformers",
        "tokenizers",
        "datasets",
        "scikit-learn",
        "mlflow-skinny",
        "mlflow",
        "safetensors",
        "numpy",
    ):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def hardware(monitor: SystemMonitor) -> dict[str, Any]:
    import psutil
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": monitor.gpu_names(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
