"""`prefect deploy` + `prefect deployment run` + a process worker, against a real Prefect server."""

import subprocess

import pytest

from workspace import make_workspace, workspace_env

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _prefect(*args, cwd, env, timeout=300):
    return subprocess.run(["prefect", "--no-prompt", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_local_deployment_runs_the_pipeline_on_a_process_worker(tmp_path, prefect_server):
    ws = make_workspace(tmp_path / "ws")
    env = workspace_env(**prefect_server.env(), DUALTOKEN_WORKSPACE=str(ws))
    pool = _prefect("work-pool", "create", "local-process", "--type", "process", cwd=ws, env=env)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = _prefect("deploy", "--all", cwd=ws, env=env)
    assert deploy.returncode == 0 and "dualtoken-pipeline/local" in deploy.stdout, deploy.stdout + deploy.stderr
    run = _prefect("deployment", "run", "dualtoken-pipeline/local", cwd=ws, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    # The worker starts elsewhere: the deployment's pull step must bring the run into the workspace.
    worker = _prefect("worker", "start", "--pool", "local-process", "--run-once", cwd=tmp_path, env=env, timeout=600)
    log = worker.stdout + worker.stderr
    assert worker.returncode == 0, log[-3000:]
    assert "Flow run" in log and "Finished in state Completed()" in log, log[-3000:]
    assert (ws / "metrics" / "curate.json").is_file() and (ws / "data" / "curated" / "manifest.parquet").is_file()
