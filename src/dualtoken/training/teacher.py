"""Training the demo teacher: a tiny SigLIP (image + text towers) from scratch with the sigmoid loss.

Each step pairs every image with one of its captions, chosen by the sample's draw (a function of seed,
epoch and key, so a resumed run pairs the same ones) and tokenised in the loader's workers. Pairs whose
captions are identical count as positives, not negatives: short template captions repeat across images.
Each process computes the loss over its own batch. The demo adds attribute heads (``TeacherObjective``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from transformers import PreTrainedTokenizerBase, SiglipModel

from dualtoken.data.curated import CuratedDecoder, CuratedSplit, model_images, to_model_input
from dualtoken.data.shards import Shard
from dualtoken.metrics.zeroshot import TASKS, attribute_targets, embed_in_batches, retrieval_r1, zero_shot
from dualtoken.models.teacher import image_embedder, text_embedder, tokenize
from dualtoken.storage import StorageConfig
from dualtoken.training.checkpoint import open_checkpoints
from dualtoken.training.config import TeacherConfig
from dualtoken.training.distributed import DistContext
from dualtoken.training.engine import Engine, StepLog, apply_activation_checkpointing
from dualtoken.training.preemption import leave_if_asked, stop_on_signal
from dualtoken.training.rank_data import micro_batch, rank_loader
from dualtoken.training.schedule import build_optimizer


def sigmoid_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss; a pair is positive when its two captions are the same text."""
    logits = F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).t()
    logits = logits * logit_scale.exp() + logit_bias
    same = (input_ids[:, None, :] == input_ids[None, :, :]).all(-1)
    signs = same.float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum(-1).mean()


class TeacherObjective(nn.Module):
    """The sigmoid loss, plus (``attribute_loss`` > 0) one linear head per attribute of ``TASKS`` that classifies
    both the image and the caption embedding of each pair.

    The heads exist for the demo: a SigLIP trained from scratch for a few hundred steps learns colour from the
    sigmoid loss alone but not shape (benchmarks/demo_sweep.py). One head per attribute shared by the two towers
    gives every image and every caption a direct signal towards the same class prototypes, the facts that the
    captions state. The heads are dropped after training: the teacher that is saved is a plain SigLIP.
    """

    def __init__(self, model: SiglipModel, attribute_loss: float) -> None:
        super().__init__()
        self.model, self.attribute_loss = model, attribute_loss
        width = model.config.vision_config.hidden_size
        self.heads = nn.ModuleList([nn.Linear(width, len(t.classes)) for t in TASKS]) if attribute_loss else None

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, targets: torch.Tensor | None = None
                ) -> torch.Tensor:
        out = self.model(input_ids=input_ids, pixel_values=pixel_values)
        loss = sigmoid_loss(out.image_embeds, out.text_embeds, self.model.logit_scale, self.model.logit_bias,
                            input_ids)
        if self.heads is None or targets is None:
            return loss
        for head, target in zip(self.heads, targets.t(), strict=True):
            labelled = (target >= 0).sum().clamp(min=1)  # every head stays in the graph (DDP needs each gradient)
            for embeds in (out.vision_model_output.pooler_output, out.text_model_output.pooler_output):
                ce = F.cross_entropy(head(embeds), target, ignore_index=-100, reduction="sum")
                loss = loss + self.attribute_loss * ce / labelled
        return loss


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
    objective = TeacherObjective(model, cfg.attribute_loss).to(ctx.device)
    decoder = CuratedDecoder(caption_ids=functools.partial(tokenize, tokenizer, max_length=cfg.text.max_length),
                             targets=attribute_targets if objective.heads is not None else None)
    loader, streams = rank_loader(train, decoder, seed, cfg.shuffle_buffer, ctx, rt, storage)
    optimizer, scheduler = build_optimizer([{"params": objective.parameters()}], cfg.optim, cfg.steps)
    engine = Engine(objective, optimizer, scheduler, ctx, rt.grad_accum, cfg.optim.grad_clip, rt.precision)
    modules = {"model": model} if objective.heads is None else {"model": model, "heads": objective.heads}
    ckpt = open_checkpoints(cfg.work_dir, console.print, ctx, rt.keep_checkpoints, {**identity, "world": ctx.world})
    start = 0
    if (latest := ckpt.latest()) is not None:
        start, state = ckpt.load(latest, modules, {"optimizer": optimizer}, {"scheduler": scheduler})
        loader.load_state_dict(state["loader"])
        console.print(f"\\[teacher] resumed from {latest} (step {start}/{cfg.steps})")
    log = StepLog("teacher", cfg.steps, rt.log_every, console, ctx, sink)
    losses = []

    def save(done: int) -> None:
        ckpt.save(done, modules, {"optimizer": optimizer}, {"scheduler": scheduler}, {"loader": loader.state_dict()})

    with loader, stop_on_signal() as stop:
        for step in range(start, cfg.steps):
            total = 0.0
            for m in range(rt.grad_accum):
                batch = loader.take(streams[m], micro)
                ids = batch["caption_ids"].to(ctx.device, non_blocking=True)
                pixels = model_images(batch["image"], ctx.device)
                targets = batch["targets"].to(ctx.device) if "targets" in batch else None
                with engine.micro_step(m), engine.autocast():
                    loss = engine.model(ids, pixels, targets)
                    engine.backward(loss)
                total += loss.item() / rt.grad_accum
            grad_norm = engine.step()
            losses.append(total)
            log(step + 1, cfg.batch_size // ctx.world, {"loss": total, "lr": engine.lr, "grad_norm": grad_norm,
                                                        "temperature": model.logit_scale.exp().item()})
            leave_if_asked(stop, ctx, step + 1, cfg.steps, save, "teacher")
            if (step + 1) % rt.checkpoint_every == 0 and step + 1 < cfg.steps:
                save(step + 1)
    return losses
