"""What a backend is asked to run and what it reports back, independent of where it runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol, TypeVar

from dualtoken.errors import DualtokenError


class LaunchError(DualtokenError, RuntimeError):
    """A job could not be submitted, or an unknown job was asked about."""


class TransientLaunchError(LaunchError):
    """The scheduler or API server did not answer this time (restarting, overloaded, connection dropped)."""


class JobState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


@dataclass(frozen=True)
class JobSpec:
    """One job: ``command`` runs in ``workdir`` with ``env`` added to the backend's environment."""

    name: str
    command: tuple[str, ...]
    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    time_limit_s: float | None = None  # the backend stops the job after this long (TIMED_OUT)
    array: int = 0  # > 0: that many tasks, each with DUALTOKEN_ARRAY_INDEX (0..array-1) and DUALTOKEN_ARRAY_SIZE
    # What the other nodes of a multi-node job run where the backend starts every node itself (Kubernetes); on
    # Slurm the first node's command starts them (srun). None: the job cannot span nodes there.
    worker_command: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError(f"job {self.name!r}: empty command")
        if self.array < 0:
            raise ValueError(f"job {self.name!r}: array must be >= 0, got {self.array}")

    @property
    def tasks(self) -> int:
        return max(1, self.array)


@dataclass(frozen=True)
class JobResult:
    job_id: str
    state: JobState
    exit_code: int | None  # None when the job never ran or was stopped from outside
    log_paths: tuple[Path, ...]  # one per task
    seconds: float

    @property
    def ok(self) -> bool:
        return self.state is JobState.SUCCEEDED

    @property
    def log_path(self) -> Path:
        return self.log_paths[0]

    def log_tail(self, lines: int = 40) -> str:
        """The end of each task's log (what a failure message shows)."""
        parts = []
        for path in self.log_paths:
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else ["(no log)"]
            parts.append("\n".join(([f"--- {path.name}"] if len(self.log_paths) > 1 else []) + text))
        return "\n".join(parts)


# How an array's tasks add up: the worst end wins (a failed task fails the array).
_SEVERITY = (JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED, JobState.SUCCEEDED)


def combine(ends: list[tuple[JobState, int | None]]) -> tuple[JobState, int | None]:
    """One (state, exit code) for a job's tasks: running while any runs, pending while any waits and none runs,
    else the most severe end, with the exit code of the first task that ended that way."""
    if not ends:
        raise LaunchError("the scheduler reported no tasks for the job")
    states = {state for state, _ in ends}
    for waiting in (JobState.RUNNING, JobState.PENDING):
        if waiting in states:
            return waiting, None
    worst = min(states, key=_SEVERITY.index)
    return worst, next(code for state, code in ends if state is worst)


LogSink = Callable[[str], None]
T = TypeVar("T")


class Backend(Protocol):
    """Where jobs run. ``wait`` streams the job's log lines to ``on_log`` until it finishes; call it for every
    submitted job (it is what drains and records the log)."""

    def submit(self, spec: JobSpec) -> str: ...

    def wait(self, job_id: str, on_log: LogSink | None = None) -> JobResult: ...

    def cancel(self, job_id: str) -> None: ...


def run_job(backend: Backend, spec: JobSpec, on_log: LogSink | None = None) -> JobResult:
    """Submit and follow a job to its end. Whatever interrupts the caller (a cancelled Prefect run's SIGTERM, a
    task timeout, Ctrl-C) cancels the job first: nothing keeps running on the cluster unowned."""
    job_id = backend.submit(spec)
    try:
        return backend.wait(job_id, on_log)
    except BaseException as interrupt:
        try:
            backend.cancel(job_id)
        except Exception as err:  # the interrupt is what the caller must see; say the job may live on
            if on_log is not None:
                on_log(f"could not cancel job {job_id} ({err}); cancel it by hand")
            interrupt.add_note(f"job {job_id} may still be running: cancelling it failed ({err})")
        raise


def patiently(check: Callable[[], T], what: str, on_log: LogSink | None, patience_s: float = 600.0) -> T:
    """``check()``, retried with back-off while it fails transiently (a scheduler or API server restarting, a
    dropped connection) for up to ``patience_s``: one failed poll must not cancel a job that has run for days.
    Other errors (an unknown job) are answers and go straight up."""
    deadline, delay = time.monotonic() + patience_s, 1.0
    while True:
        try:
            return check()
        except (TransientLaunchError, OSError) as err:
            if time.monotonic() + delay > deadline:
                raise LaunchError(f"{what}: still failing after {patience_s:.0f}s: {err}") from err
            if on_log is not None:
                on_log(f"{what} failed ({err}); retrying in {delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 60.0)
