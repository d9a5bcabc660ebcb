"""Running DVC stages from a flow: one DVC call at a time per workspace, output streamed to the log.

DVC refuses a second ``dvc repro`` in a workspace that is already locked; the flow waits for its turn on
a file lock instead, so concurrent flow runs on one checkout queue up rather than fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock


class StageFailed(RuntimeError):
    """``dvc repro`` exited non-zero; the message carries the tail of its output."""


@dataclass
class StageOutcome:
    stage: str
    status: str  # "ran", "restored" (from DVC's run cache: same inputs seen before) or "up to date"
    seconds: float
    lock_hash: str

    @property
    def ran(self) -> bool:
        return self.status == "ran"


def workspace_lock(workspace: Path) -> FileLock:
    lock_dir = workspace / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_dir / "dualtoken-flow.lock"))


def _dvc(args: list[str], workspace: Path, env: Mapping[str, str], log: Callable[[str], None]) -> tuple[int, str, bool]:
    """Run DVC, streaming its output; returns (exit code, output tail, whether it restored from run cache)."""
    proc = subprocess.Popen(["dvc", *args], cwd=workspace, env={**os.environ, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    assert proc.stdout is not None
    tail: list[str] = []
    restored = False
    for line in proc.stdout:
        line = line.rstrip()
        log(line)
        restored = restored or "skipping run, checking out outputs" in line
        tail = [*tail[-40:], line]
    return proc.wait(), "\n".join(tail), restored


def stage_is_up_to_date(stage: str, workspace: Path, env: Mapping[str, str]) -> bool:
    out = subprocess.run(["dvc", "status", "--json", stage], cwd=workspace, env={**os.environ, **env},
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise StageFailed(f"dvc status {stage} failed:\n{out.stdout}{out.stderr}")
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


def repro(stage: str, workspace: Path, env: Mapping[str, str], log: Callable[[str], None]) -> StageOutcome:
    t0 = time.perf_counter()
    with workspace_lock(workspace):
        if stage_is_up_to_date(stage, workspace, env):
            log(f"stage {stage}: up to date, DVC skips it")
            return StageOutcome(stage, "up to date", time.perf_counter() - t0, lock_hash(stage, workspace))
        code, tail, restored = _dvc(["repro", stage], workspace, env, log)
    if code != 0:
        raise StageFailed(f"dvc repro {stage} exited with {code}:\n{tail}")
    status = "restored" if restored else "ran"
    return StageOutcome(stage, status, time.perf_counter() - t0, lock_hash(stage, workspace))
