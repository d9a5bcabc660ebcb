"""The optimizer and its learning-rate schedule: AdamW from the config, linear warm-up, then cosine decay to
``min_ratio`` x the peak."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from dualtoken.training.config import OptimConfig


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                            min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_ratio))


def build_optimizer(groups: Iterable[dict[str, Any]], optim: OptimConfig, total_steps: int,
                    multiplier: Callable[[int], float] | None = None
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over parameter groups (each may carry an ``lr_scale``), warm-up + cosine schedule over
    ``total_steps`` (or ``multiplier(step)`` of the peak). Unless ``decay_biases_and_norms``, each group's 1-D
    parameters form a group of their own without weight decay."""
    param_groups = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        lr = optim.lr * group.get("lr_scale", 1.0)
        if optim.decay_biases_and_norms:
            splits = [(params, optim.weight_decay)]
        else:
            splits = [([p for p in params if p.ndim >= 2], optim.weight_decay),
                      ([p for p in params if p.ndim < 2], 0.0)]
        param_groups += [{"params": ps, "lr": lr, "weight_decay": decay} for ps, decay in splits if ps]
    if not param_groups:
        raise ValueError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(param_groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    if multiplier is not None:
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return optimizer, warmup_cosine_scheduler(optimizer, optim.warmup_steps, total_steps, optim.min_lr_ratio)
