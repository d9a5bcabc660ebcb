"""Process-group set-up for one process or many under ``torchrun`` (env:// rendezvous).

On CUDA the backend is NCCL and each process takes ``cuda:LOCAL_RANK``; on CPU it is gloo. A single
process never creates a process group, so the same training code runs unchanged in a notebook.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def local_world(self) -> int:
        """Processes of this run on this node (torchrun's LOCAL_WORLD_SIZE)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def reduce_number(self, value: float, op: str = "sum") -> float:
        """A Python number summed (``sum``) or maximised (``max``) over ranks."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return float(tensor.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average of a tensor over ranks (the tensor itself on one process)."""
        if not self.distributed:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device is 'cuda' but no CUDA device is visible")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world, local_rank, dev)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(module: str, nproc: int, argv: list[str], env: Mapping[str, str] | None = None) -> list[str]:
    """The command that runs ``python -m module argv`` as ``nproc`` processes per node.

    One node: torchrun's standalone rendezvous. Several (or a scheduler's allocation): the job script says where
    the c10d rendezvous is (``DUALTOKEN_RDZV_ENDPOINT``, ``DUALTOKEN_RDZV_ID``), how many nodes meet there
    (``DUALTOKEN_NNODES``) and what starts one torchrun per node (``DUALTOKEN_NODE_LAUNCHER``, e.g. ``srun``;
    empty where each node runs this command itself, as the pods of a Kubernetes indexed job do).
    """
    env = os.environ if env is None else env
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    endpoint = env.get("DUALTOKEN_RDZV_ENDPOINT")
    if not endpoint:
        return [*run, "--standalone", "-m", module, *argv]
    rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
                  f"--rdzv-id={env.get('DUALTOKEN_RDZV_ID', 'dualtoken')}"]
    return [*shlex.split(env.get("DUALTOKEN_NODE_LAUNCHER", "")), *run, f"--nnodes={nodes(env)}", *rendezvous,
            "-m", module, *argv]


def nodes(env: Mapping[str, str] | None = None) -> int:
    return int((os.environ if env is None else env).get("DUALTOKEN_NNODES", "1"))


def processes_per_node(configured: int, env: Mapping[str, str] | None = None) -> int:
    """One process per GPU of the allocation where a scheduler's job says so (``DUALTOKEN_NPROC``, which the
    Slurm and Kubernetes jobs set from the GPUs they were given), else ``configured`` (``runtime.nproc``)."""
    allocated = (os.environ if env is None else env).get("DUALTOKEN_NPROC", "")
    return int(allocated) if allocated.isdigit() and int(allocated) > 0 else configured


def needs_torchrun(nproc: int) -> bool:
    """Whether a stage must relaunch itself: several processes here or several nodes, and not yet a worker."""
    return (nproc > 1 or nodes() > 1) and not under_torchrun()


ERROR_DIR = "DUALTOKEN_ERROR_DIR"  # where the ranks of a relaunched stage leave their one-line errors


def relaunch_under_torchrun(module: str, nproc: int, argv: list[str]) -> int:
    """Run ``python -m module argv`` under torchrun (see ``torchrun_command``); returns its exit status.

    Lets a DVC stage command stay ``python -m stages.x`` whatever the process and node count: the stage calls
    this when ``needs_torchrun``. When a rank fails, torchrun stops the others (nobody waits for it); a rank that
    failed with a one-line error (``report_rank_error``) has that line printed last and the status is 2, as if
    the stage had run in one process (the first rank's status: 2, or the requeue status of a run stopped on a
    scheduler's signal).
    """
    with tempfile.TemporaryDirectory(prefix="dualtoken-errors-") as folder:
        status = subprocess.call(torchrun_command(module, nproc, argv), env={**os.environ, ERROR_DIR: folder})
        reports = [path.read_text().strip().split("\n", 1) for path in sorted(Path(folder).glob("rank*.txt"))]
    for message in dict.fromkeys(m for _, m in reports):
        print(message, file=sys.stderr)
    return int(reports[0][0]) if reports else status


def report_rank_error(message: str, status: int = 2) -> None:
    """Leave a rank's error and exit status where the relaunching stage finds them (no-op outside a relaunch)."""
    folder = os.environ.get(ERROR_DIR)
    if folder and Path(folder).is_dir():
        with contextlib.suppress(OSError):
            (Path(folder) / f"rank{os.environ.get('RANK', '0')}.txt").write_text(f"{status}\n{message}")


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ
