"""Fréchet distance: our symmetric eigendecomposition (``evaluation/distance.py``) against pytorch-fid's
``scipy.linalg.sqrtm(S_a S_b)``, at FID's feature width (2048) by default. Prints both times, their ratio and
how far apart the two values are.

    python benchmarks/frechet_distance.py [--dim 2048] [--samples 5000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
import torch

from dualtoken.evaluation.distance import frechet_distance


def scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(root.real))


def best_of(fn, repeats: int) -> tuple[float, float]:
    times, value = [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    a = rng.normal(size=(args.samples, args.dim)) @ (rng.normal(size=(args.dim, args.dim)) / np.sqrt(args.dim))
    b = rng.normal(size=(args.samples, args.dim)) * 1.1 + 0.05
    ours, ours_value = best_of(lambda: frechet_distance(torch.from_numpy(a), torch.from_numpy(b)), args.repeats)
    ref, ref_value = best_of(lambda: scipy_fd(a, b), args.repeats)
    print(f"FD of {args.samples} x {args.dim} features, best of {args.repeats} (torch threads "
          f"{torch.get_num_threads()}):")
    print(f"  eigh (ours)         {ours:8.2f} s  FD {ours_value:.6f}")
    print(f"  scipy sqrtm (ref)   {ref:8.2f} s  FD {ref_value:.6f}")
    gap = abs(ours_value - ref_value) / ref_value
    print(f"  ratio ref/ours      {ref / ours:8.2f}x   relative difference {gap:.2e}")


if __name__ == "__main__":
    main()
