"""The tokenizer's training augmentation: the released code's RandomResizedCrop(scale=(0.9, 1)).

Vectorised over the batch on the images' device (one affine resample, bilinear), and drawn from a generator
seeded by the step, so a resumed run crops exactly as the uninterrupted one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

RATIO = (3 / 4, 4 / 3)  # torchvision's default aspect-ratio range


def crop_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A generator for one micro batch of one rank, independent of everything that ran before it."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 4_099 + micro * 131 + rank) % 2**63)


def crop_boxes(n: int, min_scale: float, generator: torch.Generator) -> Tensor:
    """(n, 4) boxes: width and height as fractions of the image, centre offsets in [-1, 1] units. Each covers
    ``min_scale``..1 of the area with aspect ratio 3/4..4/3 (log-uniform); where torchvision redraws a crop wider
    or taller than the image, it is clamped here."""
    area = torch.empty(n).uniform_(min_scale, 1.0, generator=generator)
    ratio = torch.empty(n).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=generator).exp()
    width, height = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    shift_x, shift_y = (torch.rand(2, n, generator=generator) * 2 - 1) * torch.stack([1 - width, 1 - height])
    return torch.stack([width, height, shift_x, shift_y], dim=1)


def resample(images: Tensor, boxes: Tensor) -> Tensor:
    """Each image's box, resized back to the full size (one bilinear affine resample for the batch)."""
    theta = torch.zeros(len(boxes), 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = boxes.unbind(1)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(images: Tensor, min_scale: float, generator: torch.Generator) -> Tensor:
    return resample(images, crop_boxes(len(images), min_scale, generator))
