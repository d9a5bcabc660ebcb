"""The local backend: each job (each task of an array) is a subprocess in its own process group, so ``cancel``
stops everything it started, torchrun workers included. From submission on, a reader thread per task tees its
output to a log file under ``log_dir`` (and to ``wait``'s caller, array lines prefixed with their task) and
the time limit runs; ``wait`` follows along until every task has ended. Array tasks run side by side."""

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

from dualtoken.launch.job import JobResult, JobSpec, JobState, LaunchError, LogSink, combine

_DONE = object()  # end of one task's output in the job's line queue


@dataclass
class _Running:
    spec: JobSpec
    processes: list[subprocess.Popen]
    log_paths: tuple[Path, ...]
    started: float
    lines: queue.Queue = field(default_factory=queue.Queue)
    state: JobState = JobState.RUNNING  # until wait sees the end, or a cancel / the time limit stops it
    timer: threading.Timer | None = None


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
        tasks = range(spec.tasks)
        envs = [{**os.environ, **spec.env, **({"DUALTOKEN_ARRAY_INDEX": str(i), "DUALTOKEN_ARRAY_SIZE": str(spec.array)}
                                             if spec.array else {})} for i in tasks]
        logs = tuple(self.log_dir / (f"{job_id}_{i}.log" if spec.array else f"{job_id}.log") for i in tasks)
        processes: list[subprocess.Popen] = []
        try:
            for env in envs:
                processes.append(subprocess.Popen(
                    list(spec.command), cwd=spec.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True, bufsize=1, errors="replace", start_new_session=True))
        except OSError as err:  # a missing executable or workdir: say which (and stop tasks already started)
            for process in processes:
                os.killpg(process.pid, signal.SIGKILL)
            raise LaunchError(f"job {spec.name!r}: cannot start {spec.command[0]!r} in {spec.workdir}: {err}") from None
        job = _Running(spec, processes, logs, time.monotonic())
        with self._lock:
            self._jobs[job_id] = job
        for i, (process, log) in enumerate(zip(processes, logs, strict=True)):
            prefix = f"[task {i}] " if spec.array else ""
            threading.Thread(target=self._read, args=(process, log, job.lines, prefix), daemon=True).start()
        if spec.time_limit_s is not None:
            job.timer = threading.Timer(spec.time_limit_s, self._stop, (job_id, JobState.TIMED_OUT))
            job.timer.daemon = True
            job.timer.start()
        return job_id

    @staticmethod
    def _read(process: subprocess.Popen, log_path: Path, lines: queue.Queue, prefix: str) -> None:
        assert process.stdout is not None
        try:
            with open(log_path, "w", encoding="utf-8") as log:
                for line in process.stdout:
                    log.write(line)
                    log.flush()
                    lines.put(prefix + line.rstrip("\n"))
        except OSError as err:  # the log cannot be written (disk full): keep draining, so the task never blocks
            lines.put(f"{prefix}[log file {log_path} failed: {err}; output from here on is not kept]")
            for line in process.stdout:
                lines.put(prefix + line.rstrip("\n"))
        finally:
            lines.put(_DONE)

    def _job(self, job_id: str) -> _Running:
        if job_id not in self._jobs:
            raise LaunchError(f"no job {job_id!r} was submitted to this backend")
        return self._jobs[job_id]

    def wait(self, job_id: str, on_log: LogSink | None = None) -> JobResult:
        """Until every task's output ends and its process exits; lines already written are delivered first."""
        job = self._job(job_id)
        ended = 0
        while ended < len(job.processes):
            line = job.lines.get()
            if line is _DONE:
                ended += 1
            elif on_log is not None:
                on_log(line)
        for _ in job.processes:
            job.lines.put(_DONE)  # a second wait returns at once
        codes = [process.wait() for process in job.processes]
        if job.timer is not None:
            job.timer.cancel()  # ended in time: a late timer must not call it timed out
        with self._lock:
            if job.state is JobState.RUNNING:
                ends = [(JobState.SUCCEEDED if code == 0 else JobState.FAILED, code) for code in codes]
                job.state = combine(ends)[0]
        stopped = job.state in (JobState.CANCELLED, JobState.TIMED_OUT)
        code = None if stopped else next((c for c in codes if c != 0), 0)
        return JobResult(job_id, job.state, code, job.log_paths, time.monotonic() - job.started)

    def cancel(self, job_id: str) -> None:
        self._stop(job_id, JobState.CANCELLED)

    def _stop(self, job_id: str, state: JobState) -> None:
        """SIGTERM to each task's whole process group (its first process may be gone while its children run on),
        SIGKILL to whatever is left after ``grace_s``."""
        job = self._job(job_id)
        with self._lock:
            if job.state is not JobState.RUNNING:
                return
            job.state = state
        groups = {process.pid: process for process in job.processes}  # start_new_session: group id == pid
        deadline = time.monotonic() + self.grace_s
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in list(groups):
                try:
                    os.killpg(group, sig)
                except ProcessLookupError:
                    groups.pop(group)
            while groups and time.monotonic() < deadline:
                for group, process in list(groups.items()):
                    process.poll()  # reap the first process, so an exited group reads as gone
                    try:
                        os.killpg(group, 0)
                    except ProcessLookupError:
                        groups.pop(group)
                time.sleep(0.05)
            if not groups:
                return
