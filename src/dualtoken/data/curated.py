"""Reading the curated corpus: WebDataset shards of image + txt + json per sample (local or S3).

Training streams its split through ``dualtoken.data.loader`` with ``CuratedDecoder`` (images, and one
caption per sample tokenised in the worker); evaluations read the first ``limit`` held-out images in order
(``read_images``); ``iter_samples`` and ``iter_metas`` walk shards front to back (tokenisation, the BPE
trained on the captions). Nothing here holds more of a split than it is asked for.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from dualtoken.data.pieces import RawSample
from dualtoken.data.shards import shard_urls
from dualtoken.data.tarstream import iter_shard_samples
from dualtoken.errors import DualtokenError
from dualtoken.storage import StorageConfig, is_s3, join_uri, open_read

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


class UnreadableSample(DualtokenError, ValueError):
    """A curated sample lacks a part or holds one that does not decode; the message names shard and key."""


def image_bytes(parts: dict[str, bytes], where: str) -> bytes:
    for ext in IMAGE_EXTENSIONS:
        if ext in parts:
            return parts[ext]
    raise UnreadableSample(f"{where}: no image member ({'/'.join(IMAGE_EXTENSIONS)}), found {sorted(parts)}; rerun "
                           "the curate stage")


def decode_image(data: bytes, where: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableSample(f"{where}: the image does not decode ({err})") from None


def require_json(parts: dict[str, bytes], where: str) -> bytes:
    if "json" not in parts:
        raise UnreadableSample(f"{where}: no json member; rerun the stage that wrote the shard")
    return parts["json"]


def sample_meta(parts: dict[str, bytes], where: str) -> dict[str, Any]:
    raw = require_json(parts, where)
    try:
        return json.loads(raw)
    except ValueError as err:
        raise UnreadableSample(f"{where}: the json member does not parse ({err})") from None


@dataclass
class CuratedSample:
    key: str
    image: np.ndarray  # uint8 (H, W, 3)
    parts: dict[str, bytes]  # the other members as stored: txt (first caption), json (captions, qa, ...)

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads(self.parts["json"])


def _members(urls: Iterable[str], storage: StorageConfig | None) -> Iterator[tuple[str, str, dict[str, bytes]]]:
    """(url, key, parts) of every sample, shard by shard; a damaged shard is an error naming it."""
    for url in urls:
        with open_read(url, storage or StorageConfig()) as handle:
            try:
                for key, parts in iter_shard_samples(handle, url):
                    yield url, key, parts
            except ValueError as err:
                raise UnreadableSample(str(err)) from None


def iter_samples(urls: list[str], storage: StorageConfig | None = None) -> Iterator[CuratedSample]:
    """Stream samples shard by shard, front to back."""
    for url, key, parts in _members(urls, storage):
        where = f"{url}: sample {key!r}"
        data = image_bytes(parts, where)
        require_json(parts, where)
        parts = {k: v for k, v in parts.items() if k not in IMAGE_EXTENSIONS}
        yield CuratedSample(key, decode_image(data, where), parts)


def iter_metas(urls: Iterable[str], storage: StorageConfig | None = None, limit: int | None = None
               ) -> Iterator[dict[str, Any]]:
    """The json (captions, QA, attributes) of the first ``limit`` samples (all when None), front to back;
    nothing else is decoded and no shard past the limit is opened."""
    members = _members(urls, storage)
    for url, key, parts in itertools.islice(members, limit):
        yield sample_meta(parts, f"{url}: sample {key!r}")


@dataclass
class CuratedSplit:
    """A bounded set of samples in memory (an evaluation set): images and their metadata."""

    images: torch.Tensor  # uint8 (N, 3, H, W)
    meta: list[dict[str, Any]]
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.meta)


def read_images(root: str | Path, split: str, limit: int, storage: StorageConfig | None = None) -> CuratedSplit:
    """The first ``limit`` samples of ``split`` in corpus order; only the shards they are in are read."""
    images, meta, keys = [], [], []
    for sample in itertools.islice(iter_samples(shard_urls(root, split, storage), storage), limit):
        images.append(sample.image)
        meta.append(sample.meta)
        keys.append(sample.key)
    if not images:
        raise ValueError(f"split {split!r} under {root} is empty")
    return CuratedSplit(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), meta, keys)


def iter_image_batches(root: str | Path, split: str, batch_size: int, limit: int | None = None,
                       storage: StorageConfig | None = None) -> Iterator[torch.Tensor]:
    """The split's images (its first ``limit``, or all) as uint8 (n, 3, H, W) batches, streamed: memory holds
    one batch whatever the split's size."""
    samples = itertools.islice(iter_samples(shard_urls(root, split, storage), storage), limit)
    while batch := [s.image for s in itertools.islice(samples, batch_size)]:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()


class CuratedDecoder:
    """Curated samples -> columns for training: ``image`` uint8 (n, H, W, 3) and ``key``; with ``caption_ids``
    (texts -> (n, L) token ids) also ``caption_ids`` of one caption per sample, chosen by its draw; with
    ``targets`` (metadata -> a tensor) also ``targets``.

    Images stay channels-last: each is decoded straight into its row of one buffer (in shared memory when a
    DataLoader worker decodes, so handing it to the trainer copies nothing); ``model_images`` makes the model's
    channels-first view on the training device."""

    pooled_column = "image"  # decoded into the loader's shared pool when it gives a buffer

    def __init__(self, caption_ids: Callable[[list[str]], torch.Tensor] | None = None,
                 targets: Callable[[list[dict[str, Any]]], torch.Tensor] | None = None) -> None:
        self.caption_ids = caption_ids
        self.targets = targets

    def __call__(self, samples: list[RawSample], out: torch.Tensor | None = None) -> dict[str, Any]:
        """``out``: a (rows, H, W, 3) uint8 buffer to decode into (used when the images fit it)."""
        images: torch.Tensor | None = None
        for i, s in enumerate(samples):
            image = decode_image(image_bytes(s.parts, s.where), s.where)
            if images is None:
                fits = out is not None and out.shape[1:] == image.shape and len(out) >= len(samples)
                images = out[: len(samples)] if fits else torch.empty((len(samples), *image.shape), dtype=torch.uint8)
                if not fits and get_worker_info() is not None:
                    images.share_memory_()
                pixels = images.numpy()
            elif image.shape != images.shape[1:]:
                raise UnreadableSample(f"{s.where}: image is {image.shape[1]}x{image.shape[0]}, the others "
                                       f"{images.shape[2]}x{images.shape[1]}: curate to one resolution")
            pixels[i] = image
        columns: dict[str, Any] = {"image": images, "key": [s.key for s in samples]}
        if self.caption_ids is None and self.targets is None:
            return columns
        metas = [sample_meta(s.parts, s.where) for s in samples]
        if self.caption_ids is not None:
            chosen = []
            for sample, meta in zip(samples, metas, strict=True):
                captions = meta.get("captions") or []
                if not captions:
                    raise UnreadableSample(f"{sample.where}: no captions in its json")
                chosen.append(captions[sample.choice(0, len(captions))])
            columns["caption_ids"] = self.caption_ids(chosen)
        if self.targets is not None:
            columns["targets"] = self.targets(metas)
        return columns


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1]: SigLIP's normalisation (mean 0.5, std 0.5 per channel)."""
    return images.float().div_(127.5).sub_(1.0)


def model_images(batch_images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader batch (uint8 (N, H, W, 3)) -> the model's input on ``device``: uint8 over the bus (a quarter of
    float), made channels-first there, then normalised."""
    return to_model_input(batch_images.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous())


def from_model_output(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8, clamped."""
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def corpus_digest(root: str | Path, storage: StorageConfig | None = None) -> str:
    """Identity of a curated corpus: the shard index and the manifest (which holds every pixel hash)."""
    digest = hashlib.sha256()
    for name in ("shards.json", "manifest.parquet"):
        uri = join_uri(root, name)
        if not is_s3(uri) and not Path(uri).is_file():
            raise FileNotFoundError(f"{uri} not found: run the curate stage first (dvc repro curate)")
        with open_read(uri, storage or StorageConfig()) as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
