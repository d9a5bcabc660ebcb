"""Which shards this process tokenises: a strided, deterministic slice chosen by rank and world size.

The same rule serves every launcher: ``torchrun`` ranks, a Slurm job array (one task per slice) and a
Kubernetes indexed job. Shard ``i`` of the ordered list belongs to rank ``i % world``, so every shard is
taken exactly once and the slices differ in size by at most one shard.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from dualtoken.errors import DualtokenError

T = TypeVar("T")


class SliceError(DualtokenError, ValueError):
    """A rank / world size that cannot describe a slice, or a launcher environment missing one of them."""


@dataclass(frozen=True)
class WorkSlice:
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise SliceError(f"rank {self.rank} is not in [0, {self.world}) (world size {self.world})")

    @property
    def whole(self) -> bool:
        return self.world == 1

    def take(self, items: Sequence[T]) -> list[T]:
        return list(items[self.rank :: self.world])

    def __str__(self) -> str:
        return f"slice {self.rank + 1}/{self.world}"


def slice_from_env(env: Mapping[str, str] | None = None) -> WorkSlice:
    """This process's slice from its launcher's environment; the whole list when there is none.

    torchrun sets ``RANK``/``WORLD_SIZE``; a Slurm array task has ``SLURM_ARRAY_TASK_ID`` counted from
    ``SLURM_ARRAY_TASK_MIN`` out of ``SLURM_ARRAY_TASK_COUNT``; a Kubernetes indexed job has
    ``JOB_COMPLETION_INDEX`` and needs ``DUALTOKEN_WORLD_SIZE`` (its completions) set in the manifest.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env:
        return WorkSlice(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]))
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task, first = int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        step = int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
        return WorkSlice((task - first) // step, int(env["SLURM_ARRAY_TASK_COUNT"]))
    if "JOB_COMPLETION_INDEX" in env:
        if "DUALTOKEN_WORLD_SIZE" not in env:
            raise SliceError("JOB_COMPLETION_INDEX is set but DUALTOKEN_WORLD_SIZE is not: set it to the "
                             "indexed job's completions so each pod knows its share")
        return WorkSlice(int(env["JOB_COMPLETION_INDEX"]), int(env["DUALTOKEN_WORLD_SIZE"]))
    return WorkSlice()
