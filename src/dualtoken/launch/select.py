"""The backend a stage's job goes to, from the ``launch`` section of the configuration."""

from __future__ import annotations

from pathlib import Path

from dualtoken.launch.config import LaunchConfig
from dualtoken.launch.job import Backend
from dualtoken.launch.kubernetes import KubernetesBackend
from dualtoken.launch.local import LocalBackend
from dualtoken.launch.slurm import SlurmBackend


def backend_for(launch: LaunchConfig, stage: str, workspace: Path) -> Backend:
    """A fresh backend for ``stage`` (relative paths in ``launch`` are taken from the workspace)."""
    want = launch.for_stage(stage)
    log_dir = workspace / launch.log_dir
    if want.backend == "local":
        return LocalBackend(log_dir)
    if want.backend == "kubernetes":
        return KubernetesBackend(launch.kubernetes, want, workspace, log_dir)
    return SlurmBackend(launch.slurm, want, workspace, log_dir)
