"""The Slurm backend: render an sbatch script from a template, ``sbatch --parsable``, follow the job with
``scontrol`` while streaming its output file, map Slurm's end states and exit codes, ``scancel`` on cancel.

Slurm keeps a finished job visible to ``scontrol`` for ``MinJobAge`` seconds (300 by default): the backend
polls every ``poll_s`` seconds, well inside that window.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from dualtoken.launch.job import JobResult, JobSpec, JobState, LaunchError, LogSink

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
STATES = {"PENDING": JobState.PENDING, "CONFIGURING": JobState.PENDING, "REQUEUED": JobState.PENDING,
          "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING, "SUSPENDED": JobState.RUNNING,
          "COMPLETED": JobState.SUCCEEDED, "CANCELLED": JobState.CANCELLED, "TIMEOUT": JobState.TIMED_OUT,
          "DEADLINE": JobState.TIMED_OUT, "FAILED": JobState.FAILED, "NODE_FAIL": JobState.FAILED,
          "OUT_OF_MEMORY": JobState.FAILED, "BOOT_FAIL": JobState.FAILED, "PREEMPTED": JobState.FAILED}


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
    """Fill ``{{ name }}`` placeholders; drop ``#SBATCH`` lines whose value is empty; unknown names are errors."""
    unknown = sorted({m.group(1) for m in PLACEHOLDER.finditer(template)} - values.keys())
    if unknown:
        raise LaunchError(f"sbatch template: unknown placeholder(s) {unknown}; known: {sorted(values)}")
    lines = []
    for line in template.splitlines():
        filled = PLACEHOLDER.sub(lambda m: values[m.group(1)], line)
        if line.startswith("#SBATCH") and PLACEHOLDER.search(line) and filled.rstrip().endswith("="):
            continue
        lines.append(filled)
    return "\n".join(lines) + "\n"


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise LaunchError(f"{cmd[0]} not found: the Slurm backend runs where the Slurm client tools are "
                          "(a login node), or start a local one with infra/local/slurm.sh") from None
    if out.returncode != 0:
        raise LaunchError(f"{shlex.join(cmd)} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def parse_job(line: str) -> tuple[JobState, int | None]:
    """``scontrol show job -o`` line -> (state, exit code; None when the job died by a signal)."""
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    raw = fields.get("JobState", "")
    if raw not in STATES:
        raise LaunchError(f"unknown Slurm job state {raw!r} in: {line[:200]}")
    code, signal_number = (int(x) for x in fields.get("ExitCode", "0:0").split(":"))
    return STATES[raw], (None if signal_number else code)


class SlurmBackend:
    def __init__(self, settings: SlurmSettings, log_dir: str | Path) -> None:
        self.settings = settings
        self.log_dir = Path(log_dir).resolve()
        if not settings.template.is_file():
            raise LaunchError(f"sbatch template {settings.template} not found (the default is "
                              "infra/slurm/stage.sbatch)")
        self._logs: dict[str, Path] = {}

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
        if spec.time_limit_s is not None and not s.time:
            values["time"] = str(max(1, int(spec.time_limit_s // 60)))  # minutes
        return render(s.template.read_text(), values)

    def submit(self, spec: JobSpec) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{spec.name}.sbatch"
        path.write_text(self.script(spec))
        job_id = _run(["sbatch", "--parsable", str(path)]).strip().split(";")[0]
        self._logs[job_id] = self.log_dir / f"{spec.name}-{job_id}.log"
        return job_id

    def state(self, job_id: str) -> tuple[JobState, int | None]:
        return parse_job(_run(["scontrol", "show", "job", "-o", job_id]).strip().splitlines()[0])

    def wait(self, job_id: str, on_log: LogSink | None = None) -> JobResult:
        log_path = self._logs.get(job_id)
        if log_path is None:
            raise LaunchError(f"no job {job_id!r} was submitted through this backend")
        started, offset, partial = time.monotonic(), 0, ""
        while True:
            state, code = self.state(job_id)
            if log_path.is_file():  # stream what the job wrote since the last look
                with open(log_path, encoding="utf-8", errors="replace") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                    offset = handle.tell()
                *lines, partial = (partial + chunk).split("\n")
                for line in lines:
                    if on_log is not None:
                        on_log(line)
            if state.finished:
                if partial and on_log is not None:
                    on_log(partial)
                return JobResult(job_id, state, code if state in (JobState.SUCCEEDED, JobState.FAILED) else None,
                                 log_path, time.monotonic() - started)
            time.sleep(self.settings.poll_s)

    def cancel(self, job_id: str) -> None:
        _run(["scancel", job_id])
