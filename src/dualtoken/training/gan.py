"""The GAN's timetable in optimizer steps: when it starts, how the discriminator's loss is weighted, when the
discriminator is re-created, and the discriminator's learning rate over each of its lives.

The released code counts epochs; an epoch here is the training split's samples / batch. As released, the GAN
starts half an epoch in, the discriminator's loss counts 1x in the epoch the GAN starts and ``discriminator_loss``
(0.75) x after it, and a fresh discriminator replaces the old one every ``discriminator_restart_epochs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dualtoken.data.shards import Shard
from dualtoken.training.config import OptimConfig
from dualtoken.training.schedule import warmup_cosine
from dualtoken.training.tokenizer_config import TokenizerConfig


@dataclass(frozen=True)
class GanSchedule:
    start: int  # the GAN's first step
    epoch_steps: int  # optimizer steps per epoch of the training split
    total: int  # the run's steps
    d_loss_weight: float  # x the discriminator's loss after the epoch the GAN starts in
    restart_epochs: int | None  # a fresh discriminator every this many epochs; None: never

    def d_weight(self, step: int) -> float:
        return 1.0 if step // self.epoch_steps == self.start // self.epoch_steps else self.d_loss_weight

    def restarts(self) -> list[int]:
        """The steps at which a fresh discriminator takes over (before that step trains)."""
        if self.restart_epochs is None:
            return []
        first_epoch = self.start // self.epoch_steps
        every = self.restart_epochs * self.epoch_steps
        return list(range((first_epoch + self.restart_epochs) * self.epoch_steps, self.total, every))

    def d_lr_multiplier(self, d_steps: int, optim: OptimConfig) -> float:
        """The discriminator's lr multiplier after ``d_steps`` of its updates (one per GAN step): warm-up and
        cosine over the life of the discriminator that step belongs to, so a resumed run needs no scheduler reset."""
        step = self.start + d_steps
        born = max([self.start, *(r for r in self.restarts() if r <= step)])
        dies = min([self.total, *(r for r in self.restarts() if r > step)])
        return warmup_cosine(step - born, optim.warmup_steps, max(1, dies - born), optim.min_lr_ratio)


def gan_schedule(cfg: TokenizerConfig, train: list[Shard]) -> GanSchedule:
    """The schedule of ``cfg.losses`` over ``train``; ``gan_start_step: null`` is half an epoch in."""
    epoch_steps = max(1, sum(s.samples for s in train) // cfg.batch_size)
    start = cfg.losses.gan_start_step if cfg.losses.gan_start_step is not None else epoch_steps // 2
    return GanSchedule(start, epoch_steps, cfg.steps, cfg.losses.discriminator_loss,
                       cfg.losses.discriminator_restart_epochs)


def renew_discriminator(disc: torch.nn.Module, fresh: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Replace ``disc``'s weights by ``fresh``'s in place (so the DDP wrapper and checkpoint keep their module)
    and forget its optimizer's moments."""
    disc.load_state_dict(fresh.state_dict())
    optimizer.state.clear()
