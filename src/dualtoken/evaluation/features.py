"""Image feature extractors for Fréchet distances, named for what they are.

With Inception-v3 weights on local disk (pytorch-fid's file), the distance is the usual FID ("FID-inception").
Without them, features are the teacher's pooled image embeddings and the number is called "FD-teacher": it is
*not* comparable with published FIDs, only with other FD-teacher numbers from the same teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dualtoken.data.curated import to_model_input


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


def inception_extractor(weights: str | Path, device: torch.device) -> FeatureExtractor:
    from dualtoken.models.inception import FIDInceptionV3

    model = FIDInceptionV3.from_file(weights).to(device)

    def embed(images: Tensor) -> Tensor:
        return model(images.to(device).float() / 255.0)

    return FeatureExtractor("FID-inception", "Inception-v3 pool3 (pytorch-fid weights), images bilinearly resized "
                            "to 299 px from the tokenizer's input resolution", embed)


def feature_extractor(inception_weights: str | None, teacher: torch.nn.Module, device: torch.device
                      ) -> FeatureExtractor:
    return inception_extractor(inception_weights, device) if inception_weights else teacher_extractor(teacher, device)
