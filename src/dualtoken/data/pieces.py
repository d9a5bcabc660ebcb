"""What a loader worker does: read one piece of a stream (a few member runs of one or two shards, each with one
seek or one ranged GET through the shard's offset index) and decode the samples it wants, never raising for bad
data. ``dualtoken.data.loader`` asks for the pieces and puts their samples in stream order."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dualtoken.data.shards import Shard, decode_offsets
from dualtoken.data.tarstream import iter_range_samples
from dualtoken.errors import DualtokenError
from dualtoken.storage import StorageConfig, read_bytes, read_range


class CorruptSample(DualtokenError, ValueError):
    """A shard or sample the loader cannot read; the message names the shard and the sample."""


@dataclass(frozen=True)
class RawSample:
    key: str
    parts: dict[str, bytes]
    where: str  # "<shard url>: sample '<key>'", for error messages
    draw: int  # 63 random bits fixed by (draw seed, epoch, key): which caption, which question, ...

    def choice(self, part: int, n: int) -> int:
        """An index in [0, n) from the draw's ``part``-th field of 21 bits (fields 0, 1, 2 are independent)."""
        return ((self.draw >> (21 * part)) & 0x1FFFFF) % n

    def uniform(self, part: int) -> float:
        """A number in [0, 1) from the draw's ``part``-th field of 21 bits."""
        return ((self.draw >> (21 * part)) & 0x1FFFFF) / 2**21


Decoder = Callable[..., dict[str, Any]]  # (samples, out=None) -> columns: tensors (n, ...) or lists of length n;
# a decoder with a ``pooled_column`` attribute writes that column into ``out`` (a buffer of rows) when given one


@dataclass(frozen=True)
class Segment:
    url: str
    samples: int  # the shard's sample count (checks its offset index)
    first: int  # first member sample of the run
    count: int
    skip: tuple[bool, ...] | None  # members read before a resume: not decoded


@dataclass(frozen=True)
class PieceRequest:
    stream: str
    piece: int  # epoch * pieces_per_epoch + piece within the epoch
    epoch: int
    positions: tuple[int, ...]  # the positions this request returns (those not skipped), ascending
    segments: tuple[Segment, ...]
    draw_seed: int
    slot: int | None = None  # the pool slot to decode the pooled column into


@dataclass(frozen=True)
class Pooled:
    """Stands for a column a worker wrote into pool slot ``slot`` (its first ``rows`` rows)."""

    slot: int
    rows: int


@dataclass
class Piece:
    stream: str
    piece: int
    positions: np.ndarray
    columns: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def sample_draw(draw_seed: int, epoch: int, key: str) -> int:
    digest = hashlib.blake2b(f"{draw_seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class PieceReader(Dataset):
    """What a worker runs: read a request's member runs, decode the samples it wants, never raise for bad data."""

    def __init__(self, decoder: Decoder, storage: StorageConfig, cache: int = 64) -> None:
        self.decoder, self.storage, self.cache = decoder, storage, cache
        self.pool: torch.Tensor | None = None  # (slots, piece, ...) in shared memory, set before workers start
        self._offsets: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:  # requests are made on demand; the DataLoader never asks
        raise TypeError("a PieceReader is indexed by piece requests, it has no length")

    def __getitem__(self, request: PieceRequest) -> Piece:
        try:
            samples = [s for segment in request.segments for s in self._read(segment, request)]
            if len(samples) != len(request.positions):
                raise CorruptSample(f"{request.segments[0].url}: {len(samples)} samples read where "
                                    f"{len(request.positions)} were asked for")
            columns = self._decode(samples, request.slot) if samples else {}
            return Piece(request.stream, request.piece, np.asarray(request.positions, dtype=np.int64), columns)
        except (DualtokenError, ValueError, OSError, EOFError) as err:  # bad data: one line to the main process
            message = " ".join(str(err).split()) or type(err).__name__
            urls = [segment.url for segment in request.segments]
            if not any(url in message for url in urls):
                message = f"{' + '.join(urls)}: {message}"
            return Piece(request.stream, request.piece, np.zeros(0, np.int64), error=message)

    def _decode(self, samples: list[RawSample], slot: int | None) -> dict[str, Any]:
        name = getattr(self.decoder, "pooled_column", None)
        if slot is None or self.pool is None or name is None:
            return self.decoder(samples)
        out = self.pool[slot]
        columns = self.decoder(samples, out=out)
        if columns[name].data_ptr() == out.data_ptr():  # written into the slot: only its number travels
            columns[name] = Pooled(slot, len(samples))
        return columns

    def _offsets_of(self, segment: Segment) -> np.ndarray:
        found = self._offsets.get(segment.url)
        if found is None:
            shard = Shard(segment.url.rsplit("/", 1)[-1], segment.url, segment.samples)
            found = decode_offsets(read_bytes(shard.offsets_url, self.storage), shard)
            self._offsets[segment.url] = found
            if len(self._offsets) > self.cache:
                self._offsets.popitem(last=False)
        else:
            self._offsets.move_to_end(segment.url)
        return found

    def _read(self, segment: Segment, request: PieceRequest) -> Iterator[RawSample]:
        offsets = self._offsets_of(segment)
        start, stop = int(offsets[segment.first]), int(offsets[segment.first + segment.count])
        data = read_range(segment.url, start, stop, self.storage)
        if len(data) != stop - start:
            raise CorruptSample(f"{segment.url}: truncated: {len(data)} of {stop - start} bytes at byte {start} "
                                f"(samples {segment.first}..{segment.first + segment.count - 1})")
        try:
            members = list(iter_range_samples(data, segment.url, base=start))
        except ValueError as err:
            raise CorruptSample(str(err)) from None
        if len(members) != segment.count:
            raise CorruptSample(f"{segment.url}: bytes {start}..{stop} hold {len(members)} samples, the offset "
                                f"index says {segment.count}: the index does not match the shard")
        for i, (key, parts) in enumerate(members):
            if segment.skip is None or not segment.skip[i]:
                yield RawSample(key, parts, f"{segment.url}: sample {key!r}",
                                sample_draw(request.draw_seed, request.epoch, key))
