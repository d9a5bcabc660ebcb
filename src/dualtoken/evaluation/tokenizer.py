"""Validation metrics of a trained tokenizer: reconstruction (PSNR, SSIM), zero-shot accuracy through
the quantized semantic path next to the teacher's continuous one, and codebook usage on val codes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase, SiglipModel

from dualtoken.data.curated import CuratedSplit, from_model_output, to_model_input
from dualtoken.evaluation.reconstruction import psnr, ssim
from dualtoken.evaluation.zeroshot import embed_in_batches, zero_shot
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.teacher import image_embedder, text_embedder


def codebook_usage(codes: torch.Tensor, codebook_size: int, shared: bool) -> dict[str, Any]:
    """Fraction of entries chosen at least once, per depth and overall (any depth for a shared book)."""
    flat = codes.reshape(-1, codes.shape[-1])
    used = torch.zeros(flat.shape[1], codebook_size, dtype=torch.bool)
    used.scatter_(1, flat.t().cpu(), True)
    per_depth = used.float().mean(1)
    overall = used.any(0).float().mean() if shared else per_depth.mean()
    return {"overall": float(overall), "per_depth": [round(float(u), 4) for u in per_depth]}


@torch.no_grad()
def evaluate_tokenizer(model: DualTokenModel, teacher: SiglipModel, tokenizer: PreTrainedTokenizerBase,
                       val: CuratedSplit, batch_size: int, device: torch.device) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    teacher.eval()
    psnrs, ssims, pixel_codes, semantic_codes = [], [], [], []
    for i in range(0, len(val), batch_size):
        images = val.images[i : i + batch_size]
        codes = model.encode(to_model_input(images).to(device))
        recon = from_model_output(model.decode(codes.pixel).cpu())
        psnrs.append(psnr(images, recon))
        ssims.append(ssim(images, recon))
        pixel_codes.append(codes.pixel.cpu())
        semantic_codes.append(codes.semantic.cpu())
    cfg = model.config
    max_length = teacher.config.text_config.max_position_embeddings
    embed_texts = text_embedder(teacher, tokenizer, max_length, device)
    quantized = embed_in_batches(lambda x: model.semantic_embedding(to_model_input(x).to(device)), val.images,
                                 batch_size)
    continuous = embed_in_batches(lambda x: image_embedder(teacher)(to_model_input(x).to(device)), val.images,
                                  batch_size)
    zs_quantized = zero_shot(quantized, val.meta, embed_texts)
    zs_teacher = zero_shot(continuous, val.meta, embed_texts)
    model.train(was_training)
    return {
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
        "zero_shot": {task: {"quantized": r["accuracy"], "teacher": zs_teacher[task]["accuracy"],
                             "ratio": r["accuracy"] / max(zs_teacher[task]["accuracy"], 1e-9), "images": r["images"]}
                      for task, r in zs_quantized.items()},
        "semantic_cosine_to_teacher": float(F.cosine_similarity(quantized, continuous, dim=-1).mean()),
        "usage": {"pixel": codebook_usage(torch.cat(pixel_codes), cfg.pixel_codebook_size, cfg.shared_codebook),
                  "semantic": codebook_usage(torch.cat(semantic_codes), cfg.semantic_codebook_size,
                                             cfg.shared_codebook)},
        "val_images": len(val),
    }
