"""The teacher as an application: train the demo SigLIP (or load a pretrained one), evaluate, save, log.

Output ``models/teacher/`` (SigLIP ``save_pretrained`` + its tokenizer + ``teacher.json`` identity) and
``metrics/teacher.json``: zero-shot accuracy on the val attributes and image-text retrieval R@1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from dualtoken.application import CurveLog, log_final_metrics, setup_process, tracked, write_metrics
from dualtoken.config import Config
from dualtoken.data.curated import corpus_digest, iter_metas, read_images
from dualtoken.data.shards import split_shards
from dualtoken.models.teacher import checkpoint_digest, load_teacher, new_teacher, scratch_config, vision_config_of
from dualtoken.schema import ConfigError
from dualtoken.storage import location, save_folder_atomically
from dualtoken.text import train_bpe
from dualtoken.tracking import log_dataset, run_url
from dualtoken.training.distributed import shutdown_distributed
from dualtoken.training.teacher import evaluate_teacher, train_teacher

STAGE = "teacher"


def _scratch(cfg: Config, console: Console, ctx: Any, identity: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    t = cfg.teacher
    train = split_shards(cfg.curated(t.input), "train", cfg.storage)
    captions = (c for m in iter_metas([s.url for s in train], cfg.storage, t.text.bpe_samples) for c in m["captions"])
    tokenizer = train_bpe(captions, vocab_size=t.text.vocab_size)
    try:
        config = scratch_config(vision_config_of(t.architecture), len(tokenizer), t.text.max_length, t.text.hidden_size,
                                t.text.intermediate_size, t.text.layers, t.text.heads, tokenizer.pad_token_id)
    except ValueError as err:
        raise ConfigError(f"teacher.architecture: {err}") from None
    model = new_teacher(config, t.batch_size // ctx.world)
    console.print(f"\\[teacher] training a SigLIP from scratch: {sum(p.numel() for p in model.parameters()):,} "
                  f"parameters, {sum(s.samples for s in train)} images, {t.steps} steps of {t.batch_size}")
    t0 = time.perf_counter()
    losses = train_teacher(t, model, tokenizer, train, ctx, cfg.seed, identity, console,
                           CurveLog("train") if ctx.is_main else None, storage=cfg.storage)
    info = {"source": "scratch", "train_seconds": round(time.perf_counter() - t0, 1), "steps": t.steps,
            "final_loss": losses[-1] if losses else None}
    return model, tokenizer, info


def main(cfg: Config, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True, soft_wrap=True)
    t = cfg.teacher
    ctx = setup_process(t.runtime, cfg.seed)
    try:
        curated = cfg.curated(t.input)
        data = corpus_digest(curated, cfg.storage)
        identity = {"teacher": t.training_identity(), "seed": cfg.seed, "data": data,
                    "grad_accum": t.runtime.grad_accum}
        with tracked(STAGE, cfg, ("seed", "teacher"), ctx) as run:
            if run is not None:
                log_dataset("curated", location(curated), data, context="training")
            if t.pretrained:
                model, tokenizer = load_teacher(t.pretrained)
                info = {"source": "pretrained", "path": str(Path(t.pretrained).resolve()),
                        "sha256": checkpoint_digest(t.pretrained)}
                console.print(f"\\[teacher] using pretrained {info['path']} (sha256 {info['sha256'][:16]}...)")
            else:
                model, tokenizer, info = _scratch(cfg, console, ctx, identity)
            if not ctx.is_main:
                return info
            val = read_images(curated, "val", t.eval_images, cfg.storage)
            max_length = model.config.text_config.max_position_embeddings
            metrics = {**evaluate_teacher(model, tokenizer, val, max_length, t.eval_batch_size, ctx.device), **info}

            def write(folder: Path) -> None:
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)
                stable = {k: v for k, v in info.items() if k not in ("train_seconds", "final_loss")}
                (folder / "teacher.json").write_text(json.dumps({**stable, "data": data}, indent=1))

            out = save_folder_atomically(t.output_dir, write)
            write_metrics(t.metrics_path, metrics)
            log_final_metrics(metrics, step=t.steps)
            import mlflow

            mlflow.log_artifact(t.metrics_path, artifact_path="teacher")
            mlflow.log_dict(info, "teacher/identity.json")
            url = run_url(cfg.tracking, run.info.run_id)
        zs = metrics["zero_shot"]
        console.print(
            f"[bold green]teacher done[/] ({info['source']}): zero-shot "
            + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in zs.items())
            + f"; R@1 i->t {metrics['retrieval_r1']['image_to_text']:.3f}, "
            f"t->i {metrics['retrieval_r1']['text_to_image']:.3f}\n"
            f"  model:   {out}\n  metrics: {t.metrics_path}\n  MLflow:  {url}")
        return metrics
    finally:
        shutdown_distributed()
