"""DeepSpeed set-up shared by the MLLM trainer and its benchmark: accelerator choice, process group,
engine config from params, and checkpoint folders.

On CPU DeepSpeed runs over gloo with a torch optimizer. Its shared-memory all-reduce op would be
JIT-compiled on first use (about a minute, per machine); it is marked incompatible instead, so plain
torch.distributed collectives are used. DeepSpeed requires a process group even for one process: one is
created on a free loopback port when ``torchrun`` did not provide one. The ``deepspeed`` launcher works too
(it sets the same variables as torchrun; ``--local_rank`` is accepted by the stage and CLI entry points).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist

from dualtoken.training.distributed import DistContext


def import_deepspeed(device: torch.device) -> ModuleType:
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    import deepspeed

    if device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def launcher_env(ctx: DistContext, port: int = 0) -> Iterator[None]:
    """The variables a launcher would have set, only while DeepSpeed runs (it reads LOCAL_RANK at engine
    start and during ZeRO steps): left in place they would make later code in this process believe it
    runs under torchrun."""
    wanted = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(ctx.rank),
              "WORLD_SIZE": str(ctx.world), "LOCAL_RANK": str(ctx.local_rank)}
    added = [k for k in wanted if k not in os.environ]
    os.environ.update({k: wanted[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _backend(ctx: DistContext) -> str:
    return "nccl" if ctx.device.type == "cuda" else "gloo"


def ensure_process_group(ctx: DistContext) -> None:
    """DeepSpeed needs an initialised process group even on one process: one on a free loopback port."""
    deepspeed = import_deepspeed(ctx.device)
    if dist.is_initialized():
        return
    if ctx.distributed:
        raise RuntimeError("a multi-process run must join its process group before DeepSpeed starts")
    port = _free_port()
    dist.init_process_group(_backend(ctx), init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    # DeepSpeed caches its view of the group: one left from an earlier (destroyed) group would be stale
    deepspeed.comm.comm.cdb = None
    deepspeed.utils.groups._WORLD_GROUP = None
    with launcher_env(ctx, port):
        deepspeed.init_distributed(_backend(ctx), verbose=False)


def engine_config(micro_batch: int, grad_accum: int, world: int, grad_clip: float, zero_stage: int,
                  precision: str) -> dict[str, Any]:
    return {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": grad_accum,
            "train_batch_size": micro_batch * grad_accum * world, "gradient_clipping": grad_clip,
            "zero_optimization": {"stage": zero_stage}, "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": precision == "bf16"}, "steps_per_print": 2**31 - 1, "wall_clock_breakdown": False}


@contextlib.contextmanager
def running_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, config: dict[str, Any],
                   ctx: DistContext) -> Iterator[Any]:
    """A DeepSpeed engine for the block's duration (the launcher variables set), destroyed afterwards: its
    gradient hooks are removed, so the next phase can wrap the same model in a new engine."""
    ensure_process_group(ctx)
    deepspeed = import_deepspeed(ctx.device)
    with launcher_env(ctx):
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
        if ctx.world == 1 and config["zero_optimization"]["stage"] == 0:
            # averaging gradients over one process is the identity; skip the flatten-reduce-copy round trip
            engine.enable_backward_allreduce = False
        try:
            yield engine
        finally:
            engine.destroy()


def latest_tag(folder: str | Path) -> str | None:
    """The tag of the newest complete checkpoint: DeepSpeed writes ``latest`` after the checkpoint itself."""
    marker = Path(folder) / "latest"
    if not marker.is_file():
        return None
    tag = marker.read_text().strip()
    return tag if (Path(folder) / tag).is_dir() else None


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Drop all but the newest ``keep`` checkpoint folders (tags sort by phase, then step)."""
    tags = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
