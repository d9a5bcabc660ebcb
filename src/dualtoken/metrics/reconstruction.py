"""Reconstruction quality on uint8 images: PSNR and SSIM (Gaussian window, per channel), vectorised."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of uint8 (N, C, H, W) images (peak 255); identical images cap at ~148 dB."""
    mse = (reference.float() - reconstruction.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(255.0**2 / mse)


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(reference: torch.Tensor, reconstruction: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004 constants) of uint8 (N, C, H, W) images, averaged over channels."""
    x, y = reference.float(), reconstruction.float()
    c = x.shape[1]
    w = _gaussian_window(window, sigma, c).to(x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)  # 'valid' windows only, as the reference implementation

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


def image_grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack rows of uint8 (N, 3, H, W) images into one (H*rows, W*N, 3) array for logging."""
    lines = [torch.cat(list(r), dim=2) for r in rows]  # each (3, H, W*N)
    return torch.cat(lines, dim=1).permute(1, 2, 0).contiguous()
