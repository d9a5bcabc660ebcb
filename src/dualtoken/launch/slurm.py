"""The Slurm backend: render an sbatch script from a template, ``sbatch --parsable``, follow the job with
``scontrol`` while streaming its output file(s), map Slurm's end states and exit codes, ``scancel`` on cancel.
An array job (``JobSpec.array``) is one ``--array`` submission whose tasks each get ``DUALTOKEN_ARRAY_INDEX``
and ``DUALTOKEN_ARRAY_SIZE``; it ends when its last task does, failed if any task failed.

Slurm keeps a finished job visible to ``scontrol`` for ``MinJobAge`` seconds (300 by default); a job waited
on later is looked up in accounting (``sacct``) instead, which needs slurmdbd. The command runs on the first
node of the allocation; the template exports where torchrun's rendezvous is and how to reach the other nodes
(``srun``), so a stage that relaunches itself under torchrun spans every node (``dualtoken.training.distributed``).
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
import subprocess
import time
from pathlib import Path

from dualtoken.launch.config import SlurmSite, StageLaunch
from dualtoken.launch.job import (
    JobResult,
    JobSpec,
    JobState,
    LaunchError,
    LogSink,
    TransientLaunchError,
    combine,
    patiently,
)

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
STATES = {"PENDING": JobState.PENDING, "CONFIGURING": JobState.PENDING, "REQUEUED": JobState.PENDING,
          "REQUEUE_HOLD": JobState.PENDING, "REQUEUE_FED": JobState.PENDING, "RESV_DEL_HOLD": JobState.PENDING,
          "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING, "SUSPENDED": JobState.RUNNING,
          "STOPPED": JobState.RUNNING, "SIGNALING": JobState.RUNNING, "STAGE_OUT": JobState.RUNNING,
          "RESIZING": JobState.RUNNING,
          "COMPLETED": JobState.SUCCEEDED, "CANCELLED": JobState.CANCELLED, "TIMEOUT": JobState.TIMED_OUT,
          "DEADLINE": JobState.TIMED_OUT, "FAILED": JobState.FAILED, "NODE_FAIL": JobState.FAILED,
          "OUT_OF_MEMORY": JobState.FAILED, "BOOT_FAIL": JobState.FAILED, "PREEMPTED": JobState.FAILED,
          "SPECIAL_EXIT": JobState.FAILED, "REVOKED": JobState.CANCELLED}
INTERRUPTED = ("PREEMPTED", "NODE_FAIL")  # not the job's fault: requeued (up to launch.slurm.max_requeues)
RETRIES = 3  # a busy slurmctld answers "Socket timed out" now and then
TRANSIENT = ("timed out", "unable to contact slurm controller", "connection refused", "slurmdbd")


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``{{ name }}`` placeholders; an ``#SBATCH`` line with a placeholder that renders empty is left out;
    unknown names are errors."""
    unknown = sorted({m.group(1) for m in PLACEHOLDER.finditer(template)} - values.keys())
    if unknown:
        raise LaunchError(f"sbatch template: unknown placeholder(s) {unknown}; known: {sorted(values)}")
    lines = []
    for line in template.splitlines():
        names = [m.group(1) for m in PLACEHOLDER.finditer(line)]
        if line.startswith("#SBATCH") and any(values[n] == "" for n in names):
            continue
        lines.append(PLACEHOLDER.sub(lambda m: values[m.group(1)], line))
    return "\n".join(lines) + "\n"


def _run(cmd: list[str]) -> str:
    for attempt in range(RETRIES):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise LaunchError(f"{cmd[0]} not found: the Slurm backend runs where the Slurm client tools are "
                              "(a login node), or start a local one with infra/local/slurm.sh") from None
        if out.returncode == 0:
            return out.stdout
        message = out.stderr.strip() or out.stdout.strip()
        transient = any(word in message.lower() for word in TRANSIENT)
        if not transient or attempt == RETRIES - 1:
            error = TransientLaunchError if transient else LaunchError
            raise error(f"{shlex.join(cmd)} failed ({out.returncode}): {message}")
        time.sleep(2**attempt)
    raise AssertionError("unreachable")


def _end(state: JobState, exit_text: str) -> tuple[JobState, int | None]:
    """A task's state with its exit code from Slurm's ``code:signal``: None when it died by a signal or was
    stopped from outside (cancelled, timed out), where Slurm's number says nothing about the program."""
    code, signal_number = (int(x) for x in exit_text.split(":"))
    return state, (code if state in (JobState.SUCCEEDED, JobState.FAILED) and not signal_number else None)


def parse_job(text: str) -> tuple[JobState, int | None]:
    """``scontrol show job -o`` output (one line per array task, or one) -> (state, exit code). A state this
    table does not know counts as running: the next poll will see where it went."""
    ends = []
    for line in text.strip().splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        ends.append(_end(STATES.get(fields.get("JobState", ""), JobState.RUNNING), fields.get("ExitCode", "0:0")))
    return combine(ends)


def interrupted(text: str) -> str | None:
    """The state of a job (``scontrol show job -o``, one job) that ended through no fault of its own, else None."""
    fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
    return fields.get("JobState") if fields.get("JobState") in INTERRUPTED else None


def parse_sacct(text: str) -> tuple[JobState, int | None]:
    """``sacct -n -P -X -o State,ExitCode`` (a line per array task) for a job Slurm no longer shows."""
    ends = []
    for line in text.strip().splitlines():
        state_text, exit_text = line.split("|")
        ends.append(_end(STATES.get(state_text.split()[0], JobState.FAILED), exit_text))  # "CANCELLED by 0"
    return combine(ends)


class _LogTail:
    """Whole lines appended to a file since the last look (read as bytes: no character split between looks)."""

    def __init__(self, path: Path, prefix: str = "") -> None:
        self.path, self.prefix, self.offset, self.pending = path, prefix, 0, b""

    def lines(self) -> list[str]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as handle:
            if handle.seek(0, 2) < self.offset:  # truncated (a requeued job starts its log again)
                self.offset, self.pending = 0, b""
            handle.seek(self.offset)
            self.pending += handle.read()
            self.offset = handle.tell()
        *whole, self.pending = self.pending.split(b"\n")
        return [self.prefix + line.decode("utf-8", errors="replace") for line in whole]

    def rest(self) -> list[str]:
        """The last, unterminated line, once the job has ended."""
        rest, self.pending = self.pending, b""
        return [self.prefix + rest.decode("utf-8", errors="replace")] if rest else []


class SlurmBackend:
    """Submits one stage's jobs: ``site`` is ``launch.slurm`` (the template is taken from ``workspace``), ``job``
    the stage's resources (``launch.stages.<stage>``)."""

    def __init__(self, site: SlurmSite, job: StageLaunch, workspace: Path, log_dir: str | Path) -> None:
        self.site, self.job = site, job
        self.template = workspace / site.template
        self.log_dir = Path(log_dir).resolve()
        if not self.template.is_file():
            raise LaunchError(f"sbatch template {self.template} not found: launch.slurm.template names it "
                              "(default infra/slurm/stage.sbatch)")
        self._logs: dict[str, tuple[tuple[Path, ...], bool]] = {}  # job id -> (task logs, whether an array)
        self._ids = itertools.count()

    def script(self, spec: JobSpec) -> str:
        s, r = self.site, self.job
        log_name = self._log_name(spec.name, "%A", "%a") if spec.array else self._log_name(spec.name, "%j")
        values = {"job_name": spec.name, "log_path": str(self.log_dir / log_name),
                  "array": f"0-{spec.array - 1}" if spec.array else "",
                  "nodes": str(r.nodes), "cpus_per_task": str(r.cpus_per_task),
                  "gpus_per_node": str(r.gpus_per_node) if r.gpus_per_node else "", "mem": r.mem or "",
                  "time": "", "signal_s": "", "partition": s.partition or "", "account": s.account or "",
                  "qos": s.qos or "", "workdir": shlex.quote(str(Path(spec.workdir).resolve())),
                  "setup": "\n".join(s.setup), "sbatch_extra": "\n".join(f"#SBATCH {o}" for o in s.sbatch),
                  "exports": "\n".join(f"export {k}={shlex.quote(v)}" for k, v in spec.env.items()),
                  "command": shlex.join(spec.command)}
        if spec.time_limit_s is not None:
            values["time"] = str(max(1, math.ceil(spec.time_limit_s / 60)))  # minutes
            values["signal_s"] = str(s.signal_before_limit_s)
        return render(self.template.read_text(), values)

    def submit(self, spec: JobSpec) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids)}.sbatch"
        path.write_text(self.script(spec))
        job_id = _run(["sbatch", "--parsable", str(path)]).strip().split(";")[0]
        self._logs[job_id] = (tuple(self.log_dir / self._log_name(spec.name, job_id, str(i) if spec.array else None)
                                    for i in range(spec.tasks)), bool(spec.array))
        return job_id

    @staticmethod
    def _log_name(name: str, job: str, task: str | None = None) -> str:
        """The log of a job (``name-<id>.log``) or of one array task (``name-<array id>_<task>.log``)."""
        return f"{name}-{job}_{task}.log" if task is not None else f"{name}-{job}.log"

    def state(self, job_id: str) -> tuple[JobState, int | None]:
        try:
            return parse_job(_run(["scontrol", "show", "job", "-o", job_id]))
        except LaunchError as err:
            if "invalid job id" not in str(err).lower():
                raise
        try:  # finished longer than MinJobAge ago: accounting still knows how it ended
            return parse_sacct(_run(["sacct", "-j", job_id, "-n", "-P", "-X", "-o", "State,ExitCode"]))
        except TransientLaunchError:
            raise
        except (LaunchError, ValueError, IndexError) as err:
            raise LaunchError(f"Slurm job {job_id} is gone from scontrol and sacct has no record of it ({err}): "
                              "wait on jobs sooner than MinJobAge, or enable accounting (slurmdbd)") from None

    def wait(self, job_id: str, on_log: LogSink | None = None) -> JobResult:
        if job_id not in self._logs:
            raise LaunchError(f"no job {job_id!r} was submitted through this backend")
        log_paths, array = self._logs[job_id]
        tails = [_LogTail(path, f"[task {i}] " if array else "") for i, path in enumerate(log_paths)]
        started, requeues = time.monotonic(), 0
        while True:
            state, code = patiently(lambda: self.state(job_id), f"Slurm state of job {job_id}", on_log)
            if state is JobState.FAILED and not array and requeues < self.site.max_requeues:
                why = self._interrupted(job_id, on_log)
                if why:  # preempted or its node failed: run it again; a training stage resumes its checkpoint
                    requeues += 1
                    _run(["scontrol", "requeue", job_id])
                    if on_log is not None:
                        on_log(f"dualtoken: job {job_id} {why}; requeued ({requeues}/{self.site.max_requeues})")
                    continue
            lines = [line for tail in tails for line in tail.lines()]
            if state.finished:
                lines += [line for tail in tails for line in tail.rest()]
            for line in lines if on_log is not None else ():
                on_log(line)
            if state.finished:
                return JobResult(job_id, state, code, log_paths, time.monotonic() - started)
            time.sleep(self.site.poll_s)

    def _interrupted(self, job_id: str, on_log: LogSink | None) -> str | None:
        """PREEMPTED or NODE_FAIL for a failed job scontrol still shows; None otherwise (or once it forgot it,
        when only accounting knows how it ended)."""
        try:
            return interrupted(patiently(lambda: _run(["scontrol", "show", "job", "-o", job_id]),
                                         f"Slurm state of job {job_id}", on_log))
        except LaunchError:
            return None

    def cancel(self, job_id: str) -> None:
        _run(["scancel", job_id])
