"""Curated shards -> batches of decoded images, read and decoded on DataLoader worker processes.

Each worker owns whole shards (worker ``i`` of ``n`` takes shards ``i, i + n, ...``) and cuts each shard
into batches of consecutive samples, so a batch never spans two shards: what a shard's codes are depends
only on the shard, never on the number of workers or on which shards were already done.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dualtoken.data.curated import CuratedSample, iter_samples
from dualtoken.data.tokens import CARRIED_PARTS
from dualtoken.storage import StorageConfig


@dataclass
class ShardBatch:
    shard: str  # the shard's name, e.g. train-000003.tar
    index: int  # batch number within the shard
    keys: list[str]
    images: torch.Tensor  # uint8 (B, 3, H, W); B may be 0 for an empty shard
    carried: list[dict[str, bytes]]  # the parts copied to the output (txt, json)
    last: bool  # the shard's final batch

    def pin_memory(self) -> ShardBatch:
        """Called by the DataLoader's pinning thread (``pin_memory=True``): page-locked for async copies."""
        self.images = self.images.pin_memory()
        return self


class ShardBatches(IterableDataset):
    def __init__(self, shards: list[tuple[str, str]], batch_size: int, storage: StorageConfig) -> None:
        """``shards``: (name, local path or s3:// URL) in the order they should be done."""
        self.shards, self.batch_size, self.storage = shards, batch_size, storage

    def __iter__(self) -> Iterator[ShardBatch]:
        info = get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for name, url in mine:
            yield from self._batches(name, url)

    def _batches(self, name: str, url: str) -> Iterator[ShardBatch]:
        """Full batches, then the remainder (possibly empty) marked ``last``."""
        index, batch = 0, []
        for sample in iter_samples([url], self.storage):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield _batch(name, index, batch, last=False)
                index, batch = index + 1, []
        yield _batch(name, index, batch, last=True)


def _batch(name: str, index: int, samples: list[CuratedSample], last: bool) -> ShardBatch:
    images = (torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous() if samples
              else torch.empty(0, 3, 0, 0, dtype=torch.uint8))
    carried = [{p: s.parts[p] for p in CARRIED_PARTS if p in s.parts} for s in samples]
    return ShardBatch(name, index, [s.key for s in samples], images, carried, last)


def _as_is(item: ShardBatch) -> ShardBatch:
    return item


def shard_loader(shards: list[tuple[str, str]], batch_size: int, storage: StorageConfig, workers: int,
                 prefetch: int, pin_memory: bool = False) -> DataLoader:
    """Batches in a fixed order: workers take turns (DataLoader's in-order round robin)."""
    workers = min(workers, len(shards))
    return DataLoader(ShardBatches(shards, batch_size, storage), batch_size=None, collate_fn=_as_is,
                      num_workers=workers, prefetch_factor=prefetch if workers else None, pin_memory=pin_memory)
