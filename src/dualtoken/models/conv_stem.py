"""An optional convolutional stem for small demo towers, in place of SigLIP's one patchify convolution.

A tiny ViT trained for a minute cannot learn shapes through a single linear patch projection; a few
3x3 stride-2 convolutions in front of the transformer ("early convolutions", Xiao et al. 2021) can
(measured in ``benchmarks/demo_sweep.py``). The stem is declared in the vision config as
``conv_stem: [c1, c2, ...]`` (one stride-2 conv per entry, so the product of strides is the patch
size), which ``save_pretrained`` records; the paper configs leave it unset and keep loading SigLIP
checkpoints unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import SiglipVisionModel


class ConvStem(nn.Module):
    """3x3 stride-2 conv + BatchNorm + ReLU per entry of ``channels``, then a 1x1 conv to the tower width."""

    def __init__(self, channels: list[int], width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for c in channels:
            layers += [nn.Conv2d(previous, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            previous = c
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(previous, width, 1)

    @property
    def weight(self) -> torch.Tensor:
        """SigLIP's embeddings read ``patch_embedding.weight.dtype`` to cast the pixels."""
        return self.proj.weight

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(pixels))


def stem_channels(vision_config: Any) -> list[int] | None:
    """The stem a vision config declares (None: SigLIP's patchify convolution)."""
    channels = getattr(vision_config, "conv_stem", None)
    if channels is None:
        return None
    if not channels or 2 ** len(channels) != vision_config.patch_size or any(c <= 0 for c in channels):
        raise ValueError(f"conv_stem {channels}: needs one positive channel count per stride-2 conv, "
                         f"2^{len(channels)} = patch_size ({vision_config.patch_size})")
    return list(channels)


def with_conv_stem(tower: SiglipVisionModel) -> SiglipVisionModel:
    """The tower with its patchify convolution replaced by the stem its config declares (as is when none)."""
    channels = stem_channels(tower.config)
    if channels is not None:
        tower.embeddings.patch_embedding = ConvStem(channels, tower.config.hidden_size)
    return tower
