"""Building blocks of the tokenizer: token projections and the VQGAN-style pixel decoder."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention with a residual connection (SDPA kernels)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return x + self.out(attended)


class TokenProjection(nn.Module):
    """Maps tokens between the tower's width and a code dimension.

    ``attention``: a self-attention block on the wide side (before a down projection, after an up
    projection), so each token's code can use its neighbours; ``linear``: the projection alone.
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "attention", heads: int = 8) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        wide = max(in_dim, out_dim)
        self.attention = SelfAttentionBlock(wide, heads) if kind == "attention" else None
        self.attend_first = in_dim >= out_dim

    def forward(self, x: Tensor) -> Tensor:
        if self.attention is not None and self.attend_first:
            x = self.attention(x)
        x = self.linear(x)
        if self.attention is not None and not self.attend_first:
            x = self.attention(x)
        return x


class GeGLU(nn.Module):
    """LayerNorm, then ``w2(gelu_tanh(w0 x) * w1 x)`` (SigLIP-style gated MLP)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.w0, self.w1, self.w2 = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        return self.w2(F.gelu(self.w0(x), approximate="tanh") * self.w1(x))


class ReleasedProjection(nn.Module):
    """The released code's projection between the tower's width and a code dimension: a linear path plus an
    attention path, then a residual GeGLU MLP (twice the output width) at the output width.

    The attention has wide / narrow heads, each ``narrow`` wide: going down, every head reads the wide input
    and the heads' outputs are averaged into one narrow vector; going up, the narrow input makes every head's
    queries, keys and values and the heads are concatenated to the wide width. ``causal``: each token attends
    to those before it in raster order (the released code's up projections, in its latest version).
    """

    def __init__(self, in_dim: int, out_dim: int, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        wide, narrow = max(in_dim, out_dim), min(in_dim, out_dim)
        if wide % narrow:
            raise ValueError(f"the released projection needs one width to divide the other, got {in_dim} -> {out_dim}")
        self.heads, self.down = wide // narrow, in_dim > out_dim
        self.norm_linear, self.linear = nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim)
        self.norm_attention, self.qkv = nn.LayerNorm(in_dim), nn.Linear(in_dim, 3 * wide)
        self.out = nn.Linear(out_dim, out_dim)
        self.norm_mlp, self.mlp = nn.LayerNorm(out_dim), GeGLU(out_dim, 2 * out_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm_attention(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (b, heads, n, narrow)
        attended = attended.mean(1) if self.down else attended.transpose(1, 2).reshape(b, n, -1)
        x = self.linear(self.norm_linear(x)) + self.out(attended)
        return x + self.mlp(self.norm_mlp(x))


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) if channels >= 8 else 1, channels, eps=1e-6)


class ResBlock(nn.Module):
    """(GroupNorm, SiLU, convolution) twice, plus the input (through a 1x1 convolution where the width changes).
    ``first_kernel=1``: the released PostQuantResnetBlock and ProjectResnetBlock's 1x1 first convolution."""

    def __init__(self, cin: int, cout: int, first_kernel: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, first_kernel, padding=first_kernel // 2),
                                  _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class ConvProjection(nn.Module):
    """The first released checkpoint's projection (its ProjectResnetBlock): a residual block, a 1x1 then a 3x3
    convolution, over the square token grid, so each token's projection sees its 3 x 3 neighbourhood."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.block = ResBlock(in_dim, out_dim, first_kernel=1)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        side = math.isqrt(n)
        return self.block(x.transpose(1, 2).reshape(b, c, side, side)).flatten(2).transpose(1, 2)


def token_projection(in_dim: int, out_dim: int, kind: str, heads: int, causal: bool = False) -> nn.Module:
    """``released`` (the official structure; ``causal`` attention for its up projections), ``conv`` (the
    first released checkpoint's), or ``attention`` / ``linear`` (``TokenProjection``)."""
    if kind == "released":
        return ReleasedProjection(in_dim, out_dim, causal)
    if kind == "conv":
        return ConvProjection(in_dim, out_dim)
    return TokenProjection(in_dim, out_dim, kind, heads)


class SpatialAttention(nn.Module):
    """Single-head attention over all positions of a feature map (used at low resolution only)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class PixelDecoder(nn.Module):
    """VQGAN-style decoder: latent (B, C, h, w) -> image (B, 3, h * 2^L, w * 2^L) in [-1, 1] scale.

    Levels run from the coarsest (``channel_mult[-1]``) to the finest; attention sits at the coarsest
    ``attention_levels`` levels and in the middle block, where the number of positions is small.
    """

    def __init__(self, in_channels: int, channels: int, channel_mult: list[int], res_blocks: int,
                 attention_levels: int = 1, latent_size: int | None = None, input_block: bool = False) -> None:
        super().__init__()
        self.latent_size = latent_size
        widths = [channels * m for m in channel_mult]
        self.conv_in: nn.Module
        if input_block:  # the released PostQuantResnetBlock: a residual block from the tower's width, then conv_in
            self.conv_in = nn.Sequential(ResBlock(in_channels, widths[-1], first_kernel=1),
                                         nn.Conv2d(widths[-1], widths[-1], 3, padding=1))
        else:
            self.conv_in = nn.Conv2d(in_channels, widths[-1], 3, padding=1)
        self.mid = nn.Sequential(ResBlock(widths[-1], widths[-1]), SpatialAttention(widths[-1]),
                                 ResBlock(widths[-1], widths[-1]))
        levels: list[nn.Module] = []
        current = widths[-1]
        for depth, width in enumerate(reversed(widths)):
            blocks: list[nn.Module] = []
            for _ in range(res_blocks + 1):
                blocks.append(ResBlock(current, width))
                current = width
                if depth < attention_levels:
                    blocks.append(SpatialAttention(width))
            if depth < len(widths) - 1:
                blocks.extend([nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)])
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.ModuleList(levels)
        self.conv_out = nn.Sequential(_norm(current), nn.SiLU(), nn.Conv2d(current, 3, 3, padding=1))

    def forward(self, latent: Tensor) -> Tensor:
        if self.latent_size is not None and latent.shape[-1] != self.latent_size:
            latent = F.interpolate(latent, size=(self.latent_size, self.latent_size), mode="bilinear",
                                   align_corners=False)
        x = self.mid(self.conv_in(latent))
        for level in self.levels:
            x = level(x)
        return self.conv_out(x)
