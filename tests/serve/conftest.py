"""Shared by the serve tests that start a real `hotelbot serve` process."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Sequence

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(command: Sequence[str], env: dict[str, str], workdir: Path, timeout: float = 90) -> Iterator[str]:
    """``command`` + ``serve --host 127.0.0.1 --port P`` running until its /ready answers 200; yields its base
    URL; SIGTERM (then kill) when done. Its output goes to ``workdir/serve.log`` (shown when it fails)."""
    port = free_port()
    log_path = Path(workdir) / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*command, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.3)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def serve_process():
    """:func:`serving`, for tests: ``with serve_process(command, env, tmp_path) as base: ...``."""
    return serving
