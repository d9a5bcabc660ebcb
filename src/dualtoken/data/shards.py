"""A corpus folder's shard index: ``shards.json`` (per split, its shards and their sample counts) and each
shard's offset index ``<shard>.idx``.

The offset index lets a reader start at any sample of a shard with one seek (local) or one ranged GET
(S3) instead of reading what comes before it: ``samples + 1`` little-endian uint64 byte offsets, where each
sample's first member starts, then where the last one ends. Both are written by the stage that writes the
shards (``TarWriter(index=True)``), so a reader never scans a shard to learn its size or layout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualtoken.errors import DualtokenError
from dualtoken.storage import StorageConfig, atomic_write, is_s3, join_uri, read_bytes

SPLITS = ("train", "val", "test")
INDEX = "shards.json"
OFFSETS_SUFFIX = ".idx"


class ShardIndexError(DualtokenError, ValueError):
    """A shard index (``shards.json`` or a ``.idx``) is missing, stale or does not describe its shards."""


@dataclass(frozen=True)
class Shard:
    name: str  # e.g. train-000003.tar
    url: str  # local path or s3:// URL
    samples: int

    @property
    def offsets_url(self) -> str:
        return self.url + OFFSETS_SUFFIX


def read_shard_index(root: str | Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    """``shards.json`` of a shard folder (local or ``s3://``): split -> shard names, counts, and format facts."""
    uri = join_uri(root, INDEX)
    if not is_s3(uri) and not Path(uri).is_file():
        raise FileNotFoundError(f"{uri} not found: run the stage that writes {root} first (dvc repro)")
    return json.loads(read_bytes(uri, storage or StorageConfig()))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def shard_urls(root: str | Path, split: str, storage: StorageConfig | None = None) -> list[str]:
    """The split's shards in order, as local paths or ``s3://`` URLs beside the index."""
    _check_split(split)
    return [join_uri(root, name) for name in read_shard_index(root, storage)["splits"][split]]


def split_shards(root: str | Path, split: str, storage: StorageConfig | None = None,
                 index: dict[str, Any] | None = None) -> list[Shard]:
    """The split's shards with their sample counts, all from ``shards.json`` (no shard is opened)."""
    _check_split(split)
    index = index if index is not None else read_shard_index(root, storage)
    table = index.get("shards")
    if not isinstance(table, dict):
        raise ShardIndexError(f"{join_uri(root, INDEX)} has no per-shard sample counts: it was written by an older "
                              "dualtoken; rerun the stage that wrote it (dvc repro)")
    shards = []
    for name in index["splits"][split]:
        if name not in table:
            raise ShardIndexError(f"{join_uri(root, INDEX)}: shard {name} of split {split} has no entry in 'shards'")
        shards.append(Shard(name, join_uri(root, name), int(table[name]["samples"])))
    return shards


def offsets_path(shard_path: str | Path) -> Path:
    return Path(f"{shard_path}{OFFSETS_SUFFIX}")


def write_offsets(shard_path: str | Path, offsets: Sequence[int]) -> None:
    """The offset index beside a shard (atomically): sample starts, then the end of the last sample."""
    with atomic_write(offsets_path(shard_path)) as handle:
        handle.write(np.asarray(offsets, dtype="<u8").tobytes())


def decode_offsets(data: bytes, shard: Shard) -> np.ndarray:
    """Check an offset index against its shard's sample count; returns ``samples + 1`` int64 offsets."""
    if len(data) != 8 * (shard.samples + 1):
        raise ShardIndexError(f"{shard.offsets_url}: {len(data)} bytes where {shard.samples} samples need "
                              f"{8 * (shard.samples + 1)}: the index does not belong to this shard; rewrite the "
                              "corpus (dvc repro)")
    offsets = np.frombuffer(data, dtype="<u8").astype(np.int64)
    if offsets[0] != 0 or np.any(np.diff(offsets) <= 0) or np.any(offsets % 512):
        raise ShardIndexError(f"{shard.offsets_url}: offsets are not increasing 512-byte tar boundaries from 0: "
                              "damaged; rewrite the corpus (dvc repro)")
    return offsets
