"""Reconstruction Fréchet distance by the released evaluation's protocol (clean-fid): every image of the split
and its reconstruction, both saved as JPEG and read back, features of both sets, one distance.

Streamed: batches are reconstructed, round-tripped and embedded as they are read, and only the running feature
moments are kept, so the whole ImageNet-val split costs no more memory than one batch.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dualtoken.data.curated import from_model_output, to_model_input
from dualtoken.evaluation.config import FidConfig
from dualtoken.evaluation.distance import RunningMoments, frechet_from_moments
from dualtoken.evaluation.features import FeatureExtractor
from dualtoken.models.dualtoken import DualTokenModel


def jpeg_round_trip(images: Tensor, quality: int) -> Tensor:
    """uint8 (N, 3, H, W) -> the same images after saving as JPEG at ``quality`` (PIL, 4:2:0) and decoding."""
    out = []
    for image in images.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def protocol(fid: FidConfig, extractor: FeatureExtractor) -> str:
    jpeg = f"both sides JPEG-saved at quality {fid.jpeg_quality} and read back" if fid.jpeg_quality else "no JPEG"
    scope = f"the split's first {fid.images} images" if fid.images else "the whole split"
    return f"{scope}, {jpeg}; {extractor.protocol}"


@torch.no_grad()
def reconstruction_fd(model: DualTokenModel, batches: Iterable[Tensor], extractor: FeatureExtractor, fid: FidConfig,
                      device: torch.device) -> dict[str, Any]:
    """``{<extractor name>: FD, fd_name, fd_features, fd_images, fd_protocol}`` of originals vs reconstructions
    from the pixel codes, over the uint8 ``batches`` (the split, as ``iter_image_batches`` streams it)."""
    real, fake = RunningMoments(), RunningMoments()
    for images in batches:
        recon = from_model_output(model.reconstruct(to_model_input(images).to(device)).cpu())
        if fid.jpeg_quality:
            images, recon = jpeg_round_trip(images, fid.jpeg_quality), jpeg_round_trip(recon, fid.jpeg_quality)
        real.add(extractor.embed(images).float())
        fake.add(extractor.embed(recon).float())
    value = frechet_from_moments(*real.moments(), *fake.moments())
    return {extractor.name: value, "fd_name": extractor.name, "fd_features": extractor.protocol,
            "fd_images": real.count, "fd_protocol": protocol(fid, extractor)}
