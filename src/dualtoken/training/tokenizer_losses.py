"""DualToken training objective (docs/method.md) and the paper's freezing schedules.

Everything semantic compares against a frozen teacher tower: distillation targets at the semantic tap and on
the pooled output. The perceptual loss is LPIPS-VGG from a local file (as released) or, needing no weights,
feature distances in the teacher's early layers. Which terms are active follows from what the stage trains and
the stage's weights (``LossConfig.for_stage``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import SiglipVisionModel

from dualtoken.models.configuration import DualTokenConfig
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.lpips import LPIPS
from dualtoken.schema import ConfigError
from dualtoken.training.tokenizer_config import LossConfig


def cos_distance(x: Tensor, target: Tensor) -> Tensor:
    """1 - cosine similarity over the feature dimension, averaged (the released code's -cos, offset by 1)."""
    return (1 - F.cosine_similarity(x.float(), target.float(), dim=-1)).mean()


def mse_cos(x: Tensor, target: Tensor) -> Tensor:
    """MSE + (1 - cosine similarity) over the feature dimension, the released distillation loss."""
    return F.mse_loss(x.float(), target.float()) + cos_distance(x, target)


def tower_states(tower: SiglipVisionModel, pixels: Tensor, layers: tuple[int, ...], pooled: bool = False
                 ) -> tuple[dict[int, Tensor], Tensor | None]:
    """Hidden states after the given encoder layers (1-based); runs only as deep as needed."""
    hidden = tower.embeddings(pixels)
    deepest = len(tower.encoder.layers) if pooled else max(layers)
    states: dict[int, Tensor] = {}
    for index, layer in enumerate(tower.encoder.layers[:deepest], start=1):
        hidden = layer(hidden, attention_mask=None)
        if index in layers:
            states[index] = hidden
    pooled_out = tower.head(tower.post_layernorm(hidden)) if pooled else None
    return states, pooled_out


def teacher_feature_distance(tower: SiglipVisionModel, images: Tensor, reconstruction: Tensor, layers: tuple[int, ...]
                             ) -> Tensor:
    """LPIPS-like: squared distance of unit-normalised teacher features, averaged over layers and tokens."""
    with torch.no_grad():
        target, _ = tower_states(tower, images, layers)
    ours, _ = tower_states(tower, reconstruction, layers)
    return torch.stack([(F.normalize(ours[k].float(), dim=-1) - F.normalize(target[k].float(), dim=-1)).pow(2)
                        .sum(-1).mean() for k in layers]).mean()


Perceptual = Callable[[Tensor, Tensor], Tensor]


def perceptual_loss(cfg: LossConfig, teacher: SiglipVisionModel, layer_pixel: int, device: torch.device
                    ) -> Perceptual | None:
    """The configured perceptual distance: teacher features up to the pixel tap, LPIPS-VGG, or none."""
    if cfg.perceptual_kind == "none" or cfg.perceptual == 0:
        return None
    if cfg.perceptual_kind == "lpips":
        try:
            lpips = LPIPS.from_file(cfg.lpips_weights or "").to(device)
        except FileNotFoundError as err:
            raise ConfigError(f"tokenizer.losses.lpips_weights: {err}") from None
        return lambda images, reconstruction: lpips(images, reconstruction)
    layers = tuple(range(1, layer_pixel + 1))
    return lambda images, reconstruction: teacher_feature_distance(teacher, images, reconstruction, layers)


@dataclass(frozen=True)
class StagePlan:
    """What a paper stage trains. ``frozen_layers``: the embeddings and encoder layers 1..N are frozen
    (0 = none); ``pixel``: the pixel branch and decoder train (and the pixel losses apply)."""

    stage: int
    frozen_layers: int
    pixel: bool


def stage_plan(stage: int, config: DualTokenConfig) -> StagePlan:
    """As the released code: 0 freezes the tower through the semantic tap, so the semantic quantizer and the
    layers above it train while the pixel branch and decoder learn to reconstruct from the frozen features;
    1 trains everything; 2 freezes the pixel branch, the decoder and the layers feeding the pixel tap (so the
    pixel codes the decoder knows stay valid)."""
    if config.single_codebook and stage != 1:
        raise ValueError(f"stage {stage} freezes one branch, but a single-codebook model has only one: use stage 1")
    if stage == 0:
        return StagePlan(0, frozen_layers=config.layer_semantic, pixel=True)
    if stage == 1:
        return StagePlan(1, frozen_layers=0, pixel=True)
    if stage == 2:
        return StagePlan(2, frozen_layers=config.layer_pixel, pixel=False)
    raise ValueError(f"stage must be 0, 1 or 2, got {stage}")


def apply_stage(model: DualTokenModel, plan: StagePlan) -> None:
    """Set ``requires_grad`` per the plan; a frozen pixel quantizer goes to eval mode (no EMA drift)."""
    model.requires_grad_(True)
    if plan.frozen_layers:
        model.vision.embeddings.requires_grad_(False)
        model.layers[: plan.frozen_layers].requires_grad_(False)
    if not plan.pixel:
        for module in (model.pixel_down, model.pixel_quantizer, model.pixel_up, model.decoder):
            module.requires_grad_(False)
        model.pixel_quantizer.eval()


def new_parameter_groups(model: DualTokenModel) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(tower parameters, which the teacher provides; parameters the teacher lacks)."""
    tower = {id(p) for p in model.vision.parameters()}
    params = list(model.parameters())
    return [p for p in params if id(p) in tower], [p for p in params if id(p) not in tower]
