"""Training on several processes with the Hugging Face Trainer's own launchers::

    torchrun --nproc_per_node 4 -m hotelbot_cli train ...
    accelerate launch --num_processes 4 -m hotelbot_cli train ...

Both start one process per device with ``RANK`` and ``WORLD_SIZE`` set; the Trainer then runs data-parallel
(DDP: each process trains on its share of every batch, gradients are averaged, evaluation predictions are
gathered). Everything around the fit belongs to the main process (rank 0) alone:

- it materialises caches first (the packaged base model's conversion) while the others wait
  (:func:`main_process_first`);
- it alone opens MLflow runs (``MlflowTracker`` starts none elsewhere), draws progress, and, once the fit is
  over, calibrates, exports, writes reports and publishes the version;
- every other process leaves :func:`~hotelbot_cli.training.loop.train_best_epoch` with
  :class:`SecondaryProcess` once the last collective step (the prediction pass over the validation split)
  is done; the pipeline turns it into a "secondary" step and the CLI exits 0 without output.

In a ``train --model-type all`` chain the processes stay together: after each step the main process shares
its outcome (:func:`share_from_main`) so every process starts the next step from the same version.
Components whose training does not run on the Trainer (the knowledge base, the reply model) run on the main
process only. ``--hpo`` is refused under a launcher: trials are single-process (share a study between
processes with ``--hpo-storage`` instead).

Without a launcher (``WORLD_SIZE`` unset or 1) every function here is a no-op and torch is not imported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from typing import Any, Iterator


# The collectives' timeout: the other processes wait in share_from_main while the main one exports, reports and
# publishes a step of `--model-type all` (the knowledge base and reply model included): tens of minutes at worst.
COLLECTIVE_TIMEOUT_SECONDS = 4 * 3600
SHARED_BYTES = 64  # share_from_main: a flag byte and the name


class SecondaryProcess(Exception):
    """Raised on a process other than the main one when its part of a fit is done: the main process
    publishes. Not an error (the CLI exits 0)."""

    def __init__(self) -> None:
        super().__init__(f"process {rank()} of {world_size()}: fit done; the main process publishes the version")


def world_size() -> int:
    """How many processes train together (torchrun/accelerate set WORLD_SIZE; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    """True on rank 0 (and without a launcher): the process that logs, exports, reports and publishes."""
    return not is_distributed() or rank() == 0


def training_on_cpu() -> bool:
    """Whether the Trainer must be told to use the CPU (``use_cpu``): HOTELBOT_DEVICE=cpu, or several
    processes and no CUDA (accelerate then joins them with gloo; without it each CPU process would train
    alone on all the data)."""
    import torch  # only a fit asks

    from ..runtime.device import CPU, requested_device  # runtime/__init__ loads the predictors: only a fit asks

    return requested_device() == CPU or (is_distributed() and not torch.cuda.is_available())


def _state() -> Any:
    """accelerate's PartialState: joins the launcher's process group (gloo on CPUs, nccl on GPUs), the one
    the Trainer uses too (same arguments, so whichever comes first sets it up the same way)."""
    from accelerate import PartialState  # heavy: only under a launcher

    return PartialState(cpu=training_on_cpu(), timeout=dt.timedelta(seconds=COLLECTIVE_TIMEOUT_SECONDS))


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (building a cache); the others wait for it, then run it too
    (and find the cache built)."""
    if not is_distributed():
        yield
        return
    with _state().main_process_first():
        yield


def share_from_main(value: str | None) -> str | None:
    """The main process's ``value`` (a version name, or None) on every process: a collective call, every
    process must make it. Sent as bytes in a tensor, not pickled."""
    if not is_distributed():
        return value
    import torch  # with a launcher, torch is loaded already
    import torch.distributed as dist

    state = _state()
    raw = (value or "").encode("utf-8")[: SHARED_BYTES - 1] if is_main_process() else b""
    box = torch.zeros(SHARED_BYTES, dtype=torch.uint8, device=state.device)
    if is_main_process():
        box[0] = 1 if value is not None else 0
        box[1 : 1 + len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    dist.broadcast(box, src=0)
    data = bytes(box.cpu().tolist())
    return data[1:].rstrip(b"\0").decode("utf-8") if data[0] else None


def leave_if_secondary() -> None:
    """Raise :class:`SecondaryProcess` on a process other than the main one (call it after the fit's last
    collective step)."""
    if not is_main_process():
        raise SecondaryProcess()


__all__ = [
    "SecondaryProcess",
    "is_distributed",
    "is_main_process",
    "leave_if_secondary",
    "main_process_first",
    "rank",
    "share_from_main",
    "world_size",
]
