"""Deterministic train/val/test assignment from a content hash.

A sample's split depends only on its own pixel digest and the fractions, so adding samples to the corpus
never moves an existing sample to another split.
"""

from __future__ import annotations


def assign_split(pixel_sha256: str, fractions: dict[str, float]) -> str:
    u = int(pixel_sha256[:16], 16) / 2.0**64
    edge = 0.0
    last = ""
    for split, frac in fractions.items():
        edge += frac
        last = split
        if u < edge:
            return split
    return last  # rounding: fractions sum to 1 within float error
