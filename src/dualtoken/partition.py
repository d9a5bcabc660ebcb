"""Which input shards this process works on (curation, tokenisation): a strided, deterministic slice chosen
by rank and world size.

The same rule serves every launcher: ``torchrun`` ranks, a job array of any backend (one task per slice) and
a Kubernetes indexed job. Shard ``i`` of the ordered list belongs to rank ``i % world``, so every shard is
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

    torchrun sets ``RANK``/``WORLD_SIZE``; the ``dualtoken.launch`` backends give each array task
    ``DUALTOKEN_ARRAY_INDEX`` of ``DUALTOKEN_ARRAY_SIZE``; a Slurm array submitted by hand has
    ``SLURM_ARRAY_TASK_ID`` counted from ``SLURM_ARRAY_TASK_MIN`` out of ``SLURM_ARRAY_TASK_COUNT``; a
    Kubernetes indexed job has ``JOB_COMPLETION_INDEX`` and needs ``DUALTOKEN_ARRAY_SIZE`` (its completions).
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env:
        return WorkSlice(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]))
    if "DUALTOKEN_ARRAY_INDEX" in env or "JOB_COMPLETION_INDEX" in env:
        if "DUALTOKEN_ARRAY_SIZE" not in env:
            raise SliceError("an array index is set (DUALTOKEN_ARRAY_INDEX or JOB_COMPLETION_INDEX) but "
                             "DUALTOKEN_ARRAY_SIZE is not: set it to the array's size so each task knows its share")
        index = env.get("DUALTOKEN_ARRAY_INDEX", env.get("JOB_COMPLETION_INDEX", "0"))
        return WorkSlice(int(index), int(env["DUALTOKEN_ARRAY_SIZE"]))
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task, first = int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        step = int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
        return WorkSlice((task - first) // step, int(env["SLURM_ARRAY_TASK_COUNT"]))
    return WorkSlice()
