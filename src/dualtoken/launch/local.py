"""The local backend: each job is a subprocess in its own process group (so ``cancel`` stops everything it
started, torchrun workers included), its output teed to a log file under ``log_dir`` and to ``on_log``."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dualtoken.launch.job import JobResult, JobSpec, JobState, LaunchError, LogSink


@dataclass
class _Running:
    spec: JobSpec
    process: subprocess.Popen
    log_path: Path
    started: float
    state: JobState = JobState.RUNNING


class LocalBackend:
    def __init__(self, log_dir: str | Path, grace_s: float = 10.0) -> None:
        self.log_dir = Path(log_dir)
        self.grace_s = grace_s
        self._jobs: dict[str, _Running] = {}
        self._lock = threading.Lock()

    def submit(self, spec: JobSpec) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        job_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{len(self._jobs)}"
        try:
            process = subprocess.Popen(list(spec.command), cwd=spec.workdir, env={**os.environ, **spec.env},
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                       start_new_session=True)
        except OSError as err:  # a missing executable or workdir: say which
            raise LaunchError(f"job {spec.name!r}: cannot start {spec.command[0]!r} in {spec.workdir}: {err}") from None
        with self._lock:
            self._jobs[job_id] = _Running(spec, process, self.log_dir / f"{job_id}.log", time.monotonic())
        return job_id

    def _job(self, job_id: str) -> _Running:
        if job_id not in self._jobs:
            raise LaunchError(f"no job {job_id!r} was submitted to this backend")
        return self._jobs[job_id]

    def wait(self, job_id: str, on_log: LogSink | None = None) -> JobResult:
        job = self._job(job_id)
        timer = None
        if job.spec.time_limit_s is not None:
            timer = threading.Timer(job.spec.time_limit_s, self._stop, (job_id, JobState.TIMED_OUT))
            timer.daemon = True
            timer.start()
        assert job.process.stdout is not None
        with open(job.log_path, "w", encoding="utf-8") as log:
            for line in job.process.stdout:
                log.write(line)
                log.flush()
                if on_log is not None:
                    on_log(line.rstrip("\n"))
        code = job.process.wait()
        if timer is not None:
            timer.cancel()
        with self._lock:
            if job.state is JobState.RUNNING:
                job.state = JobState.SUCCEEDED if code == 0 else JobState.FAILED
        stopped = job.state in (JobState.CANCELLED, JobState.TIMED_OUT)
        return JobResult(job_id, job.state, None if stopped else code, job.log_path, time.monotonic() - job.started)

    def cancel(self, job_id: str) -> None:
        self._stop(job_id, JobState.CANCELLED)

    def _stop(self, job_id: str, state: JobState) -> None:
        """SIGTERM to the job's process group, SIGKILL after ``grace_s`` if anything is left."""
        job = self._job(job_id)
        with self._lock:
            if job.state is not JobState.RUNNING or job.process.poll() is not None:
                return
            job.state = state
        try:
            os.killpg(job.process.pid, signal.SIGTERM)
            job.process.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(job.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
