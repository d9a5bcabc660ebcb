"""Image feature extractors for Fréchet distances, named for what they are.

With Inception-v3 weights on local disk (pytorch-fid's file), the distance is the usual FID ("FID-inception").
Without them, features are the teacher's pooled image embeddings and the number is called "FD-teacher": it is
*not* comparable with published FIDs, only with other FD-teacher numbers from the same teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dualtoken.data.curated import to_model_input
from dualtoken.models.inception import INPUT_SIZE


@dataclass(frozen=True)
class FeatureExtractor:
    name: str  # "FID-inception" or "FD-teacher": goes into every metric key and table that uses it
    protocol: str  # how images are prepared, recorded beside the numbers
    embed: Callable[[Tensor], Tensor]  # uint8 (N, 3, H, W) on any device -> (N, D) float

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int) -> Tensor:
        return torch.cat([self.embed(images[i : i + batch_size]).float().cpu() for i in range(0, len(images),
                                                                                                batch_size)])


def teacher_extractor(teacher: torch.nn.Module, device: torch.device) -> FeatureExtractor:
    """Pooled SigLIP image embeddings (before normalisation) of images at the teacher's input size."""
    def embed(images: Tensor) -> Tensor:
        return teacher.get_image_features(pixel_values=to_model_input(images).to(device)).pooler_output

    return FeatureExtractor("FD-teacher", "teacher pooled image embedding of uint8 images at the tokenizer's input "
                            "resolution, SigLIP normalisation", embed)


def clean_resize(images: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """clean-fid's resize: antialiased bicubic (PIL's kernel) of float images, no rounding back to uint8."""
    return F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def inception_extractor(weights: str | Path, device: torch.device, resize: Literal["clean", "bilinear"] = "clean"
                        ) -> FeatureExtractor:
    from dualtoken.models.inception import FIDInceptionV3

    model = FIDInceptionV3.from_file(weights).to(device)

    def embed(images: Tensor) -> Tensor:
        x = images.to(device).float()
        if resize == "clean":  # at 299 px already, the model's own bilinear resize is the identity
            x = clean_resize(x)
        return model(x / 255.0)

    how = ("antialiased bicubic (clean-fid)" if resize == "clean" else "bilinear (pytorch-fid)")
    return FeatureExtractor("FID-inception", f"Inception-v3 pool3 (pytorch-fid weights), images resized {how} to "
                            "299 px from the tokenizer's input resolution", embed)


def feature_extractor(inception_weights: str | None, teacher: torch.nn.Module, device: torch.device,
                      resize: Literal["clean", "bilinear"] = "clean") -> FeatureExtractor:
    """FID-inception with the weights, else FD-teacher (whose input is the teacher's own, so ``resize`` is moot)."""
    if inception_weights:
        return inception_extractor(inception_weights, device, resize)
    return teacher_extractor(teacher, device)
