"""One model, its optimizer and schedule, on one process or many: the piece every trainer shares.

It owns what is easy to get subtly wrong: DDP wrapping (buffers are not broadcast: the quantizers
all-reduce their own statistics), gradient accumulation without a gradient all-reduce on every micro
step, clipping, bf16 autocast on GPU, and the learning-rate schedule stepping once per optimizer step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dualtoken.training.config import RuntimeConfig
from dualtoken.training.distributed import DistContext


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` means bf16 autocast on CUDA and fp32 on CPU (CPU bf16 matmuls are slower, not faster)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


class Engine:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, ctx: DistContext, grad_accum: int = 1,
                 grad_clip: float = 0.0, precision: str = "fp32") -> None:
        if grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
        self.module, self.optimizer, self.scheduler, self.ctx = model, optimizer, scheduler, ctx
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self.precision = resolve_precision(precision, ctx.device)
        self.model: nn.Module = model
        if ctx.distributed and any(p.requires_grad for p in model.parameters()):
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @contextlib.contextmanager
    def micro_step(self, index: int) -> Iterator[None]:
        """Gradients of all but the last micro step stay local (no all-reduce until the last one)."""
        last = index == self.grad_accum - 1
        if isinstance(self.model, DistributedDataParallel) and not last:
            with self.model.no_sync():
                yield
        else:
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> float:
        """Clip, update, advance the schedule; returns the gradient norm before clipping."""
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))) if params else 0.0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def apply_activation_checkpointing(model: torch.nn.Module, runtime: RuntimeConfig, device: torch.device) -> bool:
    """Recompute layer activations in backward (``gradient_checkpointing``: on, or auto with CUDA)."""
    mode = runtime.gradient_checkpointing
    if not (mode == "on" or (mode == "auto" and device.type == "cuda")):
        return False
    # transformers >= 5.2 renamed it; both names switch the same GradientCheckpointingLayer flag
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    return True


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
