"""One variant of the conflict ablation: train it with the shared budget, measure it on the evaluation split.

Output ``models/ablation/<variant>/`` (the model and ``preview.png``: originals above reconstructions) and
``metrics/ablation/<variant>.json``: reconstruction (PSNR, SSIM, the Fréchet distance named by its features),
zero-shot through the teacher, the teacher with this variant's quantizer, and the variant's semantic path,
code usage. The ``evaluate`` stage assembles the table; MLflow gets one run per variant (``ablation@<variant>``)
with the same metric keys, so the MLflow UI compares them side by side.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console

from dualtoken.application import CurveLog, log_final_metrics, setup_process, tracked, write_metrics
from dualtoken.config import Config
from dualtoken.data.curated import corpus_digest, iter_image_batches, read_images
from dualtoken.data.shards import split_shards
from dualtoken.evaluation.ablation import VARIANTS, variant_config
from dualtoken.evaluation.features import feature_extractor
from dualtoken.evaluation.tokenizer import measure_tokenizer, reconstruct_split, zero_shot_tasks
from dualtoken.metrics.reconstruction import image_grid
from dualtoken.models.configuration import named_config
from dualtoken.models.teacher import checkpoint_digest, load_teacher
from dualtoken.schema import ConfigError
from dualtoken.storage import save_folder_atomically
from dualtoken.training.distributed import shutdown_distributed
from dualtoken.training.tokenizer import build_tokenizer_model, train_tokenizer

PREVIEW_IMAGES = 8


def main(cfg: Config, variant: str, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True, soft_wrap=True)
    if variant not in VARIANTS:
        raise ConfigError(f"ablation variant {variant!r} unknown; known: {sorted(VARIANTS)}")
    if variant not in cfg.ablation.variants:
        raise ConfigError(f"ablation.variants: {variant!r} is not selected ({cfg.ablation.variants})")
    try:
        base = named_config(cfg.tokenizer.architecture, **cfg.tokenizer.overrides)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"tokenizer.overrides: {err}") from None
    t = variant_config(cfg.tokenizer, cfg.ablation, variant, base)
    cfg_v = cfg.model_copy(update={"tokenizer": t})
    tasks = zero_shot_tasks(cfg.evaluate)  # a bad class-names or templates file fails before training, not after
    ctx = setup_process(t.runtime, cfg.seed)
    try:
        if not (Path(cfg.teacher.output_dir) / "config.json").is_file():
            raise FileNotFoundError(f"no teacher in {cfg.teacher.output_dir}: run the teacher stage first")
        teacher, text_tokenizer = load_teacher(cfg.teacher.output_dir)
        e = cfg.evaluate
        extractor = feature_extractor(e.inception_weights, teacher, ctx.device, e.fid.resize)  # as early
        model = build_tokenizer_model(t, teacher.vision_model)
        curated = cfg.curated(t.input)
        data = corpus_digest(curated, cfg.storage)
        identity = {"tokenizer": t.training_identity(), "seed": cfg.seed,
                    "data": data, "teacher": checkpoint_digest(cfg.teacher.output_dir), "variant": variant}
        train = split_shards(curated, "train", cfg.storage)
        held_out = read_images(curated, cfg.evaluate.split, cfg.evaluate.images, cfg.storage)
        with tracked(f"ablation@{variant}", cfg_v, ("seed", "tokenizer", "ablation"), ctx):
            semantic = t.losses.stage_1
            console.print(f"\\[ablation] {VARIANTS[variant].row}: {t.steps} steps of {t.batch_size}, overrides "
                          f"{t.overrides or '{}'}, semantic losses x{semantic.semantic_tap}/{semantic.semantic_pooled}")
            t0 = time.perf_counter()
            curve = CurveLog("train")
            train_tokenizer(t, model, teacher.vision_model, train, ctx, cfg.seed, identity, console,
                            sink=curve if ctx.is_main else None, storage=cfg.storage)
            train_seconds = time.perf_counter() - t0
            if not ctx.is_main:
                return {}
            batches = iter_image_batches(curated, e.split, e.batch_size, e.fid.images, cfg.storage)
            metrics = measure_tokenizer(model.eval(), teacher.to(ctx.device).eval(), text_tokenizer, held_out,
                                        batches, e, extractor, ctx.device, tasks)[0]
            metrics.update({"variant": variant, "row": VARIANTS[variant].row, "steps": t.steps,
                            "batch_size": t.batch_size, "train_seconds": round(train_seconds, 1),
                            "overrides": t.overrides, "split": cfg.evaluate.split})
            recon = reconstruct_split(model, held_out.images[:PREVIEW_IMAGES], PREVIEW_IMAGES, ctx.device)

            def save(folder: Path) -> None:
                model.save_pretrained(folder)
                grid = image_grid([recon.images, recon.reconstructions]).numpy()
                Image.fromarray(grid).save(folder / "preview.png")

            out = save_folder_atomically(t.output_dir, save)
            write_metrics(t.metrics_path, metrics)
            import mlflow

            mlflow.set_tag("dualtoken.variant", variant)
            log_final_metrics(metrics, step=t.steps)
            mlflow.log_artifact(t.metrics_path, artifact_path="ablation")
            mlflow.log_artifact(str(out / "preview.png"), artifact_path="ablation")
        rec = metrics["reconstruction"]
        console.print(f"[bold green]ablation {variant} done[/] in {train_seconds:.0f} s: PSNR {rec['psnr']:.2f} dB, "
                      f"SSIM {rec['ssim']:.3f}, {rec['fd_name']} {rec[rec['fd_name']]:.3f}\n"
                      f"  model:   {out}\n  metrics: {t.metrics_path}")
        return metrics
    finally:
        shutdown_distributed()

