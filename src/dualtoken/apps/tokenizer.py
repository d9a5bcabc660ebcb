"""The tokenizer as an application: build from the teacher, train, evaluate, save, log and register.

Output ``models/tokenizer/`` (``save_pretrained``: config, weights with codebooks and EMA state) and
``metrics/tokenizer.json``: val PSNR and SSIM, zero-shot accuracy through the quantized semantic path next
to the teacher's, and codebook usage. MLflow gets step losses, usage per depth, reconstruction grids and
the model, registered as ``tokenizer.register_as``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dualtoken.application import CurveLog, log_final_metrics, setup_process, tracked, write_metrics
from dualtoken.config import Config
from dualtoken.data.curated import corpus_digest, read_images
from dualtoken.data.shards import split_shards
from dualtoken.evaluation.tokenizer import evaluate_tokenizer
from dualtoken.models.teacher import checkpoint_digest, load_teacher
from dualtoken.storage import location, save_folder_atomically
from dualtoken.tracking import log_dataset, run_url
from dualtoken.training.distributed import shutdown_distributed
from dualtoken.training.tokenizer import build_tokenizer_model, reconstruction_grid, train_tokenizer

STAGE = "tokenizer"
PREVIEW_IMAGES = 8


def main(cfg: Config, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True, soft_wrap=True)
    t = cfg.tokenizer
    ctx = setup_process(t.runtime, cfg.seed)
    try:
        if not (Path(cfg.teacher.output_dir) / "config.json").is_file():
            raise FileNotFoundError(f"no teacher in {cfg.teacher.output_dir}: run the teacher stage first "
                                    "(dvc repro teacher)")
        teacher, text_tokenizer = load_teacher(cfg.teacher.output_dir)
        model = build_tokenizer_model(cfg.tokenizer, teacher.vision_model)
        curated = cfg.curated(t.input)
        data = corpus_digest(curated, cfg.storage)
        identity = {"tokenizer": t.training_identity(),
                    "seed": cfg.seed, "data": data, "teacher": checkpoint_digest(cfg.teacher.output_dir),
                    "grad_accum": t.runtime.grad_accum}
        train = split_shards(curated, "train", cfg.storage)
        val = read_images(curated, "val", t.eval_images, cfg.storage)
        preview = val.images[:PREVIEW_IMAGES]
        with tracked(STAGE, cfg, ("seed", "tokenizer"), ctx) as run:
            if run is not None:
                import mlflow

                log_dataset("curated", location(curated), data, context="training")
                mlflow.set_tag("dualtoken.teacher_sha256", identity["teacher"])
                mlflow.log_dict(model.config.to_dict(), "tokenizer/config.json")
            sizes = {name: sum(p.numel() for p in module.parameters()) for name, module in
                     (("tower", model.vision), ("decoder", model.decoder), ("all", model))}
            console.print(f"\\[tokenizer] stage {t.stage}, {sizes['all']:,} parameters (tower {sizes['tower']:,}, "
                          f"decoder {sizes['decoder']:,}), {sum(s.samples for s in train)} images in {len(train)} "
                          f"shards, {t.steps} steps of {t.batch_size}, {ctx.world} process(es) on {ctx.device}")

            def log_grid(step: int, grid: torch.Tensor) -> None:
                import mlflow

                mlflow.log_image(grid.numpy(), key="reconstructions", step=step)

            t0 = time.perf_counter()
            curve = CurveLog("train")
            losses = train_tokenizer(t, model, teacher.vision_model, train, ctx, cfg.seed, identity, console,
                                     sink=curve if ctx.is_main else None, preview=preview,
                                     on_images=log_grid if ctx.is_main else None, storage=cfg.storage)
            train_seconds = time.perf_counter() - t0
            if not ctx.is_main:
                return {}
            metrics = evaluate_tokenizer(model, teacher, text_tokenizer, val, t.eval_batch_size, ctx.device)
            metrics.update({"train_seconds": round(train_seconds, 1), "steps": t.steps, "stage": t.stage,
                            "final_loss": losses[-1] if losses else None})
            out = save_folder_atomically(t.output_dir, model.save_pretrained)
            write_metrics(t.metrics_path, metrics)
            curve.write_csv(t.plots_path)
            import mlflow

            log_final_metrics(metrics, step=t.steps)
            log_grid(t.steps, reconstruction_grid(model, preview, ctx.device))
            mlflow.log_artifact(t.metrics_path, artifact_path="tokenizer")
            from dualtoken.serving.registry import log_tokenizer

            model_uri = log_tokenizer(out, t.register_as)
            url = run_url(cfg.tracking, run.info.run_id)
        zs = metrics["zero_shot"]
        console.print(
            f"[bold green]tokenizer done[/]: val PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}; zero-shot "
            "quantized/teacher " + ", ".join(f"{k} {v['quantized']:.3f}/{v['teacher']:.3f}" for k, v in zs.items())
            + f"; usage pixel {metrics['usage']['pixel']['overall']:.0%}, "
            f"semantic {metrics['usage']['semantic']['overall']:.0%}\n"
            f"  model:    {out}\n  metrics:  {t.metrics_path}\n  MLflow:   {url}\n  logged:   {model_uri}"
            + (f" (registered as {t.register_as})" if t.register_as else ""))
        return metrics
    finally:
        shutdown_distributed()
