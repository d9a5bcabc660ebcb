"""One model, its optimizer and schedule, on one process or many: the piece every trainer shares.

It owns what is easy to get subtly wrong: DDP wrapping (buffers are not broadcast: the quantizers
all-reduce their own statistics), gradient accumulation without a gradient all-reduce on every micro
step, clipping, bf16 autocast on GPU, and the learning-rate schedule stepping once per optimizer step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

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
