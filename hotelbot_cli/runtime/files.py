"""Partial checksum verification: the version files an ONNX predictor reads, checked against the
version's recorded checksums without hashing the ~470 MB of PyTorch weights it never opens."""

from __future__ import annotations

import threading
from typing import Sequence

from ..errors import IntegrityError
from ..registry import VersionInfo
from ..registry.checksums import listed_problems, require_no_problems
from .detector import MEMORY_FILE
from .layout import (
    CLASSIFIER_FILE,
    MODEL_SUBDIR,
    ONNX_FILES,
    RUNTIME_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    TOKENIZER_INDEX_FILE,
    onnx_referenced_files,
)


def onnx_files_read(runtime: str, spec: dict | None = None) -> list[str]:
    """The version files (relative to the version dir) that an ONNX predictor reads (``spec``: the version's
    runtime.json, which names the files each graph references; the kNN detector's memory when there is one)."""
    return [
        f"{MODEL_SUBDIR}/{name}"
        for name in (
            RUNTIME_FILE,
            CLASSIFIER_FILE,
            TOKENIZER_FILE,
            TOKENIZER_CONFIG_FILE,
            TOKENIZER_INDEX_FILE,
            MEMORY_FILE,
        )
    ] + onnx_graph_files_read(runtime, spec)


def onnx_graph_files_read(runtime: str, spec: dict | None = None) -> list[str]:
    """The last entries of :func:`onnx_files_read`: the graph and the external data it reads, its own or shared
    with the PyTorch weights (hashed in the background)."""
    return [f"{MODEL_SUBDIR}/{name}" for name in onnx_referenced_files(ONNX_FILES[runtime], spec)]


def verify_files(info: VersionInfo, rels: Sequence[str]) -> list[str]:
    """Problems with ``rels`` against the version's recorded checksums (the fast path of ``predict``:
    hashing only what the ONNX runtime reads, not the ~470 MB of PyTorch weights it never opens).

    A file that exists but has no recorded checksum is a problem (added after publishing); a file
    that neither exists nor is recorded is fine (e.g. no tokenizer_config.json)."""
    return listed_problems(info.name, info.path, info.manifest.files, rels)


class BackgroundCheck:
    """:func:`verify_files` in a thread; :meth:`require` waits for it and raises on a problem."""

    def __init__(self, info: VersionInfo, rels: Sequence[str]) -> None:
        self._info, self._error = info, None
        self._problems: list[str] = []

        def run() -> None:
            try:
                self._problems = verify_files(info, rels)
            except BaseException as exc:  # noqa: BLE001 - re-raised in require()
                self._error = exc

        self._thread = threading.Thread(target=run, name="hotelbot-verify", daemon=True)
        self._thread.start()

    def require(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        _raise_problems(self._info, self._problems)


def _raise_problems(info: VersionInfo, problems: Sequence[str]) -> None:
    require_no_problems(info.name, problems)


def require_files_intact(info: VersionInfo, rels: Sequence[str]) -> None:
    if info.manifest.corrupt:
        raise IntegrityError(f"version {info.name} failed its checksum check: metadata.json is unreadable")
    _raise_problems(info, verify_files(info, rels))
