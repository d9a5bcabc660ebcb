"""Leaving a training run for a scheduler: SIGTERM (a preemption, a pod's eviction, ``scancel``) or SIGUSR1 (the
warning Slurm sends before the time limit, ``--signal``) asks the trainer to write a checkpoint at the end of the
step it is in and exit with ``REQUEUE_EXIT``. The job script requeues the job on that status
(``infra/slurm/stage.sbatch``; Kubernetes retries an evicted pod), and the rerun resumes from the checkpoint as if
nothing had happened. Every rank stops at the same step: the request is all-reduced each step.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import torch

from dualtoken.errors import DualtokenError
from dualtoken.training.distributed import DistContext

REQUEUE_EXIT = 85  # "checkpointed on a scheduler's signal: run me again"
MARKER_ENV = "DUALTOKEN_REQUEUE_MARKER"  # the Slurm job script requeues itself when this file appears
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(DualtokenError, RuntimeError):
    """The run stopped on a scheduler's signal after writing a checkpoint; a rerun resumes from it."""

    exit_code = REQUEUE_EXIT


class StopRequest:
    """Set by a signal handler; read at step boundaries, agreed on by every rank."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum

    def requested(self, ctx: DistContext) -> bool:
        flag = torch.tensor([0.0 if self.signal is None else 1.0], device=ctx.device)
        return bool(ctx.mean(flag).item() > 0)


@contextmanager
def stop_on_signal() -> Iterator[StopRequest]:
    """Handlers for the scheduler's signals while training runs (the previous ones come back after). Off the
    main thread, where Python cannot take signals, the request simply never comes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def leave_if_asked(stop: StopRequest, ctx: DistContext, done: int, total: int, save: Callable[[int], object],
                   who: str) -> None:
    """After step ``done`` of ``total``: on a scheduler's request, ``save(done)`` a checkpoint and raise
    ``Preempted`` (the last step needs none: the run is finished)."""
    if done < total and stop.requested(ctx):
        save(done)
        raise Preempted(f"{who}: stopped after step {done}/{total} on a scheduler's signal; the checkpoint is "
                        "written and a rerun resumes from it")


def ask_for_requeue() -> None:
    """Leave the marker a Slurm job script looks for (it cannot see the exit status through ``dvc repro``)."""
    marker = os.environ.get(MARKER_ENV)
    if marker:
        with open(marker, "w") as handle:
            handle.write(f"{os.getpid()}\n")
