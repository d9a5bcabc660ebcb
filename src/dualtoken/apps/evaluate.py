"""The evaluation stage: every trained model on the held-out split, one metrics file, one report.

Tokenizer: PSNR, SSIM, LPIPS (with its weights), a Fréchet distance over the split by the clean-fid protocol
(FID-inception with local Inception weights, else FD-teacher), zero-shot (the demo attributes and any
configured labelled source) and image-text R@1 through the teacher / the teacher with quantized features /
the tokenizer, code usage and perplexity per depth. MLLM: VQA exact match per type beside the majority
baseline, caption BLEU-4 and CIDEr-D, generated images (Fréchet distance to the real images of their
prompts, teacher zero-shot on the prompted shape / colour / count). The ablation table, when its
variants ran. When ``evaluate.champion_bars`` all hold, the registry alias ``champion`` moves to the
measured tokenizer and MLLM versions (the verdict is in the metrics). Outputs: ``metrics/evaluate.json``,
``reports/report.html`` (self-contained), ``reports/summary.md``, ``reports/ablation.{json,md}``,
``plots/evaluate/codes.csv``; all logged to MLflow.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dualtoken.application import log_final_metrics, setup_process, tracked, write_metrics
from dualtoken.config import Config
from dualtoken.data.curated import from_model_output, iter_image_batches, read_images
from dualtoken.data.tokens import check_layout, read_text_stats, read_token_split
from dualtoken.evaluation.ablation import ablation_table, table_markdown
from dualtoken.evaluation.bars import check_bars
from dualtoken.evaluation.features import feature_extractor
from dualtoken.evaluation.mllm import caption_quality, generation_quality, generation_rows, vqa_accuracy
from dualtoken.evaluation.report_content import Plots, build_report, summary_markdown
from dualtoken.evaluation.tokenizer import measure_tokenizer, zero_shot_tasks
from dualtoken.models.lpips import LPIPS
from dualtoken.models.mllm_generation import generate_codes
from dualtoken.models.teacher import checkpoint_digest, load_teacher
from dualtoken.schema import ConfigError
from dualtoken.serving.inference import load_mllm
from dualtoken.serving.registry import promote
from dualtoken.storage import atomic_write
from dualtoken.tracking import run_url
from dualtoken.training.config import ProcessConfig
from dualtoken.training.distributed import shutdown_distributed

STAGE = "evaluate"


def _require(path: str, what: str, stage: str) -> None:
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"no {what} in {path}: run the {stage} stage first (dvc repro {stage})")


def main(cfg: Config, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True, soft_wrap=True)
    e = cfg.evaluate
    ctx = setup_process(ProcessConfig(device=e.device, threads=e.threads), cfg.seed)
    try:
        for path, what, stage in ((cfg.teacher.output_dir, "teacher", "teacher"),
                                  (cfg.tokenizer.output_dir, "DualToken tokenizer", "tokenizer"),
                                  (cfg.mllm.output_dir, "MLLM", "mllm")):
            _require(path, what, stage)
        with tracked(STAGE, cfg, ("seed", "evaluate"), ctx) as run:
            t0 = time.perf_counter()
            metrics, assets = measure(cfg, ctx.device, console)
            if e.champion_bars:
                metrics["champion_bars"] = check_bars(metrics, e.champion_bars)
            metrics["eval_seconds"] = round(time.perf_counter() - t0, 1)
            out = Path(e.output_dir)
            report = build_report(metrics, assets, cfg.ablation, Plots(cfg.tokenizer.plots_path, cfg.mllm.plots_path,
                                                                 cfg.tokenize.usage_plot("png")))
            summary = summary_markdown(metrics)
            for name, text in (("report.html", report), ("summary.md", summary),
                               ("ablation.md", table_markdown(metrics["ablation"])),
                               ("ablation.json", json.dumps(metrics["ablation"], indent=2) + "\n")):
                with atomic_write(out / name, "w") as handle:
                    handle.write(text)
            write_codes_csv(metrics["tokenizer"]["codes"], Path(e.plots_dir) / "codes.csv")
            write_metrics(e.metrics_path, metrics)
            import mlflow

            log_final_metrics(metrics, step=0)
            for name in ("report.html", "summary.md", "ablation.md", "ablation.json"):
                mlflow.log_artifact(str(out / name), artifact_path="evaluate")
            mlflow.log_artifact(e.metrics_path, artifact_path="evaluate")
            champions = crown(cfg, metrics.get("champion_bars"), console)
            mlflow.set_tags({f"champion.{name}": uri for name, uri in champions.items()})
            url = run_url(cfg.tracking, run.info.run_id)
        console.print(f"[bold green]evaluate done[/] in {metrics['eval_seconds']:.0f} s\n{summary}"
                      f"  report:  {(out / 'report.html').resolve()}\n  metrics: {e.metrics_path}\n  MLflow:  {url}"
                      + "".join(f"\n  champion: {uri}" for uri in champions.values()))
        return metrics
    finally:
        shutdown_distributed()


def crown(cfg: Config, verdict: dict[str, Any] | None, console: Console) -> dict[str, str]:
    """Move the alias ``champion`` to the measured tokenizer and MLLM when every bar held; returns
    {registered name: models:/NAME/N} of the versions that now hold it. A model that is not registered
    (another tracking store, ``register_as: null``) is named in a warning, the stage still succeeds."""
    if verdict is None:  # no bars configured
        return {}
    if not verdict["passed"]:
        failed = [f"{b['metric']} = {b['value']:.4g}" for b in verdict["bars"] if not b["passed"]]
        console.print(f"\\[evaluate] champion not moved: bars not met ({', '.join(failed)})")
        return {}
    crowned = {}
    for name, folder in ((cfg.tokenizer.register_as, cfg.mllm.tokenizer or cfg.tokenizer.output_dir),
                         (cfg.mllm.register_as, cfg.mllm.output_dir)):
        if name is None:
            continue
        try:
            crowned[name] = promote(name, folder)
        except LookupError as err:
            console.print(f"[yellow]\\[evaluate] champion not moved for {name}: {err}[/]")
    return crowned


def measure(cfg: Config, device: torch.device, console: Console) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics for the JSON, images and examples for the report)."""
    e = cfg.evaluate
    tasks = zero_shot_tasks(e)  # a bad class-names or templates file fails before any model loads
    teacher, teacher_tokenizer = load_teacher(cfg.teacher.output_dir)
    teacher = teacher.to(device).eval()
    extractor = feature_extractor(e.inception_weights, teacher, device, e.fid.resize)
    lpips = LPIPS.from_file(e.lpips_weights).to(device) if e.lpips_weights else None
    curated = cfg.curated(e.input)
    held_out = read_images(curated, e.split, e.images, cfg.storage)
    visual_path = cfg.mllm.tokenizer or cfg.tokenizer.output_dir  # the tokenizer the MLLM trained with
    loaded = load_mllm(cfg.mllm.output_dir, visual_path, device.type)
    visual = loaded.visual
    if checkpoint_digest(visual_path) != loaded.model.config.tokenizer_sha256:
        raise ConfigError(f"mllm.tokenizer: {visual_path} is not the DualToken tokenizer {cfg.mllm.output_dir} was "
                          "trained with (SHA-256 differs): rerun the mllm stage or point mllm.tokenizer at it")
    tokens_root = cfg.mllm.tokens or cfg.tokenize.output_dir
    check_layout(tokens_root, visual.config, cfg.storage)
    console.print(f"\\[evaluate] the first {len(held_out)} images of the {e.split} split; features for Fréchet "
                  f"distances: {extractor.name}")
    batches = iter_image_batches(curated, e.split, e.batch_size, e.fid.images, cfg.storage)
    tokenizer_metrics, r = measure_tokenizer(visual, teacher, teacher_tokenizer, held_out, batches, e, extractor,
                                             device, tasks, lpips)
    console.print("\\[evaluate] tokenizer measured; now the MLLM")
    split = read_token_split(tokens_root, e.split, e.images, cfg.storage)
    majority = read_text_stats(tokens_root, "train", cfg.storage).majority()
    model, tokenizer = loaded.model, loaded.tokenizer
    vqa = vqa_accuracy(model, tokenizer, split, majority, e.vqa_questions, e.batch_size)
    captions = caption_quality(model, tokenizer, split, e.caption_images, e.batch_size)
    rows = generation_rows(split, e.generated_images)
    by_key = {k: i for i, k in enumerate(held_out.keys)}
    missing = [split.keys[i] for i in rows if split.keys[i] not in by_key]
    if missing:
        raise ValueError(f"token samples {missing[:3]} are not among the first {len(held_out)} curated {e.split} "
                         "samples: the token corpus is not this curated corpus's; rerun tokenize")
    real = held_out.images[[by_key[split.keys[i]] for i in rows]]
    generation, pictures = generation_quality(model, tokenizer, visual, teacher, teacher_tokenizer, split, rows,
                                              e.batch_size, e.sampling, e.seed, extractor, real)
    per_prompt = prompt_samples(cfg, loaded, generation.get("prompts", []))
    ablation = ablation_table(read_ablation(cfg))
    metrics = {"split": e.split, "seed": e.seed, "fd_features": extractor.name, "tokenizer": tokenizer_metrics,
               "mllm": {"vqa": vqa, "captions": captions, "generation": generation}, "ablation": ablation}
    decoded = {}
    example_rows = sorted({x["row"] for group in vqa.get("examples", {}).values() for x in group}
                          | {x["row"] for x in captions.get("examples", [])})
    if example_rows:
        images = from_model_output(visual.decode(split.pixel[example_rows].to(device)).cpu())
        decoded = dict(zip(example_rows, images, strict=True))
    assets = {"originals": r.images[:8], "reconstructions": r.reconstructions[:8], "generated": pictures,
              "per_prompt": per_prompt, "decoded": decoded, "real": real}
    return metrics, assets


@torch.no_grad()
def prompt_samples(cfg: Config, loaded: Any, prompts: list[str]) -> list[tuple[str, torch.Tensor]]:
    """``report_samples`` images for each of the first ``report_prompts`` prompts, seeded (``seed + 1``)."""
    e = cfg.evaluate
    chosen = list(dict.fromkeys(prompts))[: e.report_prompts]
    if not chosen:
        return []
    device = loaded.model.device
    generator = torch.Generator(device=device).manual_seed(e.seed + 1)
    repeated = [p for p in chosen for _ in range(e.report_samples)]
    codes = generate_codes(loaded.model, loaded.tokenizer, repeated, e.sampling, generator=generator)
    images = from_model_output(loaded.visual.decode(codes.pixel.to(device)).cpu())
    return [(p, images[i * e.report_samples : (i + 1) * e.report_samples]) for i, p in enumerate(chosen)]


def read_ablation(cfg: Config) -> dict[str, dict[str, Any]]:
    """Each selected variant's metrics that exist (the table shows what ran)."""
    found = {}
    for variant in cfg.ablation.variants:
        path = Path(cfg.ablation.metrics_dir) / f"{variant}.json"
        if path.is_file():
            found[variant] = json.loads(path.read_text())
    return found


def write_codes_csv(codes: dict[str, Any], path: Path) -> None:
    """``stream,depth,usage,perplexity`` per depth: a DVC plot of how each codebook is used."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["stream", "depth", "usage", "perplexity"])
    for stream, stats in codes.items():
        for depth in (k for k in stats["usage"] if k != "all_depths"):
            writer.writerow([stream, depth, stats["usage"][depth], stats["perplexity"][depth]])
    with atomic_write(path, "w") as handle:
        handle.write(buffer.getvalue())
