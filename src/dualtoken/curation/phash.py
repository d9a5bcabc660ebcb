"""Perceptual hashing (pHash) and near-duplicate search by Hamming distance.

``hash_size=8`` is the classic 64-bit pHash. Small images (the demo's 64x64 scenes: a small object on a
grey background) collide at 64 bits, so the size is configurable: 16 keeps 256 low DCT frequencies.

The search uses the pigeonhole principle: cut the hash into ``t + 1`` bands; two hashes within ``t`` bits
agree exactly on at least one band. Only samples sharing a band value are compared, with vectorised
popcounts, so the cost follows the number of true neighbours rather than N^2.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
from PIL import Image

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _dct_matrix(n: int, rows: int) -> np.ndarray:
    """The first ``rows`` rows of the orthonormal DCT-II matrix: only low frequencies are ever used."""
    k = np.arange(rows)[:, None]
    x = np.arange(n)[None, :]
    mat = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    assert rows <= n
    mat[0] /= np.sqrt(2.0)
    return mat.astype(np.float32)


def phash(image: np.ndarray, hash_size: int = 8) -> str:
    """pHash of an RGB uint8 image as hex: sign of the low DCT frequencies against their median."""
    n = 4 * hash_size
    gray = (image.reshape(-1, 3) @ _LUMA).reshape(image.shape[:2])
    small = gray if gray.shape == (n, n) else np.asarray(
        Image.fromarray(gray, mode="F").resize((n, n), Image.BOX), dtype=np.float32)
    dct = _dct_matrix(n, hash_size)
    coeffs = (dct @ small @ dct.T).ravel()
    mid = coeffs.size // 2
    low, high = np.partition(coeffs, (mid - 1, mid))[mid - 1 : mid + 1]  # median without a full sort
    return np.packbits(coeffs > (low + high) / 2).tobytes().hex()


def hashes_to_bits(hashes: list[str]) -> np.ndarray:
    """Hex hashes of equal length -> (N, bits) bool matrix."""
    if not hashes:
        return np.zeros((0, 0), dtype=bool)
    raw = np.frombuffer(bytes.fromhex("".join(hashes)), dtype=np.uint8).reshape(len(hashes), -1)
    return np.unpackbits(raw, axis=1).astype(bool)


def _pairwise(words: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.bitwise_count(words[rows][:, None, :] ^ words[cols][None, :, :]).sum(-1, dtype=np.int64)


def _close_pairs(bits: np.ndarray, threshold: int) -> np.ndarray:
    """All pairs (i < j) within ``threshold`` bits, as an (M, 2) array sorted by j then i."""
    n, nbits = bits.shape
    words = np.packbits(bits, axis=1)
    bands = min(threshold + 1, nbits)
    edges = np.linspace(0, nbits, bands + 1).astype(int)
    found: list[np.ndarray] = []
    for lo, hi in itertools.pairwise(edges):
        band = np.ascontiguousarray(np.packbits(bits[:, lo:hi], axis=1))
        _, group = np.unique(band.view(f"V{band.shape[1]}").ravel(), return_inverse=True)
        order = np.argsort(group, kind="stable")
        starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
        sizes = np.diff(np.r_[starts, n])
        for start, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
            members = np.sort(order[start : start + size])
            for first in range(0, size, 1024):  # bound the block for very large buckets
                rows = members[first : first + 1024]
                close = (_pairwise(words, rows, members) <= threshold) & (rows[:, None] < members[None, :])
                i_idx, j_idx = np.nonzero(close)
                found.append(np.stack([rows[i_idx], members[j_idx]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.unique(np.concatenate(found), axis=0)
    return pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]


def hamming(a: str, b: str) -> int:
    return int(np.bitwise_count(np.frombuffer(bytes.fromhex(a), np.uint8) ^
                                np.frombuffer(bytes.fromhex(b), np.uint8)).sum())


def near_duplicates(hashes: list[str], threshold: int) -> np.ndarray:
    """For each hash, the index of an earlier *kept* hash within ``threshold`` bits, else -1.

    Greedy in input order: the first of a group is kept, later ones point at a kept sample.
    """
    duplicate_of = np.full(len(hashes), -1, dtype=np.int64)
    if threshold < 0 or len(hashes) < 2:
        return duplicate_of
    for i, j in _close_pairs(hashes_to_bits(hashes), threshold):
        if duplicate_of[j] == -1 and duplicate_of[i] == -1:
            duplicate_of[j] = i
    return duplicate_of
