"""The Slurm backend: render an sbatch script from a template, ``sbatch --parsable``, follow the job with
``scontrol`` while streaming its output file, map Slurm's end states and exit codes, ``scancel`` on cancel.

Slurm keeps a finished job visible to ``scontrol`` for ``MinJobAge`` seconds (300 by default); a job waited
on later is looked up in accounting (``sacct``) instead, which needs slurmdbd. The command runs on the first
node of the allocation: with ``nodes > 1`` it starts its own tasks (``srun torchrun ...``).
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from dualtoken.launch.job import JobResult, JobSpec, JobState, LaunchError, LogSink

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
RETRIES = 3  # a busy slurmctld answers "Socket timed out" now and then


@dataclass(frozen=True)
class SlurmSettings:
    """Resources and site options of the jobs one backend submits; None leaves Slurm's default."""

    template: Path
    nodes: int = 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem: str | None = None  # e.g. "64G"
    time: str | None = None  # e.g. "02:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    setup: tuple[str, ...] = field(default_factory=tuple)  # shell lines before the command
    poll_s: float = 2.0


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
        if "timed out" not in message.lower() or attempt == RETRIES - 1:
            raise LaunchError(f"{shlex.join(cmd)} failed ({out.returncode}): {message}")
        time.sleep(2**attempt)
    raise AssertionError("unreachable")


def parse_job(line: str) -> tuple[JobState, int | None]:
    """``scontrol show job -o`` line -> (state, exit code; None when the job died by a signal). A state this
    table does not know counts as running: the next poll will see where it went."""
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    state = STATES.get(fields.get("JobState", ""), JobState.RUNNING)
    code, signal_number = (int(x) for x in fields.get("ExitCode", "0:0").split(":"))
    return state, (None if signal_number else code)


def parse_sacct(text: str) -> tuple[JobState, int | None]:
    """``sacct -n -P -X -o State,ExitCode`` for a job Slurm no longer shows: its end state and exit code."""
    state_text, exit_text = text.strip().splitlines()[0].split("|")
    state = STATES.get(state_text.split()[0], JobState.FAILED)  # e.g. "CANCELLED by 0"
    code, signal_number = (int(x) for x in exit_text.split(":"))
    return state, (None if signal_number else code)


class SlurmBackend:
    def __init__(self, settings: SlurmSettings, log_dir: str | Path) -> None:
        self.settings = settings
        self.log_dir = Path(log_dir).resolve()
        if not settings.template.is_file():
            raise LaunchError(f"sbatch template {settings.template} not found (the default is "
                              "infra/slurm/stage.sbatch)")
        self._logs: dict[str, Path] = {}
        self._ids = itertools.count()

    def script(self, spec: JobSpec) -> str:
        s = self.settings
        values = {"job_name": spec.name, "log_path": str(self.log_dir / f"{spec.name}-%j.log"),
                  "nodes": str(s.nodes), "cpus_per_task": str(s.cpus_per_task),
                  "gpus_per_node": str(s.gpus_per_node) if s.gpus_per_node else "", "mem": s.mem or "",
                  "time": s.time or "", "partition": s.partition or "", "account": s.account or "",
                  "qos": s.qos or "", "workdir": shlex.quote(str(Path(spec.workdir).resolve())),
                  "setup": "\n".join(s.setup),
                  "exports": "\n".join(f"export {k}={shlex.quote(v)}" for k, v in spec.env.items()),
                  "command": shlex.join(spec.command)}
        if spec.time_limit_s is not None and not s.time:  # the site's `time` wins over the job's own limit
            values["time"] = str(max(1, math.ceil(spec.time_limit_s / 60)))  # minutes
        return render(s.template.read_text(), values)

    def submit(self, spec: JobSpec) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids)}.sbatch"
        path.write_text(self.script(spec))
        job_id = _run(["sbatch", "--parsable", str(path)]).strip().split(";")[0]
        self._logs[job_id] = self.log_dir / f"{spec.name}-{job_id}.log"
        return job_id

    def state(self, job_id: str) -> tuple[JobState, int | None]:
        try:
            return parse_job(_run(["scontrol", "show", "job", "-o", job_id]).strip().splitlines()[0])
        except LaunchError as err:
            if "invalid job id" not in str(err).lower():
                raise
        try:  # finished longer than MinJobAge ago: accounting still knows how it ended
            return parse_sacct(_run(["sacct", "-j", job_id, "-n", "-P", "-X", "-o", "State,ExitCode"]))
        except (LaunchError, ValueError, IndexError) as err:
            raise LaunchError(f"Slurm job {job_id} is gone from scontrol and sacct has no record of it ({err}): "
                              "wait on jobs sooner than MinJobAge, or enable accounting (slurmdbd)") from None

    def wait(self, job_id: str, on_log: LogSink | None = None) -> JobResult:
        log_path = self._logs.get(job_id)
        if log_path is None:
            raise LaunchError(f"no job {job_id!r} was submitted through this backend")
        started, offset, pending = time.monotonic(), 0, b""
        while True:
            state, code = self.state(job_id)
            if log_path.is_file():  # stream whole lines written since the last look (bytes: no split characters)
                with open(log_path, "rb") as handle:
                    if handle.seek(0, 2) < offset:  # truncated (a requeued job starts its log again)
                        offset, pending = 0, b""
                    handle.seek(offset)
                    pending += handle.read()
                    offset = handle.tell()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if on_log is not None:
                        on_log(line.decode("utf-8", errors="replace"))
            if state.finished:
                if pending and on_log is not None:
                    on_log(pending.decode("utf-8", errors="replace"))
                return JobResult(job_id, state, code if state in (JobState.SUCCEEDED, JobState.FAILED) else None,
                                 log_path, time.monotonic() - started)
            time.sleep(self.settings.poll_s)

    def cancel(self, job_id: str) -> None:
        _run(["scancel", job_id])
