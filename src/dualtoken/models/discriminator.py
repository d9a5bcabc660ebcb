"""The tokenizer's GAN: PatchGAN discriminators, hinge losses and VQGAN's adaptive generator weight.

Two discriminators, both one real/fake logit per overlapping patch with ``layers`` stride-2 steps in all:
``ResNetDiscriminator`` is the released DualToken one (3x3 convolutions, pre-activation residual steps with
GroupNorm and leaky ReLU 0.2, 1x1 shortcuts on a bilinearly resized input); ``PatchDiscriminator`` is pix2pix's
(4x4 convolutions), which VQGAN uses.
"""

from __future__ import annotations

from math import gcd
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAK = 0.2  # both discriminators' activation slope


def _width(channels: int, step: int) -> int:
    return channels * min(2**step, 8)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix / VQGAN): 4x4 convolutions, GroupNorm(1), leaky ReLU."""

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(LEAK)]
        width = channels
        for i in range(1, layers + 1):
            nxt = _width(channels, i)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(width, nxt, 4, stride, 1, bias=False), nn.GroupNorm(1, nxt), nn.LeakyReLU(LEAK)]
            width = nxt
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class ResidualStep(nn.Module):
    """GroupNorm -> leaky ReLU -> 3x3 conv (stride 1 or 2), plus a 1x1 conv of the input resized to match."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(gcd(32, cin), cin, eps=1e-6)  # 32 groups at paper widths; fewer if narrower
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(F.leaky_relu(self.norm(x), LEAK))
        if x.shape[-2:] != h.shape[-2:]:
            x = F.interpolate(x, size=h.shape[-2:], mode="bilinear", align_corners=False)
        return self.shortcut(x) + h


class ResNetDiscriminator(nn.Module):
    """The released DualToken discriminator: a 3x3 stride-2 conv, ``layers - 1`` stride-2 residual steps, one
    stride-1 step to 8x the base width (at most), and a 3x3 conv to one logit per patch."""

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 3, 2, 1), nn.LeakyReLU(LEAK)]
        for i in range(1, layers):
            blocks.append(ResidualStep(_width(channels, i - 1), _width(channels, i), stride=2))
        blocks.append(ResidualStep(_width(channels, layers - 1), _width(channels, layers), stride=1))
        blocks.append(nn.Conv2d(_width(channels, layers), 1, 3, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


def build_discriminator(kind: Literal["resnet", "patchgan"], channels: int, layers: int) -> nn.Module:
    if kind == "resnet":
        return ResNetDiscriminator(channels, layers)
    if kind == "patchgan":
        return PatchDiscriminator(channels, layers)
    raise ValueError(f"unknown discriminator {kind!r}: resnet or patchgan")


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor, leaky: bool = False) -> Tensor:
    """0.5 (act(1 - real) + act(1 + fake)), act = ReLU (VQGAN) or leaky ReLU with slope 0.01 (released
    DualToken: a logit already past its margin still gets a small push)."""
    act = F.leaky_relu if leaky else F.relu
    return 0.5 * (act(1.0 - real_logits).mean() + act(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    return -fake_logits.mean()


def adaptive_gan_weight(nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, low: float = 0.3,
                        high: float = 10.0) -> Tensor:
    """VQGAN rule: balance gradient norms at the decoder's last layer, clamped to [low, high]."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(low, high).detach()
