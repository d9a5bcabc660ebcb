"""`prefect deploy` + `prefect deployment run` + process workers, against a real Prefect server: the `local`
deployment, and the `slurm` one with its stage jobs on a real (single-node) Slurm; the `kubernetes` deployment
registers against a Kubernetes work pool made from infra/k8s/'s base job template (no cluster runs here)."""

import re
import subprocess

import pytest
import yaml

from workspace import SMALL_PARAMS, make_workspace, workspace_env

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
CURATE_ONLY = {**SMALL_PARAMS, "pipeline.stages": ["curate"]}


def _prefect(*args, cwd, env, timeout=300):
    return subprocess.run(["prefect", "--no-prompt", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _run_on_worker(deployment, pool, ws, tmp_path, env, *params):
    """`prefect deployment run` then one worker run; the worker starts elsewhere and the deployment's pull step
    must bring the run into the workspace (DUALTOKEN_WORKSPACE when deployed; the `workspace` parameter)."""
    run = _prefect("deployment", "run", deployment, *params, cwd=ws, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    worker = _prefect("worker", "start", "--pool", pool, "--run-once", cwd=tmp_path, env=env, timeout=600)
    log = worker.stdout + worker.stderr
    assert worker.returncode == 0, log[-3000:]
    assert "Flow run" in log and "Finished in state Completed()" in log, log[-3000:]
    assert (ws / "metrics" / "curate.json").is_file() and (ws / "data" / "curated" / "manifest.parquet").is_file()
    return log


def test_deployments_run_the_pipeline_on_process_workers(tmp_path, prefect_server, slurm_env):
    ws = make_workspace(tmp_path / "ws", CURATE_ONLY)
    env = workspace_env(**prefect_server.env(), DUALTOKEN_WORKSPACE=str(ws))
    k8s_template = ("--base-job-template", "infra/k8s/prefect-base-job-template.json")
    pools = {"local-process": ("--type", "process"), "slurm-login": ("--type", "process"),
             "dualtoken-k8s": ("--type", "kubernetes", *k8s_template)}
    for pool, options in pools.items():
        created = _prefect("work-pool", "create", pool, *options, cwd=ws, env=env)
        assert created.returncode == 0, created.stdout + created.stderr
    inspected = _prefect("work-pool", "inspect", "dualtoken-k8s", cwd=ws, env=env)
    assert "gpu_count" in inspected.stdout and "dualtoken-flow" in inspected.stdout, inspected.stdout  # our template
    deploy = _prefect("deploy", "--all", cwd=ws, env=env)
    out = deploy.stdout + deploy.stderr
    assert deploy.returncode == 0, out
    assert all(f"dualtoken-pipeline/{name}" in out for name in ("local", "slurm", "kubernetes")), out
    for name in ("local", "slurm", "kubernetes"):  # one run at a time each; a second one waits its turn
        shown = _prefect("deployment", "inspect", f"dualtoken-pipeline/{name}", cwd=ws, env=env).stdout
        assert "'collision_strategy': 'ENQUEUE'" in shown and "'limit': 1" in shown, shown

    log = _run_on_worker("dualtoken-pipeline/local", "local-process", ws, tmp_path, env)
    assert "| curate | ran | here |" in log

    # The slurm deployment with a launch file that fits this one-node, two-core cluster (the shipped
    # infra/slurm/launch.yaml asks for a real cluster's resources): curate's slices as an array, then its job.
    on_slurm = make_workspace(tmp_path / "ws-slurm", CURATE_ONLY)
    launch = {"launch": {"slurm": {"poll_s": 0.5}, "stages": {"curate": {"backend": "slurm", "array": 2}}}}
    (on_slurm / "launch-here.yaml").write_text(yaml.safe_dump(launch))
    log = _run_on_worker("dualtoken-pipeline/slurm", "slurm-login", on_slurm, tmp_path, env,
                         "--param", f"workspace={on_slurm}", "--param", "launch=launch-here.yaml")
    assert re.search(r"\| curate \| ran \| slurm job \d+ \|", log), log[-3000:]
    assert len(list((on_slurm / "logs" / "jobs").glob("curate-slices-*_[01].log"))) == 2
