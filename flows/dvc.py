"""Running DVC stages from a flow: one DVC call at a time per workspace, each stage as a job on its backend.

DVC refuses a second ``dvc repro`` in a workspace that is already locked; the flow waits for its turn on
a file lock instead, so concurrent flow runs on one checkout queue up rather than fail. Where the stage runs
(this machine, Slurm, Kubernetes) is the ``launch`` section's choice; it always runs as ``dvc repro <stage>`` in the
workspace, so ``dvc.lock`` stays the record. A sharded stage may first run its slices as an array job.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock

from dualtoken.launch.config import LaunchConfig, StageLaunch
from dualtoken.launch.job import Backend, JobResult, JobSpec, run_job
from dualtoken.launch.select import backend_for


class StageFailed(RuntimeError):
    """A stage's job (or its array of slices) did not succeed: the message says how, where its log is, and
    carries the log's tail."""


@dataclass
class StageOutcome:
    stage: str
    status: str  # "ran", "restored" (from DVC's run cache: same inputs seen before) or "up to date"
    seconds: float
    lock_hash: str
    where: str = "here"  # or the job that ran it, e.g. "slurm job 42"

    @property
    def ran(self) -> bool:
        return self.status == "ran"


def workspace_lock(workspace: Path) -> FileLock:
    lock_dir = workspace / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_dir / "dualtoken-flow.lock"))


def up_to_date(stages: Sequence[str], workspace: Path, env: Mapping[str, str]) -> bool:
    """Whether DVC would skip every one of ``stages`` (one ``dvc status`` for them all: DVC starts in ~2 s)."""
    out = subprocess.run(["dvc", "status", "--json", *stages], cwd=workspace, env={**os.environ, **env},
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise StageFailed(f"dvc status {' '.join(stages)} failed:\n{out.stdout}{out.stderr}")
    return json.loads(out.stdout or "{}") == {}


def lock_hash(stage: str, workspace: Path) -> str:
    """Digest of the stage's dvc.lock entry (deps, params and outs hashes): what DVC considers 'this run'.
    A ``foreach`` group (``ablation``) digests all its members' entries (``ablation@...``)."""
    lock_file = workspace / "dvc.lock"
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}) if lock_file.is_file() else {}
    entry = stages.get(stage) or {k: v for k, v in sorted(stages.items()) if k.startswith(f"{stage}@")}
    if not entry:
        return ""
    return hashlib.md5(json.dumps(entry, sort_keys=True).encode()).hexdigest()


def _run(backend: Backend, spec: JobSpec, log: Callable[[str], None]) -> JobResult:
    result = run_job(backend, spec, log)
    if not result.ok:
        code = f", exit code {result.exit_code}" if result.exit_code is not None else ""
        raise StageFailed(f"job {spec.name} ({result.job_id}) {result.state.value}{code}; log: "
                          f"{', '.join(map(str, result.log_paths))}\n{result.log_tail()}")
    return result


def stage_commands(stage: str, want: StageLaunch, params: str) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """What the stage's job runs, and what its other nodes run where every node starts its own command
    (Kubernetes): the stage itself, without DVC. There the first node must really run the stage, never restore
    it from DVC's run cache, or the other nodes would wait at the rendezvous for a process that never comes."""
    if want.nodes > 1 and want.backend == "kubernetes":
        return ("dvc", "repro", "--no-run-cache", stage), ("python", "-m", "stages", stage, "--params", params)
    return ("dvc", "repro", stage), None


def repro(stage: str, workspace: Path, env: Mapping[str, str], log: Callable[[str], None], launch: LaunchConfig,
          params: str = "params.yaml") -> StageOutcome:
    """``dvc repro stage`` as a job on the stage's backend (after its array of slices, if it has one)."""
    t0 = time.perf_counter()
    want = launch.for_stage(stage)
    limit = want.time_limit_min * 60 if want.time_limit_min else None
    with workspace_lock(workspace):
        if up_to_date([stage], workspace, env):
            log(f"stage {stage}: up to date, DVC skips it")
            return StageOutcome(stage, "up to date", time.perf_counter() - t0, lock_hash(stage, workspace))
        backend = backend_for(launch, stage, workspace)
        if want.array:
            log(f"stage {stage}: {want.array} array tasks on {want.backend}, each one slice of the input shards")
            _run(backend, JobSpec(f"{stage}-slices", ("python", "-m", "stages", stage, "--params", params),
                                  workspace, env, limit, array=want.array), log)
        restored = False

        def watch(line: str) -> None:
            nonlocal restored
            restored = restored or "skipping run, checking out outputs" in line
            log(line)

        command, workers = stage_commands(stage, want, params)
        result = _run(backend, JobSpec(stage, command, workspace, env, limit, worker_command=workers), watch)
        digest = lock_hash(stage, workspace)  # under the lock: this run's entry, not a later flow's
    where = "here" if want.backend == "local" else f"{want.backend} job {result.job_id}"
    return StageOutcome(stage, "restored" if restored else "ran", time.perf_counter() - t0, digest, where)
