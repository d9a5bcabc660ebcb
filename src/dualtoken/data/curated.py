"""Reading the curated corpus back for training: WebDataset shards -> tensors, with resumable order.

Two ways in: ``iter_samples`` streams shards (local or S3) one sample at a time (any corpus size), and
``load_split`` holds a split in memory (the demo's few thousand 64 px images are ~50 MB). ``EpochSampler``
gives every rank its slice of a seeded per-epoch permutation and can be checkpointed mid-epoch, so a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dualtoken.config import StorageConfig
from dualtoken.data.tarstream import iter_shard_samples
from dualtoken.storage import is_s3, join_uri, open_read, read_bytes

SPLITS = ("train", "val", "test")


def read_shard_index(root: str | Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    """``shards.json`` of a shard folder (local or ``s3://``): split -> shard names, counts, and format facts."""
    uri = join_uri(root, "shards.json")
    if not is_s3(uri) and not Path(uri).is_file():
        raise FileNotFoundError(f"{uri} not found: run the stage that writes {root} first (dvc repro)")
    return json.loads(read_bytes(uri, storage or StorageConfig()))


def shard_urls(root: str | Path, split: str, storage: StorageConfig | None = None) -> list[str]:
    """The split's shards in order, as local paths or ``s3://`` URLs beside the index."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [join_uri(root, name) for name in read_shard_index(root, storage)["splits"][split]]


@dataclass
class CuratedSample:
    key: str
    image: np.ndarray  # uint8 (H, W, 3)
    parts: dict[str, bytes]  # the other members as stored: txt (first caption), json (captions, qa, ...)

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads(self.parts["json"])


def iter_samples(urls: list[str], storage: StorageConfig | None = None) -> Iterator[CuratedSample]:
    """Stream samples shard by shard; curated shards hold exactly png + txt + json per key."""
    for url in urls:
        with open_read(url, storage or StorageConfig()) as handle:
            for key, parts in iter_shard_samples(handle, url):
                if not {"png", "json"} <= parts.keys():
                    raise ValueError(f"{url}: sample {key!r} lacks {sorted({'png', 'json'} - parts.keys())}; "
                                     "rerun the curate stage")
                image = Image.open(io.BytesIO(parts.pop("png")))
                image = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
                yield CuratedSample(key, image, parts)


@dataclass
class CuratedSplit:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    meta: list[dict[str, Any]]
    keys: list[str] = field(default_factory=list)  # sample keys when read from shards

    def __len__(self) -> int:
        return len(self.meta)


def load_split(root: str | Path, split: str, limit: int | None = None) -> CuratedSplit:
    images, meta, keys = [], [], []
    for sample in iter_samples(shard_urls(root, split)):
        if limit is not None and len(meta) >= limit:
            break
        images.append(sample.image)
        meta.append(sample.meta)
        keys.append(sample.key)
    if not images:
        raise ValueError(f"split {split!r} under {root} is empty")
    return CuratedSplit(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), meta, keys)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1]: SigLIP's normalisation (mean 0.5, std 0.5 per channel)."""
    return images.float().div_(127.5).sub_(1.0)


def from_model_output(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8, clamped."""
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


class EpochSampler:
    """Batches of indices from a seeded permutation per epoch; this rank takes every ``world``-th batch.

    ``state_dict`` records (epoch, batches already taken), which is all a resume needs: the permutation
    is a pure function of (seed, epoch). Incomplete final batches are dropped so every rank steps equally.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if size < batch_size * world:
            raise ValueError(f"{size} samples cannot fill one batch of {batch_size} on each of {world} rank(s)")
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.epoch, self.position = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world)

    def _order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def next_batch(self) -> torch.Tensor:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order(self.epoch)
        start = (self.position * self.world + self.rank) * self.batch_size
        self.position += 1
        return order[start : start + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["seed"], state["size"]) != (self.seed, self.size):
            raise ValueError(f"sampler state is for seed {state['seed']} / {state['size']} samples, "
                             f"not {self.seed} / {self.size}: the data or seed changed since the checkpoint")
        self.epoch, self.position = state["epoch"], state["position"]


def corpus_digest(root: str | Path, storage: StorageConfig | None = None) -> str:
    """Identity of a curated corpus: the shard index and the manifest (which holds every pixel hash)."""
    digest = hashlib.sha256()
    for name in ("shards.json", "manifest.parquet"):
        uri = join_uri(root, name)
        if not is_s3(uri) and not Path(uri).is_file():
            raise FileNotFoundError(f"{uri} not found: run the curate stage first (dvc repro curate)")
        digest.update(read_bytes(uri, storage or StorageConfig()))
    return digest.hexdigest()[:16]
