"""Metrics of a trained tokenizer on a split: reconstruction (PSNR, SSIM, LPIPS, a Fréchet distance), zero-shot
accuracy through the teacher, the teacher with the tokenizer's semantic quantizer at its tap, and the
tokenizer's own semantic path, and codebook usage / perplexity per depth.

Ground truth is the centre-cropped uint8 images the tokenizer saw, at its native input resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedTokenizerBase, SiglipModel

from dualtoken.data.curated import CuratedSplit, from_model_output, to_model_input
from dualtoken.evaluation.distance import frechet_distance
from dualtoken.evaluation.features import FeatureExtractor
from dualtoken.metrics.reconstruction import psnr, ssim
from dualtoken.metrics.zeroshot import embed_in_batches, zero_shot
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.teacher import image_embedder, text_embedder
from dualtoken.tokenization.stats import code_statistics, depth_histogram

PROTOCOL = "uint8 centre-cropped inputs at the tokenizer's native resolution vs decoded pixel codes"


def codebook_usage(codes: torch.Tensor, codebook_size: int, shared: bool) -> dict[str, Any]:
    """Fraction of entries chosen at least once, per depth and overall (any depth for a shared book)."""
    flat = codes.reshape(-1, codes.shape[-1])
    used = torch.zeros(flat.shape[1], codebook_size, dtype=torch.bool)
    used.scatter_(1, flat.t().cpu(), True)
    per_depth = used.float().mean(1)
    overall = used.any(0).float().mean() if shared else per_depth.mean()
    return {"overall": float(overall), "per_depth": [round(float(u), 4) for u in per_depth]}


@dataclass
class Reconstructed:
    images: Tensor  # uint8 (N, 3, H, W): what went in
    reconstructions: Tensor  # uint8, decoded from the pixel codes
    pixel: Tensor  # (N, h, w, depth) codes
    semantic: Tensor


@torch.no_grad()
def reconstruct_split(model: DualTokenModel, images: Tensor, batch_size: int, device: torch.device) -> Reconstructed:
    recon, pixel, semantic = [], [], []
    for i in range(0, len(images), batch_size):
        codes = model.encode(to_model_input(images[i : i + batch_size]).to(device))
        recon.append(from_model_output(model.decode(codes.pixel).cpu()))
        pixel.append(codes.pixel.cpu())
        semantic.append(codes.semantic.cpu())
    return Reconstructed(images, torch.cat(recon), torch.cat(pixel), torch.cat(semantic))


@torch.no_grad()
def reconstruction_quality(r: Reconstructed, extractor: FeatureExtractor | None, batch_size: int,
                           lpips: torch.nn.Module | None = None) -> dict[str, Any]:
    """PSNR / SSIM means, the Fréchet distance named by its extractor, and LPIPS when its weights were given."""
    out: dict[str, Any] = {"psnr": float(psnr(r.images, r.reconstructions).mean()),
                           "ssim": float(ssim(r.images, r.reconstructions).mean()), "protocol": PROTOCOL}
    if extractor is not None:
        out[extractor.name] = frechet_distance(extractor.features(r.images, batch_size),
                                               extractor.features(r.reconstructions, batch_size))
        out["fd_name"], out["fd_features"] = extractor.name, extractor.protocol
    if lpips is not None:
        device = next(lpips.parameters()).device
        total = 0.0
        for i in range(0, len(r.images), batch_size):
            a, b = (to_model_input(x[i : i + batch_size]).to(device) for x in (r.images, r.reconstructions))
            total += float(lpips(a, b)) * len(a)  # LPIPS returns the batch mean
        out["lpips"] = total / len(r.images)
    return out


def code_usage(model: DualTokenModel, r: Reconstructed) -> dict[str, Any]:
    """Usage, entropy and perplexity per depth of both streams (one stream when there is one codebook)."""
    cfg = model.config
    streams = {"semantic": (r.semantic, cfg.semantic_codebook_size)}
    if not cfg.single_codebook:
        streams["pixel"] = (r.pixel, cfg.pixel_codebook_size)
    return code_statistics({s: depth_histogram(codes.numpy(), size) for s, (codes, size) in streams.items()})


@torch.no_grad()
def teacher_quantized_embedding(teacher: SiglipModel, model: DualTokenModel, pixel_values: Tensor) -> Tensor:
    """The teacher's pooled embedding with its own features at the semantic tap replaced by the tokenizer's
    quantized version of them: the quantizer inside the teacher's tower. (A stage-1 tokenizer also fine-tunes
    the layers below the tap, so its quantizer here sees features it was not trained on.)"""
    tower, layer = teacher.vision_model, model.config.layer_semantic
    hidden = tower.embeddings(pixel_values)
    for block in tower.encoder.layers[:layer]:
        hidden = block(hidden, attention_mask=None)
    codes = model.semantic_quantizer.quantize(model._grid(model.semantic_down(hidden.to(model.dtype))))
    vectors = model.semantic_quantizer.embed_codes(codes).reshape(hidden.shape[0], -1, model.semantic_quantizer.dim)
    hidden = model.semantic_up(vectors.to(model.dtype)).to(hidden.dtype)
    for block in tower.encoder.layers[layer:]:
        hidden = block(hidden, attention_mask=None)
    return tower.head(tower.post_layernorm(hidden))


@torch.no_grad()
def zero_shot_paths(model: DualTokenModel, teacher: SiglipModel, tokenizer: PreTrainedTokenizerBase,
                    split: CuratedSplit, batch_size: int, device: torch.device) -> dict[str, dict[str, float]]:
    """task -> accuracy through the continuous teacher, the teacher with quantized features, the tokenizer."""
    embed_texts = text_embedder(teacher, tokenizer, teacher.config.text_config.max_position_embeddings, device)
    paths = {"teacher": lambda x: image_embedder(teacher)(x),
             "teacher_quantized": lambda x: teacher_quantized_embedding(teacher, model, x),
             "tokenizer": model.semantic_embedding}
    results = {name: zero_shot(embed_in_batches(lambda x, f=fn: f(to_model_input(x).to(device)), split.images,
                                                batch_size), split.meta, embed_texts)
               for name, fn in paths.items()}
    return {task: {name: results[name][task]["accuracy"] for name in paths} | {"images": r["images"]}
            for task, r in results["teacher"].items()}


@torch.no_grad()
def evaluate_tokenizer(model: DualTokenModel, teacher: SiglipModel, tokenizer: PreTrainedTokenizerBase,
                       val: CuratedSplit, batch_size: int, device: torch.device) -> dict[str, Any]:
    """What the tokenizer stage records: PSNR, SSIM, zero-shot quantized vs teacher, usage."""
    was_training = model.training
    model.eval()
    teacher.eval()
    r = reconstruct_split(model, val.images, batch_size, device)
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
        "psnr": float(psnr(r.images, r.reconstructions).mean()),
        "ssim": float(ssim(r.images, r.reconstructions).mean()),
        "zero_shot": {task: {"quantized": q["accuracy"], "teacher": zs_teacher[task]["accuracy"],
                             "ratio": q["accuracy"] / max(zs_teacher[task]["accuracy"], 1e-9), "images": q["images"]}
                      for task, q in zs_quantized.items()},
        "semantic_cosine_to_teacher": float(F.cosine_similarity(quantized, continuous, dim=-1).mean()),
        "usage": {"pixel": codebook_usage(r.pixel, cfg.pixel_codebook_size, cfg.shared_codebook),
                  "semantic": codebook_usage(r.semantic, cfg.semantic_codebook_size, cfg.shared_codebook)},
        "val_images": len(val),
    }
