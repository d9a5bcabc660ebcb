"""The local backend: each job is a subprocess in its own process group (so ``cancel`` stops everything it
started, torchrun workers included). From submission on, a reader thread tees its output to a log file under
``log_dir`` (and to ``wait``'s caller) and its time limit runs; ``wait`` follows along until the job ends."""

from __future__ import annotations

import itertools
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dualtoken.launch.job import JobResult, JobSpec, JobState, LaunchError, LogSink

_DONE = object()  # end of a job's output in its line queue


@dataclass
class _Running:
    spec: JobSpec
    process: subprocess.Popen
    log_path: Path
    started: float
    lines: queue.Queue = field(default_factory=queue.Queue)
    state: JobState = JobState.RUNNING


class LocalBackend:
    def __init__(self, log_dir: str | Path, grace_s: float = 10.0) -> None:
        self.log_dir = Path(log_dir)
        self.grace_s = grace_s
        self._jobs: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()

    def submit(self, spec: JobSpec) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            job_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids)}"
        try:
            process = subprocess.Popen(list(spec.command), cwd=spec.workdir, env={**os.environ, **spec.env},
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                       errors="replace", start_new_session=True)
        except OSError as err:  # a missing executable or workdir: say which
            raise LaunchError(f"job {spec.name!r}: cannot start {spec.command[0]!r} in {spec.workdir}: {err}") from None
        job = _Running(spec, process, self.log_dir / f"{job_id}.log", time.monotonic())
        with self._lock:
            self._jobs[job_id] = job
        threading.Thread(target=self._read, args=(job,), daemon=True).start()
        if spec.time_limit_s is not None:
            timer = threading.Timer(spec.time_limit_s, self._stop, (job_id, JobState.TIMED_OUT))
            timer.daemon = True
            timer.start()
        return job_id

    @staticmethod
    def _read(job: _Running) -> None:
        assert job.process.stdout is not None
        with open(job.log_path, "w", encoding="utf-8") as log:
            for line in job.process.stdout:
                log.write(line)
                log.flush()
                job.lines.put(line.rstrip("\n"))
        job.lines.put(_DONE)

    def _job(self, job_id: str) -> _Running:
        if job_id not in self._jobs:
            raise LaunchError(f"no job {job_id!r} was submitted to this backend")
        return self._jobs[job_id]

    def wait(self, job_id: str, on_log: LogSink | None = None) -> JobResult:
        """Until the job's output ends and its process exits; lines already written are delivered first."""
        job = self._job(job_id)
        while (line := job.lines.get()) is not _DONE:
            if on_log is not None:
                on_log(line)
        job.lines.put(_DONE)  # a second wait returns at once
        code = job.process.wait()
        with self._lock:
            if job.state is JobState.RUNNING:
                job.state = JobState.SUCCEEDED if code == 0 else JobState.FAILED
        stopped = job.state in (JobState.CANCELLED, JobState.TIMED_OUT)
        return JobResult(job_id, job.state, None if stopped else code, job.log_path, time.monotonic() - job.started)

    def cancel(self, job_id: str) -> None:
        self._stop(job_id, JobState.CANCELLED)

    def _stop(self, job_id: str, state: JobState) -> None:
        """SIGTERM to the job's whole process group (its first process may be gone while its children run on),
        SIGKILL to whatever is left after ``grace_s``."""
        job = self._job(job_id)
        with self._lock:
            if job.state is not JobState.RUNNING:
                return
            job.state = state
        group = job.process.pid  # start_new_session: the group id is the first process's id
        deadline = time.monotonic() + self.grace_s
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                return
            while time.monotonic() < deadline:
                job.process.poll()  # reap the first process, so an exited group reads as gone
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)
