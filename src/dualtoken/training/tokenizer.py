"""Training the DualToken tokenizer against a frozen SigLIP teacher (losses in ``tokenizer_losses``).

One optimizer step = ``grad_accum`` micro batches per process, each from its own stream of the training
shards (``dualtoken.training.rank_data.rank_loader``). With the GAN active (``training.gan`` times it: by
default from half an epoch in), each micro batch also trains the patch discriminator on (image, reconstruction).
A checkpoint holds both networks, both optimizers and schedules, the loader's position and every RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from transformers import SiglipVisionModel

from dualtoken.data.curated import CuratedDecoder, from_model_output, model_images, to_model_input
from dualtoken.data.shards import Shard
from dualtoken.metrics.reconstruction import image_grid
from dualtoken.models.configuration import named_config
from dualtoken.models.discriminator import adaptive_gan_weight, build_discriminator, hinge_d_loss, hinge_g_loss
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.schema import ConfigError
from dualtoken.storage import StorageConfig
from dualtoken.training.augment import crop_generator, random_resized_crop
from dualtoken.training.checkpoint import open_checkpoints
from dualtoken.training.distributed import DistContext
from dualtoken.training.engine import Engine, StepLog, apply_activation_checkpointing
from dualtoken.training.gan import GanSchedule, gan_schedule, renew_discriminator
from dualtoken.training.preemption import leave_if_asked, stop_on_signal
from dualtoken.training.rank_data import micro_batch, rank_loader
from dualtoken.training.schedule import build_optimizer
from dualtoken.training.tokenizer_config import TokenizerConfig
from dualtoken.training.tokenizer_losses import (
    Perceptual,
    StagePlan,
    apply_stage,
    cos_distance,
    mse_cos,
    new_parameter_groups,
    perceptual_loss,
    stage_plan,
    tower_states,
)


def build_tokenizer_model(t: TokenizerConfig, teacher_tower: Any) -> DualTokenModel:
    """A saved model to continue from (``init_from``), or the named architecture with its overrides around
    the teacher's tower; a layout that does not fit is an error naming the key."""
    if t.init_from:
        if not (Path(t.init_from) / "config.json").is_file():
            raise ConfigError(f"tokenizer.init_from: {t.init_from} is not a saved DualToken model (no config.json)")
        return DualTokenModel.from_pretrained(t.init_from, local_files_only=True)
    try:
        base = named_config(t.architecture)
        model = DualTokenModel.from_siglip(teacher_tower, base, **t.overrides)
    except (ValueError, TypeError) as err:
        key = "tokenizer.architecture" if "unknown tokenizer config" in str(err) else "tokenizer.overrides"
        raise ConfigError(f"{key}: {err}") from None
    if model.config.single_codebook and t.stage != 1:
        raise ConfigError(f"tokenizer.stage: stage {t.stage} freezes one of two branches; a single_codebook model "
                          "has one: use stage 1")
    return model



@dataclass
class Objective:
    """The loss of one micro batch, given the frozen teacher tower and what the stage trains."""

    cfg: TokenizerConfig
    plan: StagePlan
    teacher: SiglipVisionModel
    discriminator: torch.nn.Module
    perceptual: Perceptual | None
    gan: GanSchedule

    def gan_active(self, step: int) -> bool:
        w = self.cfg.losses
        return self.plan.pixel and w.for_stage(self.plan.stage).gan and w.gan > 0 and step >= self.gan.start

    def __call__(self, model: DualTokenModel, forward: Callable[[torch.Tensor], Any], images: torch.Tensor,
                 step: int) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        w, layer = self.cfg.losses, model.config.layer_semantic
        stage = w.for_stage(self.plan.stage)
        with torch.no_grad():
            states, pooled = tower_states(self.teacher, images, (layer,), pooled=True)
        out = forward(images)
        tap_distance = mse_cos if stage.semantic_tap_form == "mse_cos" else cos_distance
        terms = {"semantic_tap": tap_distance(out.semantic_features, states[layer]),
                 "semantic_pooled": mse_cos(out.pooled, pooled),
                 "commitment": out.semantic.commitment_loss + out.semantic.codebook_loss}
        weights = {"semantic_tap": stage.semantic_tap, "semantic_pooled": stage.semantic_pooled,
                   "commitment": w.commitment}
        if self.plan.pixel:
            if out.pixel is not out.semantic:  # one codebook: its commitment is counted once
                terms["commitment"] = terms["commitment"] + out.pixel.commitment_loss + out.pixel.codebook_loss
            terms["reconstruction"] = F.mse_loss(out.reconstruction.float(), images.float())
            weights["reconstruction"] = w.reconstruction
            if self.perceptual is not None and w.perceptual > 0:
                terms["perceptual"] = self.perceptual(images, out.reconstruction)
                weights["perceptual"] = w.perceptual
        loss = sum(weights[k] * v for k, v in terms.items())
        if self.gan_active(step):
            # as the released code: the unweighted MSE (its 5x applies to the total only) + the weighted perceptual
            nll = terms["reconstruction"] + weights.get("perceptual", 0.0) * terms.get("perceptual", 0.0)
            self.discriminator.requires_grad_(False)  # the generator's loss must not train the discriminator
            g_loss = hinge_g_loss(self.discriminator(out.reconstruction))
            self.discriminator.requires_grad_(True)
            adaptive = adaptive_gan_weight(nll, g_loss, model.decoder_last_layer, w.gan_weight_min, w.gan_weight_max)
            loss = loss + w.gan * adaptive * g_loss
            terms["gan_generator"], terms["gan_adaptive_weight"] = g_loss, adaptive
        report = {k: v.item() for k, v in terms.items()}
        for name, q in (("pixel", out.pixel), ("semantic", out.semantic)):
            report.update({f"{name}_usage_d{d}": float(u) for d, u in enumerate(q.usage)})
        return loss, report, out.reconstruction.detach()


def _discriminator(cfg: TokenizerConfig) -> torch.nn.Module:
    w = cfg.losses
    return build_discriminator(w.discriminator, w.discriminator_channels, w.discriminator_layers)


@torch.no_grad()
def reconstruction_grid(model: DualTokenModel, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Originals above their reconstructions (uint8 HWC), for the MLflow image log."""
    modes = {m: m.training for m in model.modules()}  # a frozen quantizer must stay in eval mode afterwards
    model.eval()
    recon = from_model_output(model.reconstruct(to_model_input(images).to(device)).cpu())
    for module, training in modes.items():
        module.training = training
    return image_grid([images, recon])


def train_tokenizer(cfg: TokenizerConfig, model: DualTokenModel, teacher: SiglipVisionModel, train: list[Shard],
                    ctx: DistContext, seed: int, identity: dict[str, Any], console: Console,
                    sink: Callable[[int, dict[str, float]], None] | None = None,
                    preview: torch.Tensor | None = None,
                    on_images: Callable[[int, torch.Tensor], None] | None = None,
                    storage: StorageConfig | None = None) -> list[float]:
    """Train ``model`` in place on the ``train`` shards (resuming from ``cfg.work_dir`` if a matching checkpoint
    exists)."""
    rt = cfg.runtime
    micro = micro_batch(cfg.batch_size, ctx.world, rt.grad_accum, "tokenizer")
    plan = stage_plan(cfg.stage, model.config)
    model.to(ctx.device).train()
    apply_stage(model, plan)
    apply_activation_checkpointing(model, rt, ctx.device)
    teacher.to(ctx.device).eval().requires_grad_(False)
    perceptual = perceptual_loss(cfg.losses, teacher, model.config.layer_pixel, ctx.device) if plan.pixel else None
    disc = _discriminator(cfg).to(ctx.device)
    gan = gan_schedule(cfg, train)
    objective = Objective(cfg, plan, teacher, disc, perceptual, gan)
    gan_runs = objective.gan_active(cfg.steps - 1)
    restarts = set(gan.restarts()) if gan_runs else set()
    if gan_runs:
        renewed = f", a fresh discriminator at steps {sorted(restarts)}" if restarts else ""
        console.print(f"\\[tokenizer] GAN from step {gan.start}{renewed}")

    tower, fresh = new_parameter_groups(model)
    optimizer, scheduler = build_optimizer([{"params": tower}, {"params": fresh, "lr_scale": cfg.new_params_lr_scale}],
                                           cfg.optim, cfg.steps)
    engine = Engine(model, optimizer, scheduler, ctx, rt.grad_accum, cfg.optim.grad_clip, rt.precision)
    d_optimizer, d_scheduler = build_optimizer(
        [{"params": disc.parameters()}], cfg.discriminator_optim, cfg.steps,
        lambda d_steps: gan.d_lr_multiplier(d_steps, cfg.discriminator_optim))
    d_engine = Engine(disc, d_optimizer, d_scheduler, ctx, rt.grad_accum, cfg.discriminator_optim.grad_clip,
                      rt.precision)
    loader, streams = rank_loader(train, CuratedDecoder(), seed, cfg.shuffle_buffer, ctx, rt, storage)
    ckpt = open_checkpoints(cfg.work_dir, console.print, ctx, rt.keep_checkpoints, {**identity, "world": ctx.world})
    models, optimizers = {"model": model, "discriminator": disc}, {"optimizer": optimizer, "d_optimizer": d_optimizer}
    schedulers = {"scheduler": scheduler, "d_scheduler": d_scheduler}
    start = 0
    if (latest := ckpt.latest()) is not None:
        start, state = ckpt.load(latest, models, optimizers, schedulers)
        loader.load_state_dict(state["loader"])
        console.print(f"\\[tokenizer] resumed from {latest} (step {start}/{cfg.steps})")

    def forward(images: torch.Tensor) -> Any:
        return engine.model(images)

    log = StepLog("tokenizer", cfg.steps, rt.log_every, console, ctx, sink)
    losses = []

    def save(done: int) -> None:
        ckpt.save(done, models, optimizers, schedulers, {"loader": loader.state_dict()})

    with loader, stop_on_signal() as stop:
        for step in range(start, cfg.steps):
            if step in restarts:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed + step)  # the same fresh weights on every rank and after a resume
                    renew_discriminator(disc, _discriminator(cfg), d_optimizer)
            losses.append(_step(step, loader, streams, micro, objective, model, forward, engine, d_engine, ctx, cfg,
                                log, seed))
            if on_images is not None and preview is not None and ctx.is_main and (step + 1) % cfg.image_log_every == 0:
                on_images(step + 1, reconstruction_grid(model, preview, ctx.device))
            leave_if_asked(stop, ctx, step + 1, cfg.steps, save, "tokenizer")
            if (step + 1) % rt.checkpoint_every == 0 and step + 1 < cfg.steps:
                save(step + 1)
    return losses


def _step(step: int, loader: Any, streams: list[str], micro: int, objective: Objective, model: DualTokenModel,
          forward: Callable[[torch.Tensor], Any], engine: Engine, d_engine: Engine, ctx: DistContext,
          cfg: TokenizerConfig, log: StepLog, seed: int) -> float:
    """One optimizer step of both networks; returns its loss (this rank's)."""
    rt = cfg.runtime
    gan = objective.gan_active(step)
    report: dict[str, float] = {}
    total = 0.0
    for m in range(rt.grad_accum):
        images = model_images(loader.take(streams[m], micro)["image"], ctx.device)
        if cfg.random_crop_scale < 1:
            images = random_resized_crop(images, cfg.random_crop_scale, crop_generator(seed, step, m, ctx.rank))
        with engine.micro_step(m), engine.autocast():
            loss, terms, recon = objective(model, forward, images, step)
            engine.backward(loss)
        if gan:
            with d_engine.micro_step(m), d_engine.autocast():
                d_loss = hinge_d_loss(d_engine.model(images), d_engine.model(recon),
                                      leaky=cfg.losses.discriminator_hinge == "leaky")
                d_engine.backward(objective.gan.d_weight(step) * d_loss)
            terms["gan_discriminator"] = d_loss.item()
        total += loss.item() / rt.grad_accum
        for k, v in terms.items():
            report[k] = report.get(k, 0.0) + v / rt.grad_accum
    report["grad_norm"] = engine.step()
    if gan:
        d_engine.step()
    log(step + 1, cfg.batch_size // ctx.world, {"loss": total, "lr": engine.lr, **report})
    return total
