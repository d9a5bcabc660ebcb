"""Decode written pixel codes back to images and compare them with the curated originals.

The check that matters: PSNR of (curated image, image decoded from the codes on disk) must equal the PSNR
of the tokenizer's own in-memory round trip on the same images, within a tolerance. Any drift means the
written codes are not what the tokenizer produced (wrong dtype, order, layout, or a broken write path).
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import numpy as np
import torch

from dualtoken.data.curated import from_model_output, iter_samples, to_model_input
from dualtoken.data.shards import shard_urls
from dualtoken.data.tokens import iter_token_samples, read_layout
from dualtoken.errors import DualtokenError
from dualtoken.metrics.reconstruction import psnr
from dualtoken.storage import StorageConfig
from dualtoken.tokenization.job import Settings, autocast


class VerificationFailed(DualtokenError, RuntimeError):
    """The written codes do not reproduce the tokenizer's reconstructions."""


def decode_codes(model: Any, pixel_codes: torch.Tensor, settings: Settings) -> torch.Tensor:
    """Pixel codes (B, h, w, depth) -> uint8 images, in the precision the codes were made in."""
    with torch.inference_mode(), autocast(settings):
        images = model.decode(pixel_codes.to(settings.device, torch.long))
    return from_model_output(images.float().cpu())


def reconstruct(model: Any, images: torch.Tensor, settings: Settings) -> torch.Tensor:
    with torch.inference_mode(), autocast(settings):
        out = model.reconstruct(to_model_input(images).to(settings.device))
    return from_model_output(out.float().cpu())


def verify_reconstruction(model: Any, tokens_root: str, curated_root: str, split: str, limit: int,
                          settings: Settings, storage: StorageConfig) -> dict[str, Any]:
    """PSNR of the first ``limit`` samples of ``split``: from the written codes and from the model directly."""
    layout = read_layout(tokens_root)
    pairs = zip(iter_token_samples(shard_urls(tokens_root, split), layout),
                iter_samples(shard_urls(curated_root, split, storage), storage), strict=False)
    written, direct = [], []
    batch: list[tuple[Any, Any]] = []
    for pair in islice(pairs, limit):
        token, curated = pair
        if token.key != curated.key:
            raise VerificationFailed(f"{split}: token sample {token.key!r} stands where the curated corpus has "
                                     f"{curated.key!r}: the token shards are out of order or incomplete")
        batch.append(pair)
        if len(batch) == settings.batch_size:
            _score(model, batch, settings, written, direct)
            batch = []
    if batch:
        _score(model, batch, settings, written, direct)
    if not written:
        return {"split": split, "images": 0}
    psnr_written, psnr_direct = float(torch.cat(written).mean()), float(torch.cat(direct).mean())
    return {"split": split, "images": sum(len(w) for w in written), "psnr_written": psnr_written,
            "psnr_model": psnr_direct, "delta_db": abs(psnr_written - psnr_direct)}


def _score(model: Any, batch: list[tuple[Any, Any]], settings: Settings, written: list[torch.Tensor],
           direct: list[torch.Tensor]) -> None:
    originals = torch.from_numpy(np.stack([c.image for _, c in batch])).permute(0, 3, 1, 2)
    codes = torch.from_numpy(np.stack([t.pixel for t, _ in batch]).astype(np.int64))
    written.append(psnr(originals, decode_codes(model, codes, settings)))
    direct.append(psnr(originals, reconstruct(model, originals, settings)))
