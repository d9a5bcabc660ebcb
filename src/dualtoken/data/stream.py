"""The order a training run reads a corpus in: a pure function of (seed, epoch, number of streams).

Partition. An epoch orders the shards by a seeded permutation and lays their samples end to end (counts
from ``shards.json``; nothing is scanned). Stream ``k`` of ``D`` takes the contiguous range
``[k N // D, (k + 1) N // D)`` of that sequence: every sample of the epoch belongs to exactly one stream and
the streams' lengths differ by at most one, whatever ``N`` and however many shards there are (a shard may be
split between two streams). A stream runs through its range epoch after epoch without a break, so a batch
may straddle two epochs and nothing is dropped.

Streams, not ranks. A run of ``R`` processes with ``A`` accumulation micro steps reads ``D = R x A``
streams, micro step ``m`` of rank ``r`` reading stream ``m R + r``: the same ``R x A`` gives the same
batches, however it is split, and DataLoader workers only decode (see ``dualtoken.data.loader``), so their
number changes nothing either. A different ``D`` cuts the sequence into other ranges: other batches, the
same epochs.

Shuffle. Within its range a stream shuffles with a window of ``S`` samples (the shuffle buffer): sample
``q`` gets the key ``q + S u_q`` (``u_q`` uniform, seeded by seed, epoch, stream and q's block of ``S``)
and samples leave in key order. A sample therefore leaves within ``S`` positions after it arrives, and a
reader that reads ahead only as far as the next key needs holds at most ``S`` samples. The keys of one block
are enough to place any position, so a resumed run finds its place without generating what came before. A
window at least as long as the range shuffles it completely (a seeded permutation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualtoken.errors import DualtokenError

_IDENTITY_BAND = 4096  # positions per band when nothing is shuffled


class StreamError(DualtokenError, ValueError):
    """A corpus that cannot feed the requested streams, or a position that does not belong to this order."""


def stream_ids(rank: int, world: int, grad_accum: int) -> list[int]:
    """The streams rank ``rank`` reads, one per accumulation micro step: ``m * world + rank``."""
    return [m * world + rank for m in range(grad_accum)]


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed fixed by its parts (e.g. the run's seed, a phase and a task), the same on every machine."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _seed_words(*parts: int | str) -> list[int]:
    """A numpy SeedSequence entropy list from mixed ints and names (names hashed, stable across runs)."""
    words = []
    for part in parts:
        if isinstance(part, str):
            part = int.from_bytes(hashlib.blake2b(part.encode(), digest_size=8).digest(), "little")
        words.append(int(part) & (2**64 - 1))
    return words


class _Recent(dict):
    """The last few values computed by key (each order keeps its own: streams never evict each other's)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self:
            if len(self) >= self.size:
                del self[next(iter(self))]
            self[key] = make()
        return self[key]


class EpochOrder:
    """The emission order of one stream's range in one epoch, in bands of consecutive keys.

    Band ``w`` holds the keys in ``[w S, (w + 1) S)``: they come from position blocks ``w - 1`` and ``w``.
    """

    def __init__(self, length: int, window: int, seed: int, epoch: int, stream: int) -> None:
        self.length, self.seed, self.epoch, self.stream = length, seed, epoch, stream
        if window <= 1:
            self.mode, self.window = "identity", _IDENTITY_BAND
        elif window >= length:
            self.mode, self.window = "full", length
        else:
            self.mode, self.window = "window", window
        self.blocks = -(-length // self.window)
        self.bands = 1 if self.mode == "full" else self.blocks + (self.mode == "window")
        self._key_blocks, self._bands = _Recent(4), _Recent(2)

    def _rng(self, block: int) -> np.random.Generator:
        return np.random.default_rng(_seed_words(self.seed, self.epoch, self.stream, block, self.mode))

    def _keys(self, block: int) -> np.ndarray:
        """Keys of position block ``block`` (float64; its positions are ``block * window + arange``)."""
        def make() -> np.ndarray:
            start = block * self.window
            size = max(0, min(self.window, self.length - start))
            return start + np.arange(size) + self.window * self._rng(block).random(size)

        return self._key_blocks.get_or(block, make)

    def band(self, w: int) -> np.ndarray:
        """Positions of band ``w`` in emission order."""
        return self._bands.get_or(w, lambda: self._band(w))

    def _band(self, w: int) -> np.ndarray:
        if self.mode == "identity":
            return np.arange(w * self.window, min((w + 1) * self.window, self.length), dtype=np.int64)
        if self.mode == "full":
            return np.argsort(self._rng(0).random(self.length), kind="stable").astype(np.int64)
        low, high = w * self.window, (w + 1) * self.window
        positions, keys = [], []
        for block in (w - 1, w):
            if 0 <= block < self.blocks:
                k = self._keys(block)
                chosen = np.flatnonzero((k >= low) & (k < high))
                positions.append(block * self.window + chosen)
                keys.append(k[chosen])
        q, k = np.concatenate(positions), np.concatenate(keys)
        return q[np.lexsort((q, k))].astype(np.int64)

    def before_band(self, w: int) -> int:
        """How many positions are emitted before band ``w``."""
        if self.mode != "window":
            return min(w * self.window, self.length)
        if w <= 0:
            return 0
        earlier = min((w - 1) * self.window, self.length)  # blocks below w - 1 all have keys < w S
        return earlier + int(np.count_nonzero(self._keys(w - 1) < w * self.window))

    def locate(self, offset: int) -> tuple[int, int]:
        """(band, index within it) of emission index ``offset`` (0 <= offset < length)."""
        low, high = 0, self.bands - 1
        while low < high:  # the last band whose start is <= offset
            mid = (low + high + 1) // 2
            if self.before_band(mid) <= offset:
                low = mid
            else:
                high = mid - 1
        return low, offset - self.before_band(low)

    def band_of(self, positions: np.ndarray) -> np.ndarray:
        if self.mode == "identity":
            return positions // self.window
        if self.mode == "full":
            return np.zeros(len(positions), dtype=np.int64)
        blocks = positions // self.window
        keys = np.empty(len(positions))
        for block in np.unique(blocks):
            chosen = blocks == block
            keys[chosen] = self._keys(int(block))[positions[chosen] - block * self.window]
        return np.floor(keys / self.window).astype(np.int64)

    def emitted_before(self, offset: int) -> tuple[int, np.ndarray]:
        """The positions that leave before emission index ``offset`` (a resumed run skips them), as
        ``(low, mask)``: every position below ``low`` has left, ``mask[i]`` says whether ``low + i`` has, and
        none from ``low + len(mask)`` on has. ``mask`` spans at most two windows."""
        if offset <= 0:
            return 0, np.zeros(0, dtype=bool)
        band, within = self.locate(offset)
        if self.mode == "identity":
            return offset, np.zeros(0, dtype=bool)
        low = 0 if self.mode == "full" else max(0, (band - 1) * self.window)
        high = self.length if self.mode == "full" else min(self.length, (band + 1) * self.window)
        positions = np.arange(low, high)
        mask = self.band_of(positions) < band
        mask[np.isin(positions, self.band(band)[:within])] = True
        return low, mask


@dataclass(frozen=True)
class Location:
    """Where stream positions ``[start, start + count)`` of an epoch lie: members ``[first, first + count)`` of
    shard ``shard`` (its index in the corpus' shard list)."""

    shard: int
    first: int
    count: int
    start: int  # stream position of member ``first``


class StreamOrder:
    """Orders for ``streams`` streams over shards with ``counts`` samples (in shard-index order)."""

    def __init__(self, counts: Sequence[int], streams: int, seed: int, shuffle_buffer: int, name: str = "corpus"
                 ) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.total, self.streams, self.seed = int(self.counts.sum()), streams, seed
        self.shuffle_buffer, self.name = shuffle_buffer, name
        self._sequences, self._orders = _Recent(2), _Recent(4)
        if streams < 1:
            raise StreamError(f"{name}: at least one stream is needed, got {streams}")
        if self.total < streams:
            raise StreamError(f"{name} has {self.total} samples, fewer than the {streams} streams this run reads "
                              "(processes x grad_accum): each stream needs at least one")

    def start(self, stream: int) -> int:
        """Where the stream's range starts in the epoch's sample sequence."""
        return stream * self.total // self.streams

    def length(self, stream: int) -> int:
        return self.start(stream + 1) - self.start(stream)

    def _shard_sequence(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard indices in this epoch's order, cumulative sample counts in that order with a leading 0)."""
        def make() -> tuple[np.ndarray, np.ndarray]:
            order = np.random.default_rng(_seed_words(self.seed, epoch, "shards")).permutation(len(self.counts))
            return order, np.concatenate([[0], np.cumsum(self.counts[order])])

        return self._sequences.get_or(epoch, make)

    def epoch_order(self, stream: int, epoch: int) -> EpochOrder:
        return self._orders.get_or((stream, epoch), lambda: EpochOrder(self.length(stream), self.shuffle_buffer,
                                                                       self.seed, epoch, stream))

    def locate(self, stream: int, epoch: int, start: int, stop: int) -> list[Location]:
        """The shard members holding stream positions ``[start, stop)`` of ``epoch``, in position order."""
        order, cumulative = self._shard_sequence(epoch)
        base = self.start(stream)
        out = []
        position = start
        while position < stop:
            global_position = base + position
            slot = int(np.searchsorted(cumulative, global_position, side="right")) - 1
            first = global_position - int(cumulative[slot])
            count = min(stop - position, int(self.counts[order[slot]]) - first)
            out.append(Location(int(order[slot]), first, count, position))
            position += count
        return out

    def describe(self) -> dict[str, int | bool | str]:
        """What a saved position is only valid for."""
        return {"name": self.name, "samples": self.total, "shards": len(self.counts), "streams": self.streams,
                "seed": self.seed, "shuffle_buffer": self.shuffle_buffer}


class Emitter:
    """Stream ``stream``'s positions from ``position`` on, in emission order, epoch after epoch."""

    def __init__(self, order: StreamOrder, stream: int, position: int = 0) -> None:
        self.order, self.stream, self.length = order, stream, order.length(stream)
        self.position = position
        self.epoch, offset = divmod(position, self.length)
        self._epoch = order.epoch_order(stream, self.epoch)
        self._band, within = self._epoch.locate(offset)
        self._pending = self._epoch.band(self._band)[within:]
        self.resumed_at = (self.epoch, offset)  # what a resumed run must not read again

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` items as (epochs, positions within the epoch's range)."""
        epochs, positions, missing = [], [], n
        while missing:
            if not len(self._pending):
                self._advance()
                continue
            chunk = self._pending[:missing]
            self._pending = self._pending[missing:]
            epochs.append(np.full(len(chunk), self.epoch, dtype=np.int64))
            positions.append(chunk)
            missing -= len(chunk)
        self.position += n
        return (np.concatenate(epochs), np.concatenate(positions)) if epochs else (np.zeros(0, np.int64),) * 2

    def peek(self) -> tuple[int, int]:
        """(epoch, position) of the next item, without taking it."""
        while not len(self._pending):
            self._advance()
        return self.epoch, int(self._pending[0])

    def _advance(self) -> None:
        self._band += 1
        if self._band >= self._epoch.bands:
            self.epoch, self._band = self.epoch + 1, 0
            self._epoch = self.order.epoch_order(self.stream, self.epoch)
        self._pending = self._epoch.band(self._band)
