"""Prefect flow ``dualtoken-pipeline``: one task per DVC stage, in order, with retries.

DVC decides what is up to date; MLflow gets one parent run per pipeline run with the stage runs nested
under it (stages run in their own processes and find the parent through the environment).

Run locally with an ephemeral Prefect API:  python -m flows.pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from dualtoken.config import Config, load_config
from dualtoken.schema import ConfigError
from dualtoken.tracking import (
    ENV_FLOW_RUN,
    ENV_PARENT_RUN,
    TrackingError,
    finish_pipeline_run,
    run_url,
    stage_runs,
    start_pipeline_run,
    tag_run,
)
from flows.dvc import StageFailed, StageOutcome, lock_hash, repro, up_to_date, workspace_lock
from flows.experiment import apply_to_params, save_experiment, stage_subset
from stages import STAGES

DVC_PARAMS = "params.yaml"  # the file dvc.yaml's params and stage commands read


def _config(root: Path, params: str, launch: str | None) -> Config:
    """The workspace's configuration. Only its params.yaml: ``dvc repro`` reads no other, so another file would
    configure the array slices and the jobs but not what DVC hashes and runs."""
    if (root / params).resolve() != (root / DVC_PARAMS).resolve():
        raise ConfigError(f"params {params!r}: the pipeline runs through dvc repro, which reads {DVC_PARAMS} only; "
                          f"edit {DVC_PARAMS} (or run an experiment: dvc exp run -S key=value), and put where "
                          "stages run in a launch file (--launch)")
    return load_config(root / params, launch_file=root / launch if launch else None)


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(stage: str, workspace: str, params: str, launch: str | None, env: dict[str, str]) -> StageOutcome:
    """The stage as a job on the backend ``launch.stages`` names for it (read afresh: a retry sees edits)."""
    logger = get_run_logger()
    root = Path(workspace)
    return repro(stage, root, env, logger.info, _config(root, params, launch).launch, params)


def _headline(stage: str, workspace: Path, cfg: Config) -> str:
    """The stage table's headline numbers, read from the metrics file the config names."""
    metrics_file = workspace / STAGES[stage].metrics(cfg)
    if not metrics_file.is_file():
        return ""
    metrics = json.loads(metrics_file.read_text())
    shown = []
    for dotted in STAGES[stage].headline:
        value = metrics
        for part in dotted.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        shown.append(f"{dotted}={value:.4g}" if isinstance(value, float) else f"{dotted}={value}")
    return ", ".join(shown)


def summary_markdown(outcomes: list[StageOutcome], failed: str | None, urls: dict[str, str],
                     workspace: Path, cfg: Config) -> str:
    lines = ["# dualtoken pipeline", "", "| stage | status | where | seconds | headline | MLflow |",
             "|---|---|---|---|---|---|"]
    for o in outcomes:
        status = {"ran": "ran", "restored": "restored from DVC run cache (same inputs ran before)",
                  "up to date": "up to date (skipped by DVC)"}[o.status]
        lines.append(f"| {o.stage} | {status} | {o.where} | {o.seconds:.1f} | {_headline(o.stage, workspace, cfg)} | "
                     f"{urls.get(o.stage, '-')} |")
    if failed:
        lines.append(f"| {failed} | **failed** | - | - | see the task log | {urls.get(failed, '-')} |")
    return "\n".join(lines) + "\n"


@flow(name="dualtoken-pipeline", log_prints=True)
def dualtoken_pipeline(params: str = "params.yaml", workspace: str = ".", launch: str | None = None,
                       overrides: list[str] | None = None, stages: list[str] | None = None,
                       experiment: str | None = None) -> list[dict]:
    """Reproduce every configured stage through DVC; returns one summary dict per stage. ``launch``: a file with
    a ``launch:`` section that replaces params.yaml's (where stages run; e.g. infra/slurm/launch.yaml).
    ``overrides`` (``section.key=value``, checked as the CLI's ``-S``) are written into params.yaml first, and
    the finished run is saved as DVC experiment ``experiment`` (a generated name if none); ``stages``: a
    subset of the pipeline (default ``pipeline.stages``)."""
    root = Path(workspace).resolve()
    # Everything relative (the MLflow store, logs) is the workspace's, as it is for the stages' own processes;
    # a flow run has its process to itself (python -m flows.pipeline, or a worker's subprocess).
    os.chdir(root)
    _config(root, params, launch)  # the params file is the one DVC reads
    if overrides:
        apply_to_params(root / params, overrides)
    cfg = _config(root, params, launch)
    selected = stage_subset(stages, cfg.pipeline.stages)
    logger = get_run_logger()
    flow_run_id = str(flow_run.id or "local")
    parent = start_pipeline_run(cfg.tracking, name=f"pipeline {flow_run.name or ''}".strip(),
                                tags={"prefect.flow_run_id": flow_run_id})
    logger.info("MLflow pipeline run: %s", run_url(cfg.tracking, parent))
    env = {ENV_PARENT_RUN: parent, ENV_FLOW_RUN: flow_run_id}
    stage_task = run_stage.with_options(retries=cfg.pipeline.retries, retry_delay_seconds=cfg.pipeline.retry_delay_s)
    outcomes: list[StageOutcome] = []
    failed: str | None = None
    try:
        for stage in selected:
            failed = stage
            outcomes.append(stage_task(stage, str(root), params, launch, env))
            failed = None
        if overrides or experiment:
            name = save_experiment(root, experiment, selected, os.environ)
            logger.info("saved as DVC experiment %s (dvc exp show)", name)
    finally:
        runs = stage_runs(cfg.tracking, parent)
        ran = {o.stage for o in outcomes if o.ran}
        for name, run_id in runs.items():  # foreach members (ablation@x) carry their own entry's hash
            if name.split("@")[0] in ran:
                tag_run(cfg.tracking, run_id, {"dvc.stage_hash": lock_hash(name, root)})
        urls = {stage: run_url(cfg.tracking, run_id) for stage, run_id in runs.items()}
        summary = summary_markdown(outcomes, failed, urls, root, cfg)
        create_markdown_artifact(summary, key="dualtoken-pipeline-summary", description="dualtoken pipeline run")
        reports = root / cfg.evaluate.output_dir  # the evaluate stage's summary, published as its own artifact
        if "evaluate" in {o.stage for o in outcomes} and (reports / "summary.md").is_file():
            create_markdown_artifact((reports / "summary.md").read_text(), key="dualtoken-evaluation",
                                     description=f"evaluation report: {(reports / 'report.html').as_uri()}")
        finish_pipeline_run(cfg.tracking, parent, "FAILED" if failed else "FINISHED", summary)
        print(summary)
    return [{"stage": o.stage, "status": o.status, "seconds": o.seconds, "dvc_lock_hash": o.lock_hash}
            for o in outcomes]


def _nothing_to_run(root: Path, params: str, launch: str | None, stages: list[str] | None = None) -> bool:
    """True (and the results printed) when DVC would skip every stage: a warm rerun then costs one ``dvc status``
    instead of starting a Prefect API (~20 s) and asking DVC stage by stage (~3 s each)."""
    cfg = _config(root, params, launch)
    selected = stage_subset(stages, cfg.pipeline.stages)
    with workspace_lock(root):
        if not up_to_date(selected, root, {}):
            return False
        outcomes = [StageOutcome(stage, "up to date", 0.0, lock_hash(stage, root)) for stage in selected]
    print(summary_markdown(outcomes, None, {}, root, cfg))
    report = root / cfg.evaluate.output_dir / "report.html"
    print(f"every stage is up to date (dvc status): nothing ran, no Prefect or MLflow run made. Report: {report}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the dualtoken pipeline locally (ephemeral Prefect API).")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--launch", help="a YAML file whose `launch:` section says where stages run "
                                         "(default: params.yaml's), e.g. infra/slurm/launch.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an experiment: write section.key=value into params.yaml (checked as the stages' -S), "
                             "run, and save the result as a DVC experiment")
    parser.add_argument("--stages", nargs="+", help="run these stages only (default: pipeline.stages)")
    parser.add_argument("--name", help="the DVC experiment's name (default: generated)")
    args = parser.parse_args(argv)
    root = Path(args.workspace).resolve()
    # Terminated (a scheduler's time limit, `kill`): Prefect's own handler cancels the running stage's job and
    # then re-delivers the signal to the handler it found. Exit through Python rather than dying by the signal,
    # so that exit handlers run and the ephemeral Prefect API server goes down with this process.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    experiment = bool(args.overrides or args.name)
    try:
        if experiment:  # checked before any Prefect or MLflow run starts
            _config(root, args.params, args.launch)
            load_config(root / args.params, args.overrides)
            stage_subset(args.stages, [])
        elif _nothing_to_run(root, args.params, args.launch, args.stages):
            return 0
    except (ConfigError, StageFailed) as err:
        print(f"pipeline: {err}", file=sys.stderr)
        return 2
    try:
        dualtoken_pipeline(params=args.params, workspace=args.workspace, launch=args.launch,
                           overrides=args.overrides or None, stages=args.stages, experiment=args.name)
    except (ConfigError, TrackingError) as err:
        print(f"pipeline: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the flow already logged the failure; keep the exit status honest
        print(f"pipeline failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
