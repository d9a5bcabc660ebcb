"""Named shapes of the unified MLLM: the causal LM (its transformers config when built from the shape) and the
visual parts around it.

The paper's MLLM is Qwen2.5-3B (and 7B) with, per stream, a 2-layer GeLU projector from the LM's hidden
state into a 3-layer depth transformer and one classifier per residual depth, "258M parameters" per head (the
paper's appendix; it gives no width). At width 1408 (11 heads of 128) our head has 260.8M parameters with the
384-px tokenizer's 8 depths of 16,384 codes, so that is the paper shapes' width. The input side reads the
paper's "16M VQ embedding" (16,384 x 1024) as 1024-d input code tables per stream, whose concatenation (2048) the
paper's 2048 -> 2048 projector takes in; the heads keep the tokenizer's code vectors. The LM shapes are the
released Qwen2.5 configs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MllmShape:
    model_type: str  # transformers architecture of the LM
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    max_positions: int
    rope_theta: float
    tie_word_embeddings: bool
    projector_hidden: int  # the input projector's hidden width
    head_width: int  # the depth transformers' width
    head_layers: int
    head_heads: int
    input_code_dim: int | None  # the input code tables' width; None: the tokenizer's code vectors themselves

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads}) and heads "
                             f"by kv_heads ({self.kv_heads})")
        if self.head_width % self.head_heads:
            raise ValueError(f"head_width ({self.head_width}) must be divisible by head_heads ({self.head_heads})")

    def llm_config(self, vocab_size: int) -> dict[str, Any]:
        """``AutoConfig.for_model`` keyword arguments of an LM of this shape."""
        return {"model_type": self.model_type, "hidden_size": self.hidden_size, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "intermediate_size": self.intermediate_size, "max_position_embeddings": self.max_positions,
                "rope_theta": self.rope_theta, "tie_word_embeddings": self.tie_word_embeddings,
                "vocab_size": vocab_size}

    def visual(self) -> dict[str, int]:
        """``DualTokenMLLMConfig`` keyword arguments of the projector and the depth heads."""
        return {"projector_hidden": self.projector_hidden, "head_width": self.head_width,
                "head_layers": self.head_layers, "head_heads": self.head_heads, "input_code_dim": self.input_code_dim}


_PAPER_VISUAL = {"projector_hidden": 2048, "head_width": 1408, "head_layers": 3, "head_heads": 11,
                 "input_code_dim": 1024}

SHAPES = {
    # the demo's: a 4-layer LM 256 wide, heads half as wide and 2 layers deep (docs/demo.md)
    "demo": MllmShape("qwen2", 256, 4, 4, 2, 704, 256, 10_000.0, True, projector_hidden=512, head_width=128,
                      head_layers=2, head_heads=4, input_code_dim=None),
    "qwen2.5-0.5b": MllmShape("qwen2", 896, 24, 14, 2, 4864, 32_768, 1_000_000.0, True, **_PAPER_VISUAL),
    "qwen2.5-3b": MllmShape("qwen2", 2048, 36, 16, 2, 11_008, 32_768, 1_000_000.0, True, **_PAPER_VISUAL),
    "qwen2.5-7b": MllmShape("qwen2", 3584, 28, 28, 4, 18_944, 131_072, 1_000_000.0, False, **_PAPER_VISUAL),
}


def named_shape(name: str, **overrides: Any) -> MllmShape:
    """A named shape with some fields replaced; an unknown name or key, or a shape that does not fit, is a
    ``ValueError`` saying which."""
    if name not in SHAPES:
        raise ValueError(f"unknown MLLM architecture {name!r}; named: {', '.join(SHAPES)}")
    fields = {f.name for f in dataclasses.fields(MllmShape)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown MLLM shape keys {unknown}; keys: {', '.join(sorted(fields))}")
    return dataclasses.replace(SHAPES[name], **overrides)
