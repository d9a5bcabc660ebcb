"""Residual vector quantizer (RQ-VAE style) used by both DualToken branches.

Depth ``D`` quantizers run one after another on what the previous ones left: ``r_0 = z``,
``c_k = argmin ||r_k - e||``, ``r_{k+1} = r_k - e_{c_k}``. The output is the sum of the chosen code
vectors, with a straight-through gradient to ``z``. Codebooks are one shared book or one per depth, and
learn either by EMA (decay, Laplace-smoothed counts; the paper's semantic quantizer) or by a codebook loss.
The EMA statistics update after each depth's assignment, before the next depth searches the book, as the
released code does (``ema_updates="depth"``: a shared book takes ``D`` updates a step), or once a step from all
depths' assignments (``"step"``).

Nearest-code search expands ``||r - e||^2 = ||r||^2 - 2 r.e + ||e||^2`` into one matmul per chunk of
rows; ``||r||^2`` is the same for every code and is left out of the argmin. Chunking bounds the
``rows x K`` distance matrix, which at K=16384 would otherwise dominate memory. By default a chunk holds
``CHUNK_ELEMENTS`` scores (16 MiB): 256 rows at K=16384, which also keeps the argmin pass in cache (1.7x
faster than 4096-row chunks on CPU), and a small book in one chunk (no per-chunk Python overhead).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    quantized: Tensor  # (..., dim): sum over depths, straight-through to the input
    codes: Tensor  # (..., depth) int64
    partial_sums: Tensor  # (..., depth, dim): sum of the code vectors up to and including each depth
    commitment_loss: Tensor  # mean over depths of ||z - sg(partial sum)||^2
    codebook_loss: Tensor  # learned update: mean over depths of ||sg(r_k) - e||^2; zero for EMA
    usage: Tensor  # (depth,): fraction of the codebook used in this batch
    perplexity: Tensor  # (depth,): exp(entropy) of the code distribution in this batch


CHUNK_ELEMENTS = 1 << 22


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled for ``device_type``; nothing to disable where autocast does not exist (meta)."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


def nearest_codes(x: Tensor, book: Tensor, chunk_size: int | None = None) -> Tensor:
    """Index of the nearest row of ``book`` (K, d) for each row of ``x`` (N, d), in float32 chunks of
    ``chunk_size`` rows (default: as many as fit ``CHUNK_ELEMENTS`` scores).

    Autocast is switched off here: under bf16 autocast ``addmm`` would score in bf16 (3 significant
    digits), and near-ties between codes would be decided by rounding.
    """
    chunk_size = chunk_size or max(1, CHUNK_ELEMENTS // book.shape[0])
    x, book = x.float(), book.float()
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    with _autocast_off(x.device.type):
        book_sq = book.pow(2).sum(1)
        for start in range(0, x.shape[0], chunk_size):
            rows = x[start : start + chunk_size]
            scores = torch.addmm(book_sq, rows, book.t(), beta=1.0, alpha=-2.0)  # ||e||^2 - 2 r.e
            out[start : start + chunk_size] = scores.argmin(1)
    return out


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to squared distance."""
    n = x.shape[0]
    if n < k:  # not enough distinct vectors: repeat them, jittered so the codes are not identical
        reps = x[torch.randint(n, (k - n,), generator=generator, device=x.device)]
        noise = torch.randn(reps.shape, generator=generator, device=x.device) * x.std().clamp_min(1e-6) * 0.01
        return torch.cat([x, reps + noise])
    centres = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centres[0] = x[torch.randint(n, (1,), generator=generator, device=x.device)]
    closest = (x - centres[0]).pow(2).sum(1)
    for i in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point coincides with a centre: take random points for the rest
            centres[i:] = x[torch.randint(n, (k - i,), generator=generator, device=x.device)]
            break
        pick = torch.multinomial(closest / total, 1, generator=generator)
        centres[i] = x[pick]
        closest = torch.minimum(closest, (x - centres[i]).pow(2).sum(1))
    return centres


class ResidualQuantizer(nn.Module):
    def __init__(
        self,
        dim: int,
        codebook_size: int,
        depth: int,
        shared_codebook: bool = True,
        update: Literal["ema", "learned"] = "ema",
        decay: float = 0.99,
        eps: float = 1e-5,
        init: Literal["kmeans++", "sample"] = "kmeans++",
        restart_threshold: float = 1.0,
        chunk_size: int | None = None,
        ema_updates: Literal["depth", "step"] = "depth",
    ) -> None:
        super().__init__()
        if update not in ("ema", "learned"):
            raise ValueError(f"update must be 'ema' or 'learned', got {update!r}")
        if ema_updates not in ("depth", "step"):
            raise ValueError(f"ema_updates must be 'depth' or 'step', got {ema_updates!r}")
        if init not in ("kmeans++", "sample"):
            raise ValueError(f"init must be 'kmeans++' or 'sample', got {init!r}")
        self.dim, self.codebook_size, self.depth = dim, codebook_size, depth
        self.shared_codebook, self.update, self.init = shared_codebook, update, init
        self.decay, self.eps, self.restart_threshold, self.chunk_size = decay, eps, restart_threshold, chunk_size
        self.ema_updates = ema_updates
        books = 1 if shared_codebook else depth
        initial = torch.randn(books, codebook_size, dim) / math.sqrt(dim)
        if update == "learned":
            self.codebooks = nn.Parameter(initial)
        else:
            self.register_buffer("codebooks", initial)
        # EMA state (also kept in learned mode: it drives dead-code detection there too).
        self.register_buffer("cluster_size", torch.ones(books, codebook_size))
        self.register_buffer("embed_sum", initial.clone())
        self.register_buffer("initialized", torch.tensor(False))
        # EMA updates done. It seeds the dead-code restarts and, being a buffer, is checkpointed with the model.
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def book_index(self, depth: int) -> int:
        return 0 if self.shared_codebook else depth

    # --------------------------------------------------------------------------------------- codes
    def embed_codes(self, codes: Tensor) -> Tensor:
        """(..., depth) codes -> (..., dim): the sum over depths of their code vectors."""
        return self.partial_sums(codes)[..., -1, :]

    def partial_sums(self, codes: Tensor) -> Tensor:
        """(..., depth) codes -> (..., depth, dim) cumulative sums of code vectors over depth."""
        vectors = [F.embedding(codes[..., k], self.codebooks[self.book_index(k)]) for k in range(codes.shape[-1])]
        return torch.stack(vectors, dim=-2).cumsum(dim=-2)

    @torch.no_grad()
    def quantize(self, z: Tensor) -> Tensor:
        """Codes only (..., dim) -> (..., depth): no losses, no statistics, no codebook updates."""
        residual = z.reshape(-1, self.dim).float()
        codes = []
        for k in range(self.depth):
            book = self.codebooks[self.book_index(k)].float()
            idx = nearest_codes(residual, book, self.chunk_size)
            residual = residual - book[idx]
            codes.append(idx)
        return torch.stack(codes, dim=-1).reshape(*z.shape[:-1], self.depth)

    # --------------------------------------------------------------------------------------- forward
    def forward(self, z: Tensor) -> QuantizerOutput:
        shape = z.shape
        if shape[-1] != self.dim:
            raise ValueError(f"expected last dimension {self.dim}, got {tuple(shape)}")
        x = z.reshape(-1, self.dim).float()
        if self.training and not bool(self.initialized):
            self._initialise(x.detach())
        residual = x.detach()
        total = torch.zeros_like(x)
        codes, partials, inputs = [], [], []
        commitment = x.new_zeros(())
        codebook_loss = x.new_zeros(())
        for k in range(self.depth):
            idx = nearest_codes(residual, self.codebooks[self.book_index(k)].detach(), self.chunk_size)
            if self.training and self.ema_updates == "depth":  # the vector chosen is the updated one
                self._update_codebooks(idx[:, None], [residual], first_depth=k)
            book = self.codebooks[self.book_index(k)]
            chosen = F.embedding(idx, book)
            if self.update == "learned":
                codebook_loss = codebook_loss + F.mse_loss(chosen, residual)
            inputs.append(residual)
            total = total + chosen
            commitment = commitment + F.mse_loss(x, total.detach())
            residual = residual - chosen.detach()
            codes.append(idx)
            partials.append(total)
        codes_t = torch.stack(codes, dim=-1)
        if self.training and self.ema_updates == "step":
            self._update_codebooks(codes_t, inputs)
        quantized = x + (total - x).detach()  # straight-through: d quantized / d z = identity
        usage, perplexity = self._statistics(codes_t)
        return QuantizerOutput(
            quantized=quantized.reshape(shape).to(z.dtype),
            codes=codes_t.reshape(*shape[:-1], self.depth),
            partial_sums=torch.stack(partials, dim=-2).reshape(*shape[:-1], self.depth, self.dim),
            commitment_loss=commitment / self.depth,
            codebook_loss=codebook_loss / self.depth,
            usage=usage,
            perplexity=perplexity,
        )

    # --------------------------------------------------------------------------------------- training
    @torch.no_grad()
    def _initialise(self, x: Tensor) -> None:
        """Codebooks from the first batch. A shared book takes an equal share of centres per depth."""
        generator = torch.Generator(device=x.device).manual_seed(0)
        pick = (lambda v, k: kmeans_plus_plus(v, k, generator)) if self.init == "kmeans++" else (
            lambda v, k: v[torch.randint(v.shape[0], (k,), generator=generator, device=v.device)])
        residual = x
        if self.shared_codebook:
            shares = [self.codebook_size // self.depth] * self.depth
            shares[-1] += self.codebook_size - sum(shares)
            centres: list[Tensor] = []
            for share in shares:
                centres.append(pick(residual, share))
                book = torch.cat(centres)
                residual = residual - book[nearest_codes(residual, book, self.chunk_size)]
            books = torch.cat(centres)[None]
        else:
            per_depth = []
            for _ in range(self.depth):
                book = pick(residual, self.codebook_size)
                per_depth.append(book)
                residual = residual - book[nearest_codes(residual, book, self.chunk_size)]
            books = torch.stack(per_depth)
        if _distributed():
            dist.broadcast(books, src=0)  # one codebook for every rank
        self.codebooks.data.copy_(books)
        self.embed_sum.copy_(books)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update_codebooks(self, codes: Tensor, inputs: list[Tensor], first_depth: int = 0) -> None:
        """One EMA update of the books that depths ``first_depth, ...`` (one column of ``codes`` and one input
        each) use, from their assignments; then the restarts of those books' dead codes."""
        depth_books = [self.book_index(first_depth + j) for j in range(len(inputs))]
        books = sorted(set(depth_books))
        counts = torch.zeros(len(books), self.codebook_size, device=codes.device)
        sums = torch.zeros(len(books), self.codebook_size, self.dim, device=codes.device)
        for j, (b, residual) in enumerate(zip(depth_books, inputs, strict=True)):
            row = books.index(b)
            counts[row].index_add_(0, codes[:, j], torch.ones_like(codes[:, j], dtype=counts.dtype))
            sums[row].index_add_(0, codes[:, j], residual)
        if _distributed():  # every rank applies the same update from the global statistics
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.updates.add_(1)
        for row, b in enumerate(books):
            self.cluster_size[b].mul_(self.decay).add_(counts[row], alpha=1 - self.decay)
            self.embed_sum[b].mul_(self.decay).add_(sums[row], alpha=1 - self.decay)
            if self.update == "ema":
                n = self.cluster_size[b].sum()
                smoothed = (self.cluster_size[b] + self.eps) / (n + self.codebook_size * self.eps) * n
                self.codebooks.data[b] = self.embed_sum[b] / smoothed.unsqueeze(-1)
        pools = {b: torch.cat([r for r, rb in zip(inputs, depth_books, strict=True) if rb == b]) for b in books}
        self._restart_dead_codes(pools)

    @torch.no_grad()
    def _restart_dead_codes(self, pools: dict[int, Tensor]) -> None:
        """Codes of each book whose EMA count fell below the threshold take a random vector of the inputs
        assigned from that book (``pools``). The draw is seeded by the update count, not the global RNG: a resumed
        run restarts the same codes with the same vectors as the uninterrupted one, whatever else drew random
        numbers in between (a data loader starting, say)."""
        generator = None
        for b, pool in pools.items():
            dead = self.cluster_size[b] < self.restart_threshold
            n_dead = int(dead.sum())
            if n_dead == 0:
                continue
            if generator is None:
                generator = torch.Generator(pool.device).manual_seed(int(self.updates))
            fresh = pool[torch.randint(pool.shape[0], (n_dead,), device=pool.device, generator=generator)]
            if _distributed():
                dist.broadcast(fresh, src=0)
            self.codebooks.data[b, dead] = fresh
            self.embed_sum[b, dead] = fresh
            self.cluster_size[b, dead] = 1.0

    @torch.no_grad()
    def _statistics(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        usage, perplexity = [], []
        for k in range(self.depth):
            hist = codes.new_zeros(self.codebook_size, dtype=torch.float32).index_add_(
                0, codes[:, k], codes.new_ones(codes.shape[0], dtype=torch.float32))  # bincount has no meta kernel
            p = hist / hist.sum().clamp_min(1)
            usage.append((hist > 0).float().mean())
            perplexity.append(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
        return torch.stack(usage), torch.stack(perplexity)
