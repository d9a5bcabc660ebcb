"""Scaffolding every training stage shares: optimizer + schedule from config, resumable checkpoint
folders tied to a configuration fingerprint, the streaming loader of a rank, step logging with throughput,
atomic model folders."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dualtoken.data.loader import Decoder, LoaderSettings, StreamLoader, StreamSpec, default_workers
from dualtoken.data.shards import Shard
from dualtoken.data.stream import StreamOrder, stream_ids
from dualtoken.storage import StorageConfig
from dualtoken.training.checkpoint import Checkpointer
from dualtoken.training.config import OptimConfig, ProcessConfig, RuntimeConfig
from dualtoken.training.distributed import DistContext
from dualtoken.training.schedule import warmup_cosine_scheduler

FINGERPRINT_FILE = "fingerprint.json"


def fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_optimizer(groups: Iterable[dict[str, Any]], optim: OptimConfig, total_steps: int
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over parameter groups (each may carry an ``lr_scale``), warm-up + cosine schedule."""
    param_groups = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            param_groups.append({"params": params, "lr": optim.lr * group.get("lr_scale", 1.0)})
    if not param_groups:
        raise ValueError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(param_groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    return optimizer, warmup_cosine_scheduler(optimizer, optim.warmup_steps, total_steps, optim.min_lr_ratio)


def library_digest() -> str:
    """Digest of the library's Python sources: checkpoints written by other code are not resumed, so an
    output DVC records for new code never continues a run of the old code."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def claim_checkpoint_folder(work_dir: str | Path, print_fn: Callable[[str], None], ctx: DistContext,
                            identity: dict[str, Any]) -> Path:
    """``work_dir/checkpoints``, with checkpoints written for another configuration set aside.

    ``identity`` is everything that makes a checkpoint valid to resume (config, data digest, process
    count); the library's code digest is added here.
    """
    folder = Path(work_dir) / "checkpoints"
    marker = Path(work_dir) / FINGERPRINT_FILE
    identity = {**identity, "code": library_digest()}
    wanted = fingerprint(identity)
    if ctx.is_main:
        found = json.loads(marker.read_text()).get("fingerprint") if marker.is_file() else None
        if found != wanted and folder.exists():
            stale = folder.with_name(f"checkpoints.stale-{found or 'unknown'}")
            shutil.rmtree(stale, ignore_errors=True)
            folder.rename(stale)
            print_fn(f"checkpoints in {folder} were written for another configuration, corpus or code version: "
                     f"moved to {stale}, starting fresh")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"fingerprint": wanted, "identity": identity}, indent=1, default=str))
    ctx.barrier()
    return folder


def open_checkpoints(work_dir: str | Path, print_fn: Callable[[str], None], ctx: DistContext, keep: int,
                     identity: dict[str, Any]) -> Checkpointer:
    folder = claim_checkpoint_folder(work_dir, print_fn, ctx, identity)
    return Checkpointer(folder, keep=keep, rank=ctx.rank, barrier=ctx.barrier)


class StepLog:
    """Prints a line every ``every`` steps on rank 0 (loss terms, lr, samples/s) and hands the numbers on."""

    def __init__(self, name: str, total_steps: int, every: int, console: Console, ctx: DistContext,
                 sink: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.name, self.total, self.every = name, total_steps, every
        self.console, self.ctx, self.sink = console, ctx, sink
        self.samples, self.t0 = 0, time.perf_counter()

    def __call__(self, step: int, batch_samples: int, metrics: dict[str, float]) -> None:
        """``step`` is 1-based (steps done); metrics are this rank's, averaged across ranks here."""
        self.samples += batch_samples
        if step % self.every and step != self.total:
            return
        keys = sorted(metrics)
        averaged = self.ctx.mean(torch.tensor([metrics[k] for k in keys], dtype=torch.float64))
        out = dict(zip(keys, averaged.tolist(), strict=True))
        elapsed = time.perf_counter() - self.t0
        out["samples_per_s"] = self.samples * self.ctx.world / max(elapsed, 1e-9)
        self.samples, self.t0 = 0, time.perf_counter()
        if self.ctx.is_main:
            shown = " ".join(f"{k}={v:.4g}" for k, v in out.items())
            self.console.print(f"\\[{self.name}] step {step}/{self.total} {shown}")
            if self.sink is not None:
                self.sink(step, out)


def save_folder_atomically(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a temporary sibling folder, then swap it in: readers never see half a model."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def apply_activation_checkpointing(model: torch.nn.Module, runtime: RuntimeConfig, device: torch.device) -> bool:
    """Recompute layer activations in backward (``gradient_checkpointing``: on, or auto with CUDA)."""
    mode = runtime.gradient_checkpointing
    if not (mode == "on" or (mode == "auto" and device.type == "cuda")):
        return False
    # transformers >= 5.2 renamed it; both names switch the same GradientCheckpointingLayer flag
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    return True


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
