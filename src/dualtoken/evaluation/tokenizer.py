"""Metrics of a trained tokenizer on a split: reconstruction (PSNR, SSIM, LPIPS; the Fréchet distance is
``evaluation.fid``'s), zero-shot accuracy and image-text retrieval through the teacher, the teacher with the
tokenizer's semantic quantizer at its tap, and the tokenizer's own semantic path, and codebook usage /
perplexity per depth.

Ground truth is the centre-cropped uint8 images the tokenizer saw, at its native input resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedTokenizerBase, SiglipModel

from dualtoken.data.curated import CuratedSplit, from_model_output, to_model_input
from dualtoken.evaluation.config import EvaluateConfig
from dualtoken.evaluation.features import FeatureExtractor
from dualtoken.evaluation.fid import reconstruction_fd
from dualtoken.metrics.prompts import read_classes, read_templates
from dualtoken.metrics.reconstruction import psnr, ssim
from dualtoken.metrics.zeroshot import TASKS, Task, embed_in_batches, labelled_task, retrieval_r1, zero_shot
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.teacher import image_embedder, text_embedder
from dualtoken.schema import ConfigError
from dualtoken.tokenization.stats import code_statistics, depth_histogram

TextEmbedder = Callable[[list[str]], Tensor]
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
def reconstruction_quality(r: Reconstructed, batch_size: int, lpips: torch.nn.Module | None = None
                           ) -> dict[str, Any]:
    """PSNR / SSIM means, and LPIPS when its weights were given."""
    out: dict[str, Any] = {"psnr": float(psnr(r.images, r.reconstructions).mean()),
                           "ssim": float(ssim(r.images, r.reconstructions).mean()), "protocol": PROTOCOL}
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


PATHS = ("teacher", "teacher_quantized", "tokenizer")  # the semantic paths every zero-shot row compares


def zero_shot_tasks(e: EvaluateConfig) -> tuple[Task, ...]:
    """The demo attribute tasks and the configured labelled-source ones; a file that is missing or malformed is
    an error naming its key."""
    tasks = list(TASKS)
    for i, t in enumerate(e.zero_shot):
        if t.name in {task.name for task in TASKS}:
            raise ConfigError(f"evaluate.zero_shot.{i}.name: {t.name!r} is a demo attribute task's name; the "
                              f"built-in tasks are {', '.join(task.name for task in TASKS)}")
        try:
            classes = read_classes(t.classes)
        except (OSError, ValueError) as err:
            raise ConfigError(f"evaluate.zero_shot.{i}.classes: {err}") from None
        try:
            templates = read_templates(t.templates)
        except (OSError, ValueError) as err:
            raise ConfigError(f"evaluate.zero_shot.{i}.templates: {err}") from None
        tasks.append(labelled_task(t.name, classes, templates, t.label_key, t.templates))
    return tuple(tasks)


@torch.no_grad()
def path_embeddings(model: DualTokenModel, teacher: SiglipModel, images: Tensor, batch_size: int,
                    device: torch.device) -> dict[str, Tensor]:
    """Unit image embeddings of uint8 ``images`` through the continuous teacher, the teacher with quantized
    features at the semantic tap, and the tokenizer's semantic path."""
    paths = {"teacher": lambda x: image_embedder(teacher)(x),
             "teacher_quantized": lambda x: teacher_quantized_embedding(teacher, model, x),
             "tokenizer": model.semantic_embedding}
    return {name: embed_in_batches(lambda x, f=paths[name]: f(to_model_input(x).to(device)), images, batch_size)
            for name in PATHS}


@torch.no_grad()
def zero_shot_paths(embeds: dict[str, Tensor], metas: list[dict[str, Any]], embed_texts: TextEmbedder,
                    tasks: Sequence[Task] = TASKS) -> dict[str, dict[str, Any]]:
    """task -> accuracy through each path, the images it was measured on and the prompts used."""
    results = {name: zero_shot(embeds[name], metas, embed_texts, tasks) for name in PATHS}
    by_name = {t.name: t for t in tasks}
    return {task: {name: results[name][task]["accuracy"] for name in PATHS}
            | {"images": r["images"], "classes": len(by_name[task].classes),
               "templates": f"{by_name[task].template_set} ({len(by_name[task].templates)})"}
            for task, r in results["teacher"].items()}


@torch.no_grad()
def retrieval_paths(embeds: dict[str, Tensor], metas: list[dict[str, Any]], embed_texts: TextEmbedder
                    ) -> dict[str, Any]:
    """Image-text R@1 both ways over the images that have a caption (its first), through the teacher and the
    tokenizer's semantic path; empty when fewer than two images have one."""
    rows = [i for i, m in enumerate(metas) if m.get("captions")]
    if len(rows) < 2:
        return {}
    captions = [metas[i]["captions"][0] for i in rows]
    texts = F.normalize(embed_texts(captions).float(), dim=-1)
    out: dict[str, Any] = {name: retrieval_r1(embeds[name][rows], texts, captions) for name in ("teacher",
                                                                                             "tokenizer")}
    out.update(pairs=len(rows), protocol=f"R@1 among {len(rows)} held-out image-caption pairs (each image's "
               "first caption; an identical caption of another image counts), SigLIP text tower")
    return out


@torch.no_grad()
def measure_tokenizer(model: DualTokenModel, teacher: SiglipModel, tokenizer: PreTrainedTokenizerBase,
                      held_out: CuratedSplit, batches: Iterable[Tensor], e: EvaluateConfig, extractor: FeatureExtractor,
                      device: torch.device, tasks: Sequence[Task] = TASKS, lpips: torch.nn.Module | None = None
                      ) -> tuple[dict[str, Any], Reconstructed]:
    """Everything the evaluate and ablation stages record about one tokenizer: reconstruction on
    ``held_out`` (and the Fréchet distance over ``batches``, the split streamed), zero-shot, retrieval and
    codes."""
    r = reconstruct_split(model, held_out.images, e.batch_size, device)
    embed_texts = text_embedder(teacher, tokenizer, teacher.config.text_config.max_position_embeddings, device)
    embeds = path_embeddings(model, teacher, held_out.images, e.batch_size, device)
    metrics = {"reconstruction": reconstruction_quality(r, e.batch_size, lpips)
               | reconstruction_fd(model, batches, extractor, e.fid, device),
               "zero_shot": zero_shot_paths(embeds, held_out.meta, embed_texts, tasks),
               "retrieval": retrieval_paths(embeds, held_out.meta, embed_texts) if e.retrieval else {},
               "codes": code_usage(model, r), "images": len(held_out)}
    return metrics, r


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
