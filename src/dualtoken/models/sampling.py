"""How codes and tokens are sampled from the MLLM (``models.mllm_generation``).
"""

from __future__ import annotations

from pydantic import Field

from dualtoken.schema import Strict


class SamplingConfig(Strict):
    temperature: float = Field(1.0, ge=0.0, description="0: greedy")
    top_k: int = Field(0, ge=0, description="0: off")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    cfg_scale: float = Field(3.0, ge=0.0, description="classifier-free guidance; 1: conditional logits only")
