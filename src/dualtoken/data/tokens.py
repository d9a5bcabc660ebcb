"""Token shards: the tokenised corpus the MLLM trains on, one WebDataset tar per curated shard.

Per sample: ``{key}.pixel.npy`` and ``{key}.semantic.npy`` (h x w x depth codes; uint16 when the codebook has
at most 65536 entries, else int32) and the curated ``txt`` and ``json`` parts byte for byte (captions, QA,
attributes). ``shards.json`` beside the shards lists them per split with counts, the code layout, the
tokenizer they came from and the corpus' text statistics (``dualtoken.data.texts``); each shard has its
offset index. Any WebDataset reader opens them (``.npy`` decodes natively); ``read_codes`` checks every
array's dtype, shape and code range, so a damaged shard is an error naming the sample. Training streams them
(``dualtoken.data.sequences``); evaluations read the first ``limit`` samples of a split (``read_token_split``).
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualtoken.data.shards import read_shard_index, shard_urls
from dualtoken.data.tarstream import iter_shard_samples
from dualtoken.data.texts import TextStats
from dualtoken.errors import DualtokenError
from dualtoken.schema import ConfigError
from dualtoken.storage import StorageConfig, open_read

FORMAT = "dualtoken-codes/1"
STREAMS = ("pixel", "semantic")
CARRIED_PARTS = ("txt", "json")  # curated parts copied into the token shards unchanged


class CorruptTokens(DualtokenError, ValueError):
    """A token shard holds something other than valid codes; the message names shard, sample and problem."""


def code_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.uint16) if codebook_size <= 2**16 else np.dtype(np.int32)


@dataclass(frozen=True)
class CodeSpec:
    depth: int
    codebook_size: int

    @property
    def dtype(self) -> np.dtype:
        return code_dtype(self.codebook_size)


@dataclass(frozen=True)
class TokenLayout:
    """What every sample's code arrays look like: an (h, w) grid of ``depth`` residual codes per stream."""

    grid: tuple[int, int]
    pixel: CodeSpec
    semantic: CodeSpec

    def spec(self, stream: str) -> CodeSpec:
        return {"pixel": self.pixel, "semantic": self.semantic}[stream]

    def shape(self, stream: str) -> tuple[int, int, int]:
        return (*self.grid, self.spec(stream).depth)

    def to_dict(self) -> dict[str, Any]:
        streams = {s: {"depth": self.spec(s).depth, "codebook_size": self.spec(s).codebook_size,
                       "dtype": self.spec(s).dtype.name} for s in STREAMS}
        return {"grid": list(self.grid), **streams}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TokenLayout:
        h, w = raw["grid"]
        specs = {s: CodeSpec(int(raw[s]["depth"]), int(raw[s]["codebook_size"])) for s in STREAMS}
        return cls((int(h), int(w)), specs["pixel"], specs["semantic"])

    @classmethod
    def of_model(cls, config: Any) -> TokenLayout:
        """The layout a DualToken model's ``encode`` produces."""
        side = config.grid_size
        return cls((side, side), CodeSpec(config.pixel_depth, config.pixel_codebook_size),
                   CodeSpec(config.semantic_depth, config.semantic_codebook_size))


@functools.lru_cache(maxsize=64)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    zeros = np.zeros(shape, dtype)
    buffer = io.BytesIO()
    np.save(buffer, zeros, allow_pickle=False)
    return buffer.getvalue()[: len(buffer.getvalue()) - zeros.nbytes]


def npy_bytes(array: np.ndarray) -> bytes:
    """What ``np.save`` writes (always in C order), with the header built once per dtype and shape."""
    return _npy_header(array.dtype.str, array.shape) + array.tobytes(order="C")


def sample_parts(pixel: np.ndarray, semantic: np.ndarray, carried: dict[str, bytes]) -> dict[str, bytes]:
    """The tar members of one token sample (codes already in the layout's dtype)."""
    return {"pixel.npy": npy_bytes(pixel), "semantic.npy": npy_bytes(semantic), **carried}


def read_codes(parts: dict[str, bytes], layout: TokenLayout, where: str) -> dict[str, np.ndarray]:
    """Both code arrays of a sample, each checked for dtype, shape and range."""
    out = {}
    for stream in STREAMS:
        spec, name = layout.spec(stream), f"{stream}.npy"
        if name not in parts:
            raise CorruptTokens(f"{where}: no {name}")
        data, header = parts[name], _npy_header(spec.dtype.str, layout.shape(stream))
        if data.startswith(header) and len(data) == len(header) + spec.dtype.itemsize * math.prod(
                layout.shape(stream)):  # what this project writes: the header is known, the rest is the array
            array = np.frombuffer(data, spec.dtype, offset=len(header)).reshape(layout.shape(stream))
        else:
            try:
                array = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                raise CorruptTokens(f"{where}: {name} is not a readable .npy ({err})") from None
        if array.dtype != spec.dtype or array.shape != layout.shape(stream):
            raise CorruptTokens(f"{where}: {name} is {array.dtype} {array.shape}, expected {spec.dtype} "
                                f"{layout.shape(stream)}")
        check_range(array, spec, f"{where}: {stream}")
        out[stream] = array
    return out


def check_range(codes: np.ndarray, spec: CodeSpec, where: str) -> None:
    """Every code in [0, codebook_size): one min and one max over the whole array."""
    if codes.size == 0:
        return
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= spec.codebook_size:
        bad = high if high >= spec.codebook_size else low
        raise CorruptTokens(f"{where}: code {bad} outside the codebook [0, {spec.codebook_size})")


@dataclass
class TokenSample:
    key: str
    pixel: np.ndarray  # (h, w, pixel depth)
    semantic: np.ndarray  # (h, w, semantic depth)
    parts: dict[str, bytes]  # the carried text parts (txt, json)

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads(self.parts["json"])


def iter_token_samples(urls: list[str], layout: TokenLayout, storage: StorageConfig | None = None
                       ) -> Iterator[TokenSample]:
    """Stream and check token samples shard by shard (local paths or ``s3://`` URLs)."""
    for url in urls:
        with open_read(url, storage or StorageConfig()) as handle:
            samples = iter_shard_samples(handle, url)
            while True:
                try:
                    key, parts = next(samples)
                except StopIteration:
                    break
                except ValueError as err:  # truncated or not a tar this project wrote
                    raise CorruptTokens(str(err)) from None
                codes = read_codes(parts, layout, f"{url}: sample {key!r}")
                carried = {p: parts[p] for p in CARRIED_PARTS if p in parts}
                yield TokenSample(key, codes["pixel"], codes["semantic"], carried)


def read_layout(root: str | Path, storage: StorageConfig | None = None) -> TokenLayout:
    index = read_shard_index(root, storage)
    if index.get("format") != FORMAT:
        raise CorruptTokens(f"{root} is not a token corpus ({FORMAT}): run the tokenize stage (dvc repro tokenize)")
    return TokenLayout.from_dict(index["layout"])


def read_text_stats(root: str | Path, split: str, storage: StorageConfig | None = None) -> TextStats:
    """What the tokenize stage counted of a split's texts (captions, questions, answers per type)."""
    texts = read_shard_index(root, storage).get("texts", {})
    if split not in texts:
        raise CorruptTokens(f"{root}/shards.json has no text statistics for {split}: it was written by an older "
                            "dualtoken; rerun the tokenize stage (dvc repro tokenize)")
    return TextStats.from_dict(texts[split])


@dataclass
class TokenSplit:
    """A bounded set of token samples in memory (an evaluation set): codes as int64 tensors (N, h, w, depth)."""

    keys: list[str]
    pixel: torch.Tensor
    semantic: torch.Tensor
    meta: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.keys)


def read_token_split(root: str | Path, split: str, limit: int, storage: StorageConfig | None = None) -> TokenSplit:
    """The first ``limit`` token samples of ``split`` in corpus order; only the shards they are in are read."""
    layout = read_layout(root, storage)
    keys, pixel, semantic, meta = [], [], [], []
    for sample in itertools.islice(iter_token_samples(shard_urls(root, split, storage), layout, storage), limit):
        keys.append(sample.key)
        pixel.append(sample.pixel)
        semantic.append(sample.semantic)
        meta.append(sample.meta)
    if not keys:
        raise ValueError(f"split {split!r} under {root} is empty")
    return TokenSplit(keys, torch.from_numpy(np.stack(pixel).astype(np.int64)),
                      torch.from_numpy(np.stack(semantic).astype(np.int64)), meta)


def check_layout(root: str, tokenizer_config: Any, storage: StorageConfig | None = None) -> None:
    """The token corpus at ``root`` was written by a tokenizer of this configuration (``DualTokenConfig``): same
    grid and code depths, else a configuration error saying how to get a matching pair."""
    layout = read_layout(root, storage)
    expected = {"grid": [tokenizer_config.grid_size] * 2, "pixel": tokenizer_config.pixel_depth,
                "semantic": tokenizer_config.semantic_depth}
    found = {"grid": list(layout.grid), "pixel": layout.pixel.depth, "semantic": layout.semantic.depth}
    if found != expected:
        raise ConfigError(f"the token corpus {root} ({found}) was not written by the tokenizer given ({expected}): "
                          "rerun the tokenize stage or point mllm.tokens / mllm.tokenizer at a matching pair")
