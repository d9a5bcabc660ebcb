"""MLLM training: the selected phases one after another, each a DeepSpeed engine over the parts it trains.

Each phase freezes what it does not train (``projector``, ``llm``, ``heads``), builds AdamW + warm-up/cosine
at its own learning rate and a DeepSpeed engine (ZeRO stage, micro batch, accumulation, clipping and bf16
from params), and runs its steps on sequences streamed from the token shards (``dualtoken.data.sequences``:
one stream per task and data-parallel stream, seeded by the phase). Losses are normalised by the step's
global target counts (text tokens, generated positions), so the update does not depend on how the batch is
split over ranks and accumulation steps. Checkpoints (DeepSpeed's own format: module, partitioned optimizer,
scheduler, plus each rank's loader position) are tagged ``NN-phase-SSSSSSSS``; a rerun after a kill
continues from the newest one with exactly the batches and losses the uninterrupted run would have had.

DeepSpeed loads its checkpoints with ``torch.load`` (pickle): only point ``work_dir`` at checkpoints this
trainer wrote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dualtoken.data.loader import StreamLoader, StreamSpec
from dualtoken.data.sequences import SequenceBuilder, TokenSampleDecoder, bucket, stream_task_counts
from dualtoken.data.shards import Shard
from dualtoken.data.stream import StreamOrder, derived_seed, stream_ids
from dualtoken.data.tokens import TokenLayout
from dualtoken.models.mllm import DualTokenMLLM
from dualtoken.storage import StorageConfig, atomic_write
from dualtoken.training import deepspeed_engine as ds
from dualtoken.training.checkpoint import claim_checkpoint_folder
from dualtoken.training.config import OptimConfig
from dualtoken.training.distributed import DistContext
from dualtoken.training.engine import apply_activation_checkpointing, resolve_precision
from dualtoken.training.mllm_config import MllmConfig, MllmPhase
from dualtoken.training.preemption import StopRequest, leave_if_asked, stop_on_signal
from dualtoken.training.rank_data import loader_settings, micro_batch
from dualtoken.training.schedule import build_optimizer

Sink = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TokenSource:
    """What the MLLM trains on: the token corpus' training shards, their code layout and the text tokenizer."""

    shards: list[Shard]
    layout: TokenLayout
    tokenizer: Any
    storage: StorageConfig | None = None

    @property
    def positions(self) -> int:
        return self.layout.grid[0] * self.layout.grid[1]


@dataclass
class PhaseData:
    """One phase's loader over the rank's task streams and how many sequences each stream gives per step."""

    loader: StreamLoader
    counts: dict[int, dict[str, int]]  # this rank's stream -> task -> sequences per step
    builder: SequenceBuilder

    @classmethod
    def open(cls, cfg: MllmConfig, source: TokenSource, ctx: DistContext, seed: int, phase: MllmPhase
             ) -> PhaseData:
        accum = cfg.runtime.grad_accum
        streams = ctx.world * accum
        per_stream = stream_task_counts(phase.tasks, streams, phase_micro_batch(cfg, phase, ctx.world))
        sizes = [s.samples for s in source.shards]
        orders = {task: StreamOrder(sizes, streams, derived_seed(seed, phase.name, task), cfg.shuffle_buffer,
                                    name=f"{phase.name}/{task}") for task in phase.tasks if phase.tasks[task] > 0}
        mine = {k: per_stream[k] for k in stream_ids(ctx.rank, ctx.world, accum)}
        specs = [StreamSpec(f"{task}/{k}", orders[task], k, draw_seed=orders[task].seed,
                            require="has_qa" if task == "vqa" else None)
                 for k, tasks in mine.items() for task in tasks]
        decoder = TokenSampleDecoder(source.layout, source.tokenizer, cfg.max_text_tokens, cfg.vqa_turns)
        loader = StreamLoader(source.shards, decoder, specs, loader_settings(cfg.runtime, ctx), source.storage)
        return cls(loader, mine, SequenceBuilder(source.tokenizer, source.positions))

    def step_sequences(self, prompt_dropout: float) -> list[Any]:
        """This rank's sequences of the next step, every stream's share of every task."""
        out = []
        for k, tasks in self.counts.items():
            for task, n in tasks.items():
                samples = self.loader.take(f"{task}/{k}", n)
                out += [self.builder.build(task, samples, i, prompt_dropout) for i in range(n)]
        return out


def _loader_file(folder: Path, tag: str, rank: int) -> Path:
    return folder / tag / f"loader-rank{rank}.json"


@dataclass(frozen=True)
class Position:
    phase: int  # index into the selected phases
    step: int  # optimizer steps done in that phase

    @property
    def tag(self) -> str:
        return f"{self.phase:02d}-step{self.step:08d}"

    @classmethod
    def parse(cls, tag: str) -> Position:
        phase, step = tag.split("-step")
        return cls(int(phase), int(step))


def phase_micro_batch(cfg: MllmConfig, phase: MllmPhase, world: int) -> int:
    """Sequences per process and micro step in ``phase``; an uneven split is an error naming the key."""
    key = f"mllm.phases.{phase.name}" if phase.batch_size else "mllm"
    return micro_batch(cfg.phase_batch(phase), world, cfg.runtime.grad_accum, key)


def freeze_for(model: DualTokenMLLM, phase: MllmPhase) -> int:
    """Trainable parameters of the phase (count): those of any part it trains (a parameter may belong to two
    parts); everything else frozen."""
    groups = model.parameter_groups()
    trained = {id(p): p for part in phase.train for p in groups[part]}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    return sum(p.numel() for p in trained.values())


def train_mllm(cfg: MllmConfig, model: DualTokenMLLM, source: TokenSource, ctx: DistContext, seed: int,
               identity: dict, console: Console, sink: Sink | None = None) -> list[dict[str, float]]:
    """Run the selected phases; returns every logged row (rank 0's view, averaged over ranks).

    ``identity`` names what else a checkpoint depends on (seed, corpus, tokenizer); the training config,
    process count and accumulation are added here."""
    runtime = cfg.runtime
    precision = resolve_precision(runtime.precision, ctx.device)
    for phase in cfg.selected_phases():  # an uneven split is an error before anything runs
        phase_micro_batch(cfg, phase, ctx.world)
    training = cfg.model_dump(mode="json", exclude={"runtime", "eval", "register_as", "output_dir", "metrics_path",
                                                    "work_dir"})
    folder = claim_checkpoint_folder(cfg.work_dir, console.print, ctx, {
        **identity, "mllm": training, "world": ctx.world, "grad_accum": runtime.grad_accum})
    tag = ds.latest_tag(folder)
    resume = Position.parse(tag) if tag else None
    if resume and ctx.is_main:
        console.print(f"\\[mllm] resuming from {folder / tag}")
    model.to(ctx.device)
    apply_activation_checkpointing(model, runtime, ctx.device)
    phases = cfg.selected_phases()
    rows: list[dict[str, float]] = []
    done_before = 0
    with stop_on_signal() as stop:
        for index, phase in enumerate(phases):
            if resume and index < resume.phase:
                done_before += phase.steps
                continue
            resumes_here = resume is not None and index == resume.phase
            start = resume.step if resumes_here else 0
            # A checkpoint at the end of a phase still has to be loaded (zero steps left): it holds the weights
            # the next phase, or the saved model, starts from.
            if start < phase.steps or resumes_here:
                rows += _run_phase(cfg, model, source, ctx, seed, index, phase, start, done_before, folder,
                                   precision, phase_micro_batch(cfg, phase, ctx.world),
                                   tag if resumes_here else None, console, sink, stop)
            done_before += phase.steps
    model.requires_grad_(True)
    return rows


def _run_phase(cfg: MllmConfig, model: DualTokenMLLM, source: TokenSource, ctx: DistContext, seed: int,
               index: int, phase: MllmPhase, start: int, offset: int, folder: Path, precision: str, micro: int,
               resume_tag: str | None, console: Console, sink: Sink | None, stop: StopRequest
               ) -> list[dict[str, float]]:
    runtime = cfg.runtime
    trainable = freeze_for(model, phase)
    optim = OptimConfig(lr=phase.lr, **cfg.optim.model_dump())
    optimizer, scheduler = build_optimizer([{"params": model.parameters()}], optim, phase.steps)
    if ctx.is_main:
        console.print(f"\\[mllm] phase {index + 1} '{phase.name}': {phase.steps} steps at lr {phase.lr:g}, training "
                      f"{'+'.join(phase.train)} ({trainable:,} parameters), tasks {phase.tasks}, ZeRO "
                      f"{cfg.zero_stage}, {ctx.world} process(es) on {ctx.device}, {precision}")
    config = ds.engine_config(micro, runtime.grad_accum, ctx.world, optim.grad_clip, cfg.zero_stage, precision)
    data = PhaseData.open(cfg, source, ctx, seed, phase)
    with ds.running_engine(model, optimizer, scheduler, config, ctx) as engine, data.loader:
        if resume_tag:
            engine.load_checkpoint(str(folder), tag=resume_tag, load_module_strict=True)
            data.loader.load_state_dict(json.loads(_loader_file(folder, resume_tag, ctx.rank).read_text()))
        return _phase_steps(cfg, engine, data, ctx, index, phase, range(start, phase.steps), offset, folder, console,
                            sink, stop)


def _step_denominators(ctx: DistContext, batches: list[Any]) -> tuple[float, float]:
    """Per micro batch, what its summed losses are divided by: the step's global text-target and visual-target
    counts over (ranks x micro batches), which DeepSpeed's averaging then undoes."""
    local = torch.tensor([sum(b.text_targets for b in batches), sum(b.visual_target_positions for b in batches)],
                         dtype=torch.float64, device=ctx.device)
    total = ctx.mean(local) * ctx.world
    share = ctx.world * len(batches)
    return max(float(total[0]), 1.0) / share, max(float(total[1]), 1.0) / share


def _phase_steps(cfg: MllmConfig, engine: Any, data: PhaseData, ctx: DistContext, index: int, phase: MllmPhase,
                 steps: range, offset: int, folder: Path, console: Console, sink: Sink | None, stop: StopRequest
                 ) -> list[dict[str, float]]:
    runtime = cfg.runtime
    rows, tokens, t0 = [], 0, time.perf_counter()

    def save(done: int) -> None:
        tag = Position(index, done).tag
        with atomic_write(_loader_file(folder, tag, ctx.rank), "w") as handle:  # before `latest` names the tag
            json.dump(data.loader.state_dict(), handle)
        engine.save_checkpoint(str(folder), tag=tag)
        if ctx.is_main:
            ds.prune_checkpoints(folder, runtime.keep_checkpoints)
        ctx.barrier()

    # only the losses this phase's tasks can produce are logged (the same keys on every rank)
    has_text = any(phase.tasks.get(t, 0) > 0 for t in ("caption", "vqa"))
    has_visual = phase.tasks.get("t2i", 0) > 0
    for step in steps:
        micro_batches = [data.builder.collate(b) for b in
                         bucket(data.step_sequences(cfg.prompt_dropout), runtime.grad_accum)]
        text_denominator, visual_denominator = _step_denominators(ctx, micro_batches)
        sums: dict[str, float] = {}
        for batch in micro_batches:
            inputs = batch.to(ctx.device)
            out = engine(**inputs.model_inputs(), text_weight=cfg.text_loss_weight,
                         visual_weight=cfg.visual_loss_weight, text_denominator=text_denominator,
                         visual_denominator=visual_denominator)
            engine.backward(out.loss)
            engine.step()  # DeepSpeed applies the update at the accumulation boundary
            tokens += inputs.tokens
            terms = {"loss": out.loss, **({"text_loss": out.text_loss} if has_text else {}),
                     **(out.visual_losses if has_visual else {})}
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / runtime.grad_accum
        done = step + 1
        if done % runtime.log_every == 0 or done == phase.steps:
            rows.append(_log_row(ctx, sums, tokens, t0, engine, offset + done, phase, console, sink))
            tokens, t0 = 0, time.perf_counter()
        leave_if_asked(stop, ctx, done, phase.steps, save, f"mllm phase '{phase.name}'")
        if done % runtime.checkpoint_every == 0 or done == phase.steps:
            save(done)
    return rows


def _log_row(ctx: DistContext, sums: dict[str, float], tokens: int, t0: float, engine: Any, step: int, phase: MllmPhase,
             console: Console, sink: Sink | None) -> dict[str, float]:
    keys = sorted(sums)
    averaged = ctx.mean(torch.tensor([sums[k] for k in keys], dtype=torch.float64)).tolist()
    row = dict(zip(keys, averaged, strict=True))
    row["tokens_per_s"] = ctx.reduce_number(tokens) / max(time.perf_counter() - t0, 1e-9)
    row["lr"] = float(engine.get_lr()[0])
    if ctx.is_main:
        visual = [v for k, v in row.items() if "." in k]
        parts = (f" text {row['text_loss']:.4f}" if "text_loss" in row else "") + (
            f" visual {sum(visual):.4f}" if visual else "")
        console.print(f"\\[mllm] {phase.name} step {step}: loss {row['loss']:.4f}{parts} lr {row['lr']:.3g} "
                      f"{row['tokens_per_s']:.0f} tokens/s")
        if sink is not None:
            sink(step, row)
    return row
