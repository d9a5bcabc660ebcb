"""What a backend is asked to run and what it reports back, independent of where it runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

from dualtoken.errors import DualtokenError


class LaunchError(DualtokenError, RuntimeError):
    """A job could not be submitted, or an unknown job was asked about."""


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

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError(f"job {self.name!r}: empty command")


@dataclass(frozen=True)
class JobResult:
    job_id: str
    state: JobState
    exit_code: int | None  # None when the job never ran or was stopped from outside
    log_path: Path
    seconds: float

    @property
    def ok(self) -> bool:
        return self.state is JobState.SUCCEEDED


LogSink = Callable[[str], None]


class Backend(Protocol):
    """Where jobs run. ``wait`` streams the job's log lines to ``on_log`` until it finishes; call it for every
    submitted job (it is what drains and records the log)."""

    def submit(self, spec: JobSpec) -> str: ...

    def wait(self, job_id: str, on_log: LogSink | None = None) -> JobResult: ...

    def cancel(self, job_id: str) -> None: ...
