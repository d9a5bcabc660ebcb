"""A rank's share of a training run: its micro batch of the global batch and its streams of the corpus
(``dualtoken.data.stream``), with the loader settings from the stage's runtime."""

from __future__ import annotations

from dualtoken.data.loader import LoaderSettings, StreamLoader, StreamSpec, default_workers
from dualtoken.data.pieces import Decoder
from dualtoken.data.shards import Shard
from dualtoken.data.stream import StreamOrder, stream_ids
from dualtoken.storage import StorageConfig
from dualtoken.training.config import ProcessConfig, RuntimeConfig
from dualtoken.training.distributed import DistContext


def micro_batch(batch_size: int, world: int, grad_accum: int, key: str) -> int:
    """Per-process micro batch for a global batch; an uneven split is a configuration error."""
    if batch_size % (world * grad_accum):
        raise ValueError(f"{key}.batch_size ({batch_size}) must be divisible by processes x grad_accum "
                         f"({world} x {grad_accum})")
    return batch_size // (world * grad_accum)


def loader_settings(runtime: ProcessConfig, ctx: DistContext) -> LoaderSettings:
    """Workers (``null``: ``default_workers``) and prefetch from the stage's runtime; batches pinned when they
    go to a GPU."""
    workers = default_workers(ctx.device, ctx.local_world) if runtime.loader_workers is None else runtime.loader_workers
    return LoaderSettings(workers=workers, prefetch=runtime.loader_prefetch, pin_memory=ctx.device.type == "cuda")


def rank_loader(shards: list[Shard], decoder: Decoder, seed: int, shuffle_buffer: int, ctx: DistContext,
                runtime: RuntimeConfig, storage: StorageConfig | None = None, name: str = "train"
                ) -> tuple[StreamLoader, list[str]]:
    """This rank's loader over ``shards`` and its stream names, one per accumulation micro step: the run
    reads ``world x grad_accum`` streams (``dualtoken.data.stream``)."""
    order = StreamOrder([s.samples for s in shards], ctx.world * runtime.grad_accum, seed, shuffle_buffer, name=name)
    specs = [StreamSpec(f"{name}/{k}", order, k, draw_seed=seed)
             for k in stream_ids(ctx.rank, ctx.world, runtime.grad_accum)]
    return StreamLoader(shards, decoder, specs, loader_settings(runtime, ctx), storage), [s.name for s in specs]
