"""Inference with the MLLM: answering about an image (the LM's ``generate``) and generating an image's
codes position by position, depth by depth, with temperature / top-k / top-p and classifier-free guidance.

Guidance pairs every prompt with an unconditional twin (``<s> <image_gen_start>``, what the model saw for
dropped prompts) and samples from ``cond + (scale - 1) * (cond - uncond)``: at scale 1 exactly the
conditional logits. Both rows of a pair always receive the same sampled code.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dualtoken.data.sequences import Vocab, generation_prefix, image_prefix
from dualtoken.models.depth_head import sample_logits
from dualtoken.models.mllm import DualTokenMLLM
from dualtoken.models.sampling import SamplingConfig


def _left_pad(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = torch.tensor(r)
        mask[i, length - len(r):] = 1
    return ids, mask


@torch.no_grad()
def answer(model: DualTokenMLLM, tokenizer: Any, semantic: Tensor, pixel: Tensor, prompts: list[str],
           max_new_tokens: int = 32) -> list[str]:
    """Greedy answers: image codes (B, h, w, depth) per stream + one prompt per image."""
    vocab, device = Vocab.of(tokenizer), model.device
    positions = semantic.shape[1] * semantic.shape[2]
    texts = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    ids, mask = _left_pad([image_prefix(vocab, positions) + t for t in texts], vocab.pad)
    embeds = model.embed(ids.to(device), semantic.reshape(-1, semantic.shape[-1]).to(device),
                         pixel.reshape(-1, pixel.shape[-1]).to(device))
    out = model.llm.generate(inputs_embeds=embeds, attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=vocab.eos, pad_token_id=vocab.pad)
    return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


def _cache_argument(model: DualTokenMLLM) -> str:
    """The decoder's KV-cache keyword: ``cache`` in transformers >= 5.24, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.llm.get_decoder().forward).parameters else "past_key_values"


def _decode_step(model: DualTokenMLLM, embeds: Tensor, mask: Tensor, positions: Tensor, cache: Any, name: str
                 ) -> tuple[Tensor, Any]:
    """Last position's hidden state and the updated KV cache (passed and returned as ``name``)."""
    out = model.hidden_states(embeds, mask, position_ids=positions, use_cache=True, **{name: cache})
    return out.last_hidden_state[:, -1], getattr(out, name)


@dataclass
class GeneratedCodes:
    semantic: Tensor  # (B, h, w, depth)
    pixel: Tensor


@torch.no_grad()
def generate_codes(model: DualTokenMLLM, tokenizer: Any, prompts: list[str], sampling: SamplingConfig,
                   guided: bool = True, generator: torch.Generator | None = None) -> GeneratedCodes:
    """Sample one image's codes per prompt. ``guided=False`` skips the unconditional rows entirely."""
    vocab, device = Vocab.of(tokenizer), model.device
    h, w = model.config.codes["grid"]
    texts = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    rows = [generation_prefix(vocab, t) for t in texts]
    n = len(rows)
    if guided:
        rows += [generation_prefix(vocab, [])] * n
    ids, mask = _left_pad(rows, vocab.pad)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    scale = sampling.cfg_scale

    def pick(logits: Tensor) -> Tensor:
        if guided:
            cond, uncond = logits[:n], logits[n:]
            chosen = sample_logits(cond + (scale - 1.0) * (cond - uncond), sampling.temperature, sampling.top_k,
                                   sampling.top_p, generator)
            return torch.cat([chosen, chosen])
        return sample_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)

    cache_name = _cache_argument(model)
    state, cache = _decode_step(model, model.embed(ids), mask, positions, None, cache_name)
    semantic, pixel = [], []
    for p in range(h * w):
        semantic.append(model.heads["semantic"].sample(state, pick))
        pixel.append(model.heads["pixel"].sample(state, pick))
        if p == h * w - 1:
            break
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], 1)
        positions = positions[:, -1:] + 1
        step_embeds = model.visual_embeddings(semantic[-1], pixel[-1]).unsqueeze(1)
        state, cache = _decode_step(model, step_embeds, mask, positions, cache, cache_name)

    def grid(codes: list[Tensor]) -> Tensor:
        return torch.stack(codes, 1)[:n].reshape(n, h, w, -1).cpu()

    return GeneratedCodes(grid(semantic), grid(pixel))
