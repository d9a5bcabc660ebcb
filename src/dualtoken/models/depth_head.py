"""The MLLM's visual parts: code embeddings of a residual quantizer, and the depth-transformer head that
predicts one position's residual codes depth by depth (RQ-Transformer style), plus the sampler both use.

A depth head sees the LLM hidden state at depth 1 and, at depth d, the sum of the embeddings of the codes
chosen at depths < d; a small causal transformer runs over the depth axis and one classifier per depth
reads its output. Training is teacher-forced over all depths at once; sampling runs depth by depth.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CodeEmbedding(nn.Module):
    """Per-depth code vectors of one residual quantizer: ``books`` tables (one shared or one per depth)."""

    def __init__(self, books: int, codebook_size: int, dim: int, depth: int) -> None:
        super().__init__()
        if depth % books and books != 1:
            raise ValueError(f"{books} codebooks cannot serve {depth} depths: use 1 (shared) or one per depth")
        self.weight = nn.Parameter(torch.randn(books, codebook_size, dim) * dim**-0.5)
        self.depth = depth  # no buffer: from_pretrained leaves non-persistent buffers uninitialised

    def forward(self, codes: Tensor) -> Tensor:
        """(..., d) codes (d <= depth, depths 1..d) -> (..., d, dim) code vectors, one gather.

        An embedding lookup into the flattened tables rather than ``weight[books, codes]``: the backward of
        advanced indexing accumulates repeated codes in a thread-dependent order on CPU, so two identical runs
        would train different weights; the embedding's backward is deterministic."""
        books, codebook_size = self.weight.shape[:2]
        offsets = torch.arange(codes.shape[-1], device=codes.device) % books * codebook_size
        return F.embedding(codes + offsets, self.weight.flatten(0, 1))

    def summed(self, codes: Tensor) -> Tensor:
        """(..., depth) -> (..., dim): the quantized vector those codes stand for."""
        return self(codes).sum(-2)

    @torch.no_grad()
    def copy_codebooks(self, codebooks: Tensor, lift: bool = False) -> None:
        """The quantizer's code vectors; with ``lift``, into a wider table through fixed orthonormal columns, so
        that the table starts with the codebooks' geometry (every inner product, hence every residual sum's)."""
        books, size, dim = self.weight.shape
        if lift and codebooks.shape[:2] == (books, size) and codebooks.shape[2] < dim:
            columns = torch.linalg.qr(torch.randn(dim, codebooks.shape[2], generator=torch.Generator().manual_seed(0),
                                                  dtype=torch.float64)).Q
            codebooks = codebooks.double() @ columns.T.to(codebooks.device)
        if codebooks.shape != self.weight.shape:
            raise ValueError(f"codebooks of shape {tuple(codebooks.shape)} do not fit {tuple(self.weight.shape)}")
        self.weight.copy_(codebooks)


class DepthHead(nn.Module):
    """LLM hidden state -> logits for every residual depth of one stream (pixel or semantic)."""

    def __init__(self, llm_width: int, width: int, layers: int, heads: int, embedding: CodeEmbedding) -> None:
        super().__init__()
        depth, codebook_size, code_dim = embedding.depth, embedding.weight.shape[1], embedding.weight.shape[2]
        self.embedding = embedding
        self.mlp = nn.Sequential(nn.Linear(llm_width, width), nn.GELU(), nn.Linear(width, width))
        self.code_in = nn.Linear(code_dim, width)
        self.depth_position = nn.Parameter(torch.zeros(depth, width))
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.classifiers = nn.Parameter(torch.randn(depth, width, codebook_size) * width**-0.5)

    @property
    def depth(self) -> int:
        return self.classifiers.shape[0]

    def _logits(self, hidden: Tensor, prefix: Tensor) -> Tensor:
        """hidden (M, llm_width), prefix codes (M, d-1) -> logits (M, d, codebook) for depths 1..d."""
        steps = [self.mlp(hidden).unsqueeze(1)]
        if prefix.shape[-1]:
            steps.append(self.code_in(self.embedding(prefix).cumsum(-2)))
        x = torch.cat(steps, 1)
        d = x.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(d, device=x.device, dtype=x.dtype)
        x = self.transformer(x + self.depth_position[:d], mask=causal, is_causal=True)
        return torch.einsum("mdw,dwk->mdk", self.norm(x), self.classifiers[:d])

    def forward(self, hidden: Tensor, codes: Tensor) -> Tensor:
        """Teacher forcing: hidden (M, llm_width), target codes (M, depth) -> logits (M, depth, codebook)."""
        return self._logits(hidden, codes[:, :-1])

    @torch.no_grad()
    def sample(self, hidden: Tensor, pick: Callable[[Tensor], Tensor]) -> Tensor:
        """Codes (M, depth), depth by depth; ``pick`` turns the last depth's logits (M, K) into codes (M,).

        ``pick`` sees every row, so it can mix rows (classifier-free guidance pairs a prompt with its
        unconditional twin and must return the same code for both).
        """
        codes = hidden.new_zeros((hidden.shape[0], 0), dtype=torch.long)
        for _ in range(self.depth):
            logits = self._logits(hidden, codes)[:, -1].float()
            codes = torch.cat([codes, pick(logits).unsqueeze(1)], 1)
        return codes


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits outside the top-k and outside the smallest set with probability >= top-p set to -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """One index per row; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
