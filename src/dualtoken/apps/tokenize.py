"""Corpus tokenisation as an application: tokenise this process's shards, then (once) assemble, verify,
summarise, publish, record in MLflow and say where everything is.

Three ways to run it, one code path:
* one process (``dvc repro tokenize``): every shard, then the finish;
* ``runtime.nproc`` > 1 or any torchrun launch: each rank takes its slice, rank 0 finishes after a barrier;
* independent slices (a Slurm job array, a Kubernetes indexed job, ``dualtoken tokenize --rank R --world W``):
  each tokenises its slice and stops; ``dualtoken tokenize --finalize`` finishes once all are done.

Outputs: ``data/tokens/`` (token shards + ``shards.json``), ``metrics/tokenize.json`` (throughput, counts,
tokens, code usage and entropy per depth, the reconstruction check) and ``plots/tokenize/`` (usage curve as
CSV for ``dvc plots`` and as PNG).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from dualtoken.application import log_final_metrics, setup_process, tracked, write_metrics
from dualtoken.config import Config
from dualtoken.data.curated import corpus_digest
from dualtoken.data.loader import default_workers
from dualtoken.data.shards import OFFSETS_SUFFIX
from dualtoken.data.tokens import STREAMS, TokenLayout
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.teacher import checkpoint_digest
from dualtoken.partition import WorkSlice
from dualtoken.storage import location, publish_dir, upload_file
from dualtoken.tokenization.job import (
    Plan,
    Settings,
    ShardRecord,
    ShardStore,
    SliceResult,
    TokenCorpus,
    assemble,
    make_plan,
    tokenize_slice,
)
from dualtoken.tokenization.stats import code_statistics, write_usage_csv, write_usage_plot
from dualtoken.tokenization.verify import VerificationFailed, verify_reconstruction
from dualtoken.tracking import log_dataset, run_url
from dualtoken.training.checkpoint import library_digest
from dualtoken.training.distributed import shutdown_distributed
from dualtoken.training.engine import resolve_precision

STAGE = "tokenize"


def load_tokenizer(path: str | Path) -> DualTokenModel:
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"no tokenizer model in {path}: run the tokenizer stage first (dvc repro tokenizer)"
                                " or set tokenize.tokenizer to a saved DualToken model")
    return DualTokenModel.from_pretrained(str(path), local_files_only=True)


def main(cfg: Config, console: Console | None = None, part: WorkSlice | None = None,
         finalize_only: bool = False) -> dict[str, Any]:
    """Tokenise (``part``: an array task's slice; under torchrun each rank's) and finish when whole."""
    console = console or Console(stderr=True, soft_wrap=True)
    t = cfg.tokenize
    ctx = setup_process(t.runtime, cfg.seed, timeout_s=t.barrier_timeout_min * 60)
    try:
        model_dir = t.tokenizer or cfg.tokenizer.output_dir
        curated = cfg.curated(t.input)
        model = load_tokenizer(model_dir).to(ctx.device).eval()
        workers = t.runtime.loader_workers
        settings = Settings(t.batch_size, ctx.device, resolve_precision(t.runtime.precision, ctx.device),
                            default_workers(ctx.device, ctx.local_world) if workers is None else workers,
                            t.runtime.loader_prefetch)
        plan = make_plan(curated, t.splits, TokenLayout.of_model(model.config), cfg.storage)
        tokenizer_sha = checkpoint_digest(model_dir)
        corpus = corpus_digest(curated, cfg.storage)
        identity = {"corpus": corpus, "tokenizer": tokenizer_sha, "precision": settings.precision,
                    "device": ctx.device.type, "batch_size": t.batch_size, "code": library_digest()}
        store = ShardStore(t.work_dir)
        work = WorkSlice(ctx.rank, ctx.world) if ctx.distributed else part or WorkSlice()
        finishes = ctx.distributed or work.whole or finalize_only
        with (tracked(STAGE, cfg, ("tokenize",), ctx) if finishes else contextlib.nullcontext()) as run:
            result = SliceResult()
            if not finalize_only:
                result = _tokenize(model, plan, store, work, identity, settings, cfg, console)
            images = ctx.reduce_number(result.images)
            seconds = ctx.reduce_number(result.seconds, "max")
            tokenized = int(ctx.reduce_number(len(result.tokenized)))
            ctx.barrier()  # every rank's shards are marked before rank 0 assembles
            if not finishes:
                console.print(f"[bold green]tokenize {work} done[/]: {len(result.tokenized)} shards tokenised, "
                              f"{len(result.resumed)} already done. When every slice has finished: "
                              "dualtoken tokenize --finalize")
                return {}
            if not ctx.is_main:
                return {}
            provenance = {"tokenizer": {"path": str(model_dir), "sha256": tokenizer_sha},
                          "corpus": {"path": curated, "digest": corpus}, "precision": settings.precision}
            tokens = assemble(plan, store, identity, t.output_dir, provenance)
            metrics = _summarise(plan, tokens, images, seconds, tokenized)
            metrics["verify"] = _verify(cfg, model, plan, settings)
            write_metrics(t.metrics_path, metrics)
            plots = [write_usage_csv(tokens.histograms, t.usage_plot("csv")),
                     write_usage_plot(tokens.histograms, t.usage_plot("png"))]
            _log_run(cfg, tokens, metrics, plots, corpus, tokenizer_sha)
            if not metrics["verify"]["ok"]:
                raise VerificationFailed(metrics["verify"]["problem"])
            published = _publish(cfg, tokens)
            url = run_url(cfg.tracking, run.info.run_id)
        _report(console, cfg, metrics, tokens, plots, url, published)
        return metrics
    finally:
        shutdown_distributed()


def _tokenize(model: DualTokenModel, plan: Plan, store: ShardStore, work: WorkSlice, identity: dict[str, Any],
              settings: Settings, cfg: Config, console: Console) -> SliceResult:
    mine = work.take(plan.tasks)
    console.print(f"\\[tokenize] {len(plan.tasks)} shards ({', '.join(f'{s} {n}' for s, n in plan.counts.items())} "
                  f"images) from {plan.source}; {work}: {len(mine)} shards on {settings.device} "
                  f"({settings.precision}), batch {settings.batch_size}, {settings.loader_workers} loader worker(s)")

    def progress(record: ShardRecord, done: int, total: int) -> None:
        rate = record.samples / record.seconds if record.seconds > 0 else 0.0
        console.print(f"\\[tokenize] {done}/{total} {record.name}: {record.samples} images, {rate:.0f} images/s")

    result = tokenize_slice(model, plan, store, work, identity, settings, cfg.storage, on_shard=progress)
    if result.resumed:
        console.print(f"\\[tokenize] {len(result.resumed)} shard(s) were already done (same corpus, tokenizer and "
                      "settings): kept")
    return result


def _summarise(plan: Plan, tokens: TokenCorpus, images: float, seconds: float, tokenized: int) -> dict[str, Any]:
    """Counts, tokens, throughput (this run, all ranks) and code statistics of the assembled corpus."""
    layout, total = plan.layout, sum(tokens.counts.values())
    per_image = {s: layout.grid[0] * layout.grid[1] * layout.spec(s).depth for s in STREAMS}
    return {
        "images": total,
        "counts": tokens.counts,
        "curated_counts": plan.counts,
        "accounting_ok": tokens.counts == plan.counts,
        "shards": len(tokens.records),
        "shards_tokenized": tokenized,  # by this run (every rank); the rest were finished earlier or elsewhere
        "shards_kept": len(tokens.records) - tokenized,
        "tokens": {**{s: total * per_image[s] for s in STREAMS}, "total": total * sum(per_image.values()),
                   "per_image": per_image},
        "layout": layout.to_dict(),
        "throughput": {"images": int(images), "seconds": round(seconds, 2),
                       "images_per_s": round(images / seconds, 1) if images and seconds > 0 else None},
        "codes": code_statistics(tokens.histograms),
        "bytes": sum((tokens.root / r.name).stat().st_size for r in tokens.records),
    }


def _verify(cfg: Config, model: DualTokenModel, plan: Plan, settings: Settings) -> dict[str, Any]:
    """The written codes reproduce the tokenizer's reconstructions (and its own val PSNR when comparable)."""
    t = cfg.tokenize
    split = "val" if "val" in plan.counts else next(iter(plan.counts))
    check = verify_reconstruction(model, t.output_dir, plan.source, split, t.verify_images, settings, cfg.storage)
    check["tolerance_db"] = t.psnr_tolerance_db
    problems = []
    if check["images"] and check["delta_db"] > t.psnr_tolerance_db:
        problems.append(f"PSNR from the written codes ({check['psnr_written']:.3f} dB) differs from the tokenizer's "
                        f"own round trip ({check['psnr_model']:.3f} dB) by more than {t.psnr_tolerance_db} dB")
    stage_metrics = Path(cfg.tokenizer.metrics_path)
    covers_split = split == "val" and check["images"] == plan.counts.get("val")
    if t.tokenizer is None and covers_split and stage_metrics.is_file():
        stage_psnr = json.loads(stage_metrics.read_text()).get("psnr")
        if stage_psnr is not None:
            check["psnr_tokenizer_stage"] = stage_psnr
            check["delta_tokenizer_stage_db"] = abs(check["psnr_written"] - stage_psnr)
            if check["delta_tokenizer_stage_db"] > t.psnr_tolerance_db:
                problems.append(f"PSNR from the written codes ({check['psnr_written']:.3f} dB) differs from the "
                                f"tokenizer stage's val PSNR ({stage_psnr:.3f} dB, {stage_metrics}) by more than "
                                f"{t.psnr_tolerance_db} dB")
    check["ok"] = not problems
    if problems:
        check["problem"] = "; ".join(problems)
    return check


def _log_run(cfg: Config, tokens: TokenCorpus, metrics: dict[str, Any], plots: list[Path], corpus: str,
             tokenizer_sha: str) -> None:
    import mlflow

    t = cfg.tokenize
    log_dataset("curated", location(cfg.curated(t.input)), corpus, context="input")
    index_digest = hashlib.sha256(json.dumps(tokens.index["shards"], sort_keys=True).encode()).hexdigest()[:16]
    log_dataset("tokens", location(tokens.root), index_digest, context="tokenized")
    mlflow.set_tag("dualtoken.tokenizer_sha256", tokenizer_sha)
    log_final_metrics(metrics, step=0)
    for path in (Path(t.metrics_path), tokens.root / "shards.json", *plots):
        mlflow.log_artifact(str(path), artifact_path="tokenize")


def _publish(cfg: Config, tokens: TokenCorpus) -> list[str]:
    """Upload the shards, then the index: a reader of the prefix never sees an index ahead of its shards."""
    prefix = cfg.tokenize.publish_uri
    if not prefix:
        return []
    urls = publish_dir(tokens.root, prefix, cfg.storage, pattern="*.tar")
    urls += publish_dir(tokens.root, prefix, cfg.storage, pattern=f"*.tar{OFFSETS_SUFFIX}")
    index = prefix.rstrip("/") + "/shards.json"
    upload_file(tokens.root / "shards.json", index, cfg.storage)
    return [*urls, index]


def _report(console: Console, cfg: Config, metrics: dict[str, Any], tokens: TokenCorpus, plots: list[Path],
            url: str, published: list[str]) -> None:
    t, v, codes = cfg.tokenize, metrics["verify"], metrics["codes"]
    rate = metrics["throughput"]["images_per_s"]
    check = (f"PSNR from written codes {v['psnr_written']:.2f} dB vs model {v['psnr_model']:.2f} dB"
             + (f" vs tokenizer stage {v['psnr_tokenizer_stage']:.2f} dB" if "psnr_tokenizer_stage" in v else "")
             + f" on {v['images']} {v['split']} images" if v["images"] else "no images to verify")
    console.print(
        f"[bold green]tokenize done[/]: {metrics['images']} images "
        f"({', '.join(f'{k} {n}' for k, n in metrics['counts'].items())}) -> {metrics['tokens']['total']:,} codes in "
        f"{metrics['shards']} shards ({metrics['shards_tokenized']} tokenised by this run, {metrics['shards_kept']} "
        "finished earlier or by other slices)"
        + (f", {rate:.0f} images/s" if rate else "") + "\n"
        f"  check:    {check}\n"
        f"  usage:    pixel {codes['pixel']['usage']['all_depths']:.0%}, semantic "
        f"{codes['semantic']['usage']['all_depths']:.0%} of each codebook\n"
        f"  tokens:   {tokens.root}/{{train,val,test}}-*.tar (index {tokens.root / 'shards.json'})\n"
        f"  metrics:  {t.metrics_path}\n  plots:    {', '.join(str(p) for p in plots)}\n  MLflow:   {url}"
        + (f"\n  published: {len(published)} files to {t.publish_uri}" if published else ""))
