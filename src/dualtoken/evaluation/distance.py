"""Fréchet distance between two sets of image features (the FID formula, on any feature extractor).

``FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2)``. The trace term is computed as the sum of
square roots of the eigenvalues of ``S_a^1/2 S_b S_a^1/2`` (symmetric, positive semi-definite, with the same
spectrum as ``S_a S_b``), in float64: no complex parts to discard and no ``sqrtm`` of a non-symmetric matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _psd_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def feature_moments(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance (as numpy.cov) of (N, D) features, in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features for a covariance, got shape {tuple(features.shape)}")
    x = features.detach().double().cpu()
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


class RunningMoments:
    """Mean and unbiased covariance of features that arrive batch by batch (float64 sums): a Fréchet distance
    over a whole split in memory independent of its size."""

    def __init__(self) -> None:
        self.count = 0
        self.total: Tensor | None = None
        self.outer: Tensor | None = None

    def add(self, features: Tensor) -> None:
        x = features.detach().double().cpu().reshape(features.shape[0], -1)
        if self.total is None:
            self.total, self.outer = x.new_zeros(x.shape[1]), x.new_zeros(x.shape[1], x.shape[1])
        self.total += x.sum(0)
        self.outer += x.T @ x
        self.count += x.shape[0]

    def moments(self) -> tuple[Tensor, Tensor]:
        if self.count < 2 or self.total is None or self.outer is None:
            raise ValueError(f"need 2 or more feature rows for a covariance, got {self.count}")
        mean = self.total / self.count
        return mean, (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """FD between Gaussians fitted to (N, D) and (M, D) feature sets; ~0 for a set with itself."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"feature widths differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return frechet_from_moments(*feature_moments(a), *feature_moments(b))


def frechet_from_moments(mu_a: Tensor, cov_a: Tensor, mu_b: Tensor, cov_b: Tensor) -> float:
    """FD between two Gaussians given by their means and covariances (float64)."""
    root_a = _psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(float(value), 0.0)
