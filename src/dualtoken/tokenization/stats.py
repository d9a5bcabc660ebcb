"""How the corpus uses each codebook: per-depth usage, entropy and perplexity, and a usage plot.

Entropy is in bits over the codes chosen at a depth; perplexity ``2**H`` is the number of equally used
codes that would give the same entropy (at most the codebook size). The plot ranks codes from most to
least used: a healthy codebook gives a long flat curve, collapse a cliff.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from dualtoken.data.tokens import STREAMS
from dualtoken.storage import atomic_write


def depth_histogram(codes: np.ndarray, size: int) -> np.ndarray:
    """(..., depth) codes -> (depth, size) counts in one bincount."""
    flat = np.asarray(codes, dtype=np.int64).reshape(-1, codes.shape[-1])
    offsets = np.arange(flat.shape[1], dtype=np.int64) * size
    return np.bincount((flat + offsets).ravel(), minlength=flat.shape[1] * size).reshape(flat.shape[1], size)


def _entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def code_statistics(histograms: dict[str, np.ndarray]) -> dict[str, Any]:
    """stream -> usage / entropy_bits / perplexity per depth (``d1`` ... ``dD``) and pooled over depths."""
    out: dict[str, Any] = {}
    for stream, hist in histograms.items():
        per_depth = {f"d{d + 1}": hist[d] for d in range(hist.shape[0])}
        pooled = hist.sum(0)
        stats: dict[str, Any] = {"codebook_size": int(hist.shape[1]), "codes": int(hist.sum())}
        for name, fn in (("usage", lambda c: float((c > 0).mean())), ("entropy_bits", _entropy_bits),
                         ("perplexity", lambda c: float(2 ** _entropy_bits(c)))):
            stats[name] = {"all_depths": round(fn(pooled), 4), **{k: round(fn(v), 4) for k, v in per_depth.items()}}
        out[stream] = stats
    return out


def ranked_fractions(hist: np.ndarray) -> np.ndarray:
    """(depth, K) counts -> (depth + 1, K): each depth's and the pooled share of codes, sorted descending."""
    rows = np.concatenate([hist, hist.sum(0, keepdims=True)]).astype(np.float64)
    rows /= np.maximum(rows.sum(1, keepdims=True), 1)
    return -np.sort(-rows, axis=1)


def write_usage_csv(histograms: dict[str, np.ndarray], path: str | Path) -> Path:
    """``rank,pixel,semantic``: share of all codes (pooled over depths) taken by the rank-th most used code."""
    ranked = {s: ranked_fractions(histograms[s])[-1] for s in STREAMS}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", *STREAMS])
    for rank in range(max(len(v) for v in ranked.values())):
        writer.writerow([rank + 1, *(f"{ranked[s][rank]:.6g}" if rank < len(ranked[s]) else "" for s in STREAMS)])
    with atomic_write(path, "w") as handle:
        handle.write(buffer.getvalue())
    return Path(path)


def write_usage_plot(histograms: dict[str, np.ndarray], path: str | Path) -> Path:
    """One panel per stream, one curve per depth (log scale): the code-usage histogram, ranked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(STREAMS), figsize=(5 * len(STREAMS), 3.6), squeeze=False)
    for ax, stream in zip(axes[0], STREAMS, strict=True):
        ranked = ranked_fractions(histograms[stream])
        depth = ranked.shape[0] - 1
        for d in range(depth):
            used = int((histograms[stream][d] > 0).sum())
            ax.plot(np.arange(1, ranked.shape[1] + 1), ranked[d], lw=1.2, label=f"depth {d + 1} ({used} used)")
        ax.set(title=f"{stream} codebook ({ranked.shape[1]} codes)", xlabel="code rank", ylabel="share of codes",
               yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())
    return Path(path)
