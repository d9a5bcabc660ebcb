"""Training the demo teacher: a tiny SigLIP (image + text towers) from scratch with the sigmoid loss.

Each step pairs every image with one of its captions, chosen by the sample's draw (a function of seed,
epoch and key, so a resumed run pairs the same ones) and tokenised in the loader's workers. Pairs whose
captions are identical count as positives, not negatives: short template captions repeat across images.
Each process computes the loss over its own batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from transformers import PreTrainedTokenizerBase, SiglipModel

from dualtoken.config import StorageConfig, TeacherConfig
from dualtoken.data.curated import CuratedDecoder, CuratedSplit, model_images, to_model_input
from dualtoken.data.shards import Shard
from dualtoken.evaluation.zeroshot import embed_in_batches, retrieval_r1, zero_shot
from dualtoken.models.teacher import image_embedder, text_embedder, tokenize
from dualtoken.training.distributed import DistContext
from dualtoken.training.engine import Engine
from dualtoken.training.run import (
    StepLog,
    apply_activation_checkpointing,
    build_optimizer,
    micro_batch,
    open_checkpoints,
    rank_loader,
)


def sigmoid_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss; a pair is positive when its two captions are the same text."""
    logits = F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).t()
    logits = logits * logit_scale.exp() + logit_bias
    same = (input_ids[:, None, :] == input_ids[None, :, :]).all(-1)
    signs = same.float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum(-1).mean()


@torch.no_grad()
def evaluate_teacher(model: SiglipModel, tokenizer: PreTrainedTokenizerBase, val: CuratedSplit, max_length: int,
                     batch_size: int, device: torch.device) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    images = embed_in_batches(lambda x: image_embedder(model)(to_model_input(x.to(device))), val.images, batch_size)
    embed_texts = text_embedder(model, tokenizer, max_length, device)
    captions = [m["captions"][0] for m in val.meta]
    texts = F.normalize(embed_texts(captions).float(), dim=-1)
    metrics = {"zero_shot": zero_shot(images, val.meta, embed_texts),
               "retrieval_r1": retrieval_r1(images, texts, captions)}
    model.train(was_training)
    return metrics


def train_teacher(cfg: TeacherConfig, model: SiglipModel, tokenizer: PreTrainedTokenizerBase, train: list[Shard],
                  ctx: DistContext, seed: int, identity: dict[str, Any], console: Console,
                  sink: Callable[[int, dict[str, float]], None] | None = None,
                  storage: StorageConfig | None = None) -> list[float]:
    """Train in place on the ``train`` shards, resuming from ``cfg.work_dir`` when a matching checkpoint exists;
    returns step losses."""
    rt = cfg.runtime
    micro = micro_batch(cfg.batch_size, ctx.world, rt.grad_accum, "teacher")
    model.to(ctx.device).train()
    apply_activation_checkpointing(model, rt, ctx.device)
    decoder = CuratedDecoder(caption_ids=functools.partial(tokenize, tokenizer, max_length=cfg.text.max_length))
    loader, streams = rank_loader(train, decoder, seed, cfg.shuffle_buffer, ctx, rt, storage)
    optimizer, scheduler = build_optimizer([{"params": model.parameters()}], cfg.optim, cfg.steps)
    engine = Engine(model, optimizer, scheduler, ctx, rt.grad_accum, cfg.optim.grad_clip, rt.precision)
    ckpt = open_checkpoints(cfg.work_dir, console.print, ctx, rt.keep_checkpoints, {**identity, "world": ctx.world})
    start = 0
    if (latest := ckpt.latest()) is not None:
        start, state = ckpt.load(latest, {"model": model}, {"optimizer": optimizer}, {"scheduler": scheduler})
        loader.load_state_dict(state["loader"])
        console.print(f"\\[teacher] resumed from {latest} (step {start}/{cfg.steps})")
    log = StepLog("teacher", cfg.steps, rt.log_every, console, ctx, sink)
    losses = []
    with loader:
        for step in range(start, cfg.steps):
            total = 0.0
            for m in range(rt.grad_accum):
                batch = loader.take(streams[m], micro)
                ids = batch["caption_ids"].to(ctx.device, non_blocking=True)
                pixels = model_images(batch["image"], ctx.device)
                with engine.micro_step(m), engine.autocast():
                    out = engine.model(input_ids=ids, pixel_values=pixels)
                    loss = sigmoid_loss(out.image_embeds, out.text_embeds, model.logit_scale, model.logit_bias, ids)
                    engine.backward(loss)
                total += loss.item() / rt.grad_accum
            grad_norm = engine.step()
            losses.append(total)
            log(step + 1, cfg.batch_size // ctx.world, {"loss": total, "lr": engine.lr, "grad_norm": grad_norm,
                                                        "temperature": model.logit_scale.exp().item()})
            if (step + 1) % rt.checkpoint_every == 0 and step + 1 < cfg.steps:
                ckpt.save(step + 1, {"model": model}, {"optimizer": optimizer}, {"scheduler": scheduler},
                          {"loader": loader.state_dict()})
    return losses
