"""Curation as an application: the job plus its MLflow record and a readable report of where things are.

Run by ``stages.runner`` (DVC's ``python -m stages curate`` and ``dualtoken curate`` alike).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rich.console import Console

from dualtoken.config import Config
from dualtoken.curation.job import CurateOutputs, ValidationFailed, curate_inputs, run_curation
from dualtoken.partition import WorkSlice
from dualtoken.tracking import log_dataset, numeric_metrics, run_url, stage_run

STAGE = "curate"


def _log_outputs(outputs: CurateOutputs) -> None:
    import mlflow

    mlflow.log_metrics(numeric_metrics({k: v for k, v in outputs.stats.items() if k != "shards_by_split"}))
    for path in (outputs.preview, outputs.validation, outputs.stats_path, outputs.manifest):
        mlflow.log_artifact(str(path), artifact_path="curate")
    rejects = outputs.output_dir / "rejects" / "rejects.jsonl"
    mlflow.log_artifact(str(rejects), artifact_path="curate")
    for name, (location, digest) in outputs.input_digests.items():
        log_dataset(name, location, digest, context="input")
    frame = outputs.manifest_frame
    digest = hashlib.sha256("".join(frame["pixel_sha256"] + frame["split"]).encode()).hexdigest()[:16]
    log_dataset("curated", str(outputs.output_dir.resolve()), digest, context="curated", frame=frame)


def main(cfg: Config, console: Console | None = None, part: WorkSlice | None = None) -> CurateOutputs | None:
    """The whole curation; with a slice (``part``: an array task's) only that slice's input shards, whose
    results the whole run then reuses."""
    console = console or Console(stderr=True, soft_wrap=True)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if part is not None and not part.whole:
        units = curate_inputs(cfg.data.sources, cfg.curate, cfg.storage, console, part)
        console.print(f"[bold green]curate {part} done[/]: {len(units)} input shards "
                      f"({sum(not s.reused for _, s in units)} processed, {sum(s.reused for _, s in units)} "
                      f"already done) in {cfg.curate.work_dir}. When every slice has finished: dvc repro curate")
        return None
    with stage_run(STAGE, cfg.tracking, cfg.model_dump(mode="json", include={"seed", "data", "curate"})) as run:
        try:
            outputs = run_curation(cfg.data.sources, cfg.curate, cfg.storage, console)
        except ValidationFailed:
            import mlflow

            out = Path(cfg.curate.output_dir)
            for path in (out / "validation.json", Path(cfg.curate.metrics_path)):
                if path.is_file():
                    mlflow.log_artifact(str(path), artifact_path="curate")
            raise
        _log_outputs(outputs)
        url = run_url(cfg.tracking, run.info.run_id)
    s = outputs.stats
    console.print(
        f"[bold green]curate done[/]: {s['inputs']} inputs -> {s['accepted']} accepted "
        f"({', '.join(f'{k} {v}' for k, v in s['accepted_by_split'].items())}), {s['rejected']} quarantined "
        f"{s['rejected_by_reason'] or ''}\n"
        f"  shards:     {outputs.output_dir}/{{train,val,test}}-*.tar\n"
        f"  manifest:   {outputs.manifest}\n"
        f"  quarantine: {outputs.output_dir / 'rejects'}\n"
        f"  validation: {outputs.validation} ({s['validation']['summary'].splitlines()[0]})\n"
        f"  preview:    {outputs.preview}\n"
        f"  stats:      {outputs.stats_path} ({s['throughput']['images_per_s']:.0f} images/s)\n"
        f"  MLflow:     {url}"
        + (f"\n  published:  {len(outputs.published)} files to {cfg.curate.publish_uri}" if outputs.published else "")
    )
    return outputs
