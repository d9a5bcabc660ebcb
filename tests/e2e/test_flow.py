"""The Prefect flow end to end against a real MLflow server and a real Slurm: parent + nested runs, lineage,
DVC skip; the GPU stages as Slurm jobs, the sharded stages' slices as array jobs (Slurm and local)."""

import json
import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from workspace import SMALL_PARAMS, make_workspace, workspace_env

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# Curation on this machine in two slices (a local array), every torch stage a Slurm job, tokenisation's two
# slices a Slurm array; shards published to S3 and tokenised from there, MLflow artifacts on S3 behind the
# tracking server: the demo pipeline as a team's cluster would run it.
ON_SLURM = {**SMALL_PARAMS, "launch.slurm.poll_s": 0.5, "launch.stages": {
    "curate": {"array": 2}, "tokenize": {"backend": "slurm", "array": 2},
    **{stage: {"backend": "slurm"} for stage in ("teacher", "tokenizer", "mllm", "ablation", "evaluate")}},
    "curate.publish_uri": "s3://flow/curated", "tokenize.input": "s3://flow/curated",
    "tokenize.publish_uri": "s3://flow/tokens",
    # bars a few training steps clear: the evaluate job moves `champion` on the tracking server
    "evaluate.champion_bars": [{"metric": "mllm.vqa.questions", "min": 1}]}


def _flow(ws, env):
    return subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=600)


def test_flow_runs_stages_as_jobs_through_dvc_and_records_lineage(tmp_path, mlflow_server, prefect_server, slurm_env,
                                                                  s3_env, monkeypatch):
    """The team set-up: Prefect server, MLflow server with artifacts on S3, corpora on S3, stages on Slurm."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # undone after the test (set_tracking_uri sets it)
    s3_env.make_bucket("flow")
    ws = make_workspace(tmp_path / "ws", ON_SLURM)
    env = workspace_env(MLFLOW_TRACKING_URI=mlflow_server.uri, **prefect_server.env())
    first = _flow(ws, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    _check_jobs(first.stdout + first.stderr, ws)
    _check_s3(s3_env, ws)

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("dualtoken")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("dualtoken.stage") == "pipeline"]
    stages = [r for r in runs if r.data.tags.get("dualtoken.stage") == "curate"]
    assert len(parents) == 1 and len(stages) == 1
    parent, stage = parents[0], stages[0]
    assert parent.info.status == "FINISHED"
    assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert stage.data.tags["prefect.flow_run_id"] == parent.data.tags["prefect.flow_run_id"] != "local"
    assert len(stage.data.tags["git.commit"]) >= 40
    assert len(stage.data.tags["dvc.stage_hash"]) == 32
    assert stage.data.params["curate.resolution"] == "32"
    stats = json.loads((ws / "metrics/curate.json").read_text())
    assert stage.data.metrics["accepted"] == stats["accepted"]
    artifacts = {a.path for a in client.list_artifacts(stage.info.run_id, "curate")}
    assert {"curate/preview.png", "curate/validation.json", "curate/curate.json"} <= artifacts
    inputs = {d.dataset.name: d for d in stage.inputs.dataset_inputs}
    assert {"shapes", "mnist", "curated"} <= set(inputs)
    assert client.download_artifacts(parent.info.run_id, "pipeline_summary.md", str(tmp_path))
    _check_prefect(prefect_server, parent.data.tags["prefect.flow_run_id"])

    _check_training_stages(client, runs, parent, ws, tmp_path, mlflow_server.uri)
    _check_tokenize(client, runs, parent, ws)
    _check_mllm(client, runs, parent, ws)
    _check_evaluation(client, runs, parent, ws)

    second = _flow(ws, env)  # nothing changed: one `dvc status`, no flow run, no MLflow run
    assert second.returncode == 0, second.stderr[-3000:]
    assert "every stage is up to date (dvc status): nothing ran" in second.stdout
    assert "headline" in second.stdout and "psnr=" in second.stdout  # the results, from the metrics files
    runs = client.search_runs([exp.experiment_id])
    for name in ("pipeline", "curate", "teacher", "tokenizer", "tokenize", "mllm", "ablation@d_dualtoken", "evaluate"):
        assert sum(r.data.tags.get("dualtoken.stage") == name for r in runs) == 1
    _check_dvc_remote(ws, env, s3_env, tmp_path)


def _check_s3(s3, ws):
    """Both corpora were published (the token index last, after its shards) and tokenised from S3."""
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket="flow")["Contents"]}
    assert {"curated/manifest.parquet", "curated/shards.json", "tokens/shards.json"} <= keys
    local = {p.relative_to(ws / "data/tokens").as_posix() for p in (ws / "data/tokens").rglob("*") if p.is_file()}
    assert {f"tokens/{name}" for name in local} <= keys
    index = json.loads((ws / "data/tokens/shards.json").read_text())
    assert index["corpus"]["path"] == "s3://flow/curated"


def _check_dvc_remote(ws, env, s3, tmp_path):
    """What a job on a machine without the shared workspace does: `dvc push` here, clone + `dvc pull` there,
    and every output is back, byte for byte, with nothing for DVC to redo."""
    def dvc(*args, cwd):
        out = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout

    dvc("remote", "add", "-d", "store", "s3://flow/dvc", cwd=ws)
    dvc("remote", "modify", "store", "endpointurl", s3.endpoint_url, cwd=ws)
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=test"]
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline run"], cwd=ws, check=True)
    dvc("push", cwd=ws)
    elsewhere = tmp_path / "elsewhere"
    subprocess.run(["git", "clone", "-q", str(ws), str(elsewhere)], check=True)
    dvc("pull", cwd=elsewhere)
    for out in ("data/tokens/shards.json", "models/mllm/config.json", "models/tokenizer/model.safetensors",
                "reports/report.html"):
        assert (elsewhere / out).read_bytes() == (ws / out).read_bytes(), out
    assert json.loads(dvc("status", "--json", cwd=elsewhere)) == {}


def _check_prefect(server, flow_run_id):
    """The run is on the team's Prefect server, completed, with its summary and the evaluation as artifacts."""
    import urllib.request

    with urllib.request.urlopen(f"{server.api_url}/flow_runs/{flow_run_id}", timeout=10) as response:
        assert json.loads(response.read())["state_type"] == "COMPLETED"
    request = urllib.request.Request(f"{server.api_url}/artifacts/filter", method="POST", data=json.dumps(
        {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        keys = {a["key"] for a in json.loads(response.read())}
    assert {"dualtoken-pipeline-summary", "dualtoken-evaluation"} <= keys


def _check_jobs(log, ws):
    """Where each stage ran, and that the array tasks did the sharded work the stage itself then reused."""
    for stage in ("teacher", "tokenizer", "tokenize", "mllm", "ablation", "evaluate"):
        assert re.search(rf"\| {stage} \| ran \| slurm job \d+ \|", log), stage
    assert re.search(r"\| curate \| ran \| here \|", log)
    logs = ws / "logs" / "jobs"
    for stage in ("curate", "tokenize"):
        slices = sorted(logs.glob(f"{stage}-slices-*_[01].log"))
        assert len(slices) == 2, sorted(p.name for p in logs.iterdir())
        assert all(f"{stage} slice {i + 1}/2 done" in p.read_text() for i, p in enumerate(slices))
    reused = re.search(r"phase 1 done \(\d+ inputs, (\d+)/(\d+) input shards reused\)", log)
    assert reused and reused[1] == reused[2]  # the slices curated every input shard
    assert json.loads((ws / "metrics/tokenize.json").read_text())["shards_tokenized"] == 0  # so did tokenize's


def _check_training_stages(client, runs, parent, ws, tmp_path, uri):
    """Teacher and tokenizer runs nest under the pipeline run, log curves, grids and the registered model."""
    by_stage = {r.data.tags.get("dualtoken.stage"): r for r in runs}
    teacher, tokenizer = by_stage["teacher"], by_stage["tokenizer"]
    for run in (teacher, tokenizer):
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "train.loss")) >= 2  # per-step curve
    metrics = json.loads((ws / "metrics/tokenizer.json").read_text())
    assert tokenizer.data.metrics["psnr"] == pytest.approx(metrics["psnr"])
    assert 0 < metrics["usage"]["pixel"]["overall"] <= 1 and "shape" in metrics["zero_shot"]
    assert "zero_shot.colour.accuracy" in teacher.data.metrics
    assert tokenizer.data.params["tokenizer.stage"] == "1"
    images = [a.path for a in client.list_artifacts(tokenizer.info.run_id, "images")]
    assert images, "reconstruction grids were not logged"
    (version,) = client.search_model_versions("name = 'dualtoken-tokenizer'")
    assert version.run_id == tokenizer.info.run_id

    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(uri)
    (tmp_path / "m").mkdir()
    loaded = mlflow.pyfunc.load_model(f"models:/dualtoken-tokenizer/{version.version}", dst_path=str(tmp_path / "m"))
    codes = loaded.predict(np.zeros((2, 32, 32, 3), dtype=np.uint8))  # the demo tokenizer: 32 px
    assert codes.shape == (2, 8, 8, 8) and codes.dtype == np.int64  # 8x8 grid, 4 pixel + 4 semantic depths
    # what a serving host installs from the logged model: public versions
    requirements = next((tmp_path / "m").rglob("requirements.txt")).read_text()
    assert "torch==" in requirements and "+" not in requirements, requirements
    experiment = client.get_experiment(tokenizer.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
    saved = (ws / "models/tokenizer/config.json")
    assert saved.is_file() and (ws / "models/teacher/tokenizer.json").is_file()


def _check_tokenize(client, runs, parent, ws):
    """The token corpus accounts for every curated image, is verified, and its run carries the lineage."""
    (run,) = [r for r in runs if r.data.tags.get("dualtoken.stage") == "tokenize"]
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
    metrics = json.loads((ws / "metrics/tokenize.json").read_text())
    curated = json.loads((ws / "metrics/curate.json").read_text())
    assert metrics["images"] == curated["accepted"] and metrics["accounting_ok"] and metrics["verify"]["ok"]
    assert metrics["verify"]["delta_tokenizer_stage_db"] <= 0.1
    assert run.data.metrics["tokens.total"] == metrics["tokens"]["total"]
    assert run.data.tags["dualtoken.tokenizer_sha256"] == json.loads(
        (ws / "data/tokens/shards.json").read_text())["tokenizer"]["sha256"]
    assert "tokenize/code_usage.png" in {a.path for a in client.list_artifacts(run.info.run_id, "tokenize")}
    assert {"curated", "tokens"} <= {d.dataset.name for d in run.inputs.dataset_inputs}


def _check_mllm(client, runs, parent, ws):
    """The MLLM run nests under the pipeline, logs per-depth losses and eval metrics, registers the model."""
    (run,) = [r for r in runs if r.data.tags.get("dualtoken.stage") == "mllm"]
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
    metrics = json.loads((ws / "metrics/mllm.json").read_text())
    assert run.data.metrics["vqa.accuracy"] == pytest.approx(metrics["vqa"]["accuracy"])
    assert {"train.semantic.d1", "train.pixel.d4", "train.text_loss", "train.tokens_per_s"} <= set(run.data.metrics)
    (version,) = client.search_model_versions("name = 'dualtoken-mllm'")
    assert version.run_id == run.info.run_id
    config = json.loads((ws / "models/mllm/config.json").read_text())
    assert config["tokenizer_path"] == "models/tokenizer" and (ws / "models/mllm/tokenizer.json").is_file()
    assert "tokens" in {d.dataset.name for d in run.inputs.dataset_inputs}


def _check_evaluation(client, runs, parent, ws):
    """Each ablation variant is its own nested run with its DVC entry's hash; evaluate logs the report."""
    by_stage = {r.data.tags.get("dualtoken.stage"): r for r in runs}
    for variant in ("a_one_codebook", "d_dualtoken"):
        run = by_stage[f"ablation@{variant}"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["dualtoken.variant"] == variant
        assert len(run.data.tags["dvc.stage_hash"]) == 32 and "reconstruction.ssim" in run.data.metrics
    run = by_stage["evaluate"]
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
    assert "evaluate/report.html" in {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    metrics = json.loads((ws / "metrics/evaluate.json").read_text())
    assert run.data.metrics["mllm.vqa.accuracy"] == pytest.approx(metrics["mllm"]["vqa"]["accuracy"])
    assert (ws / "reports/report.html").is_file() and (ws / "plots/mllm/train.csv").is_file()
    assert metrics["champion_bars"]["passed"]
    for name in ("dualtoken-tokenizer", "dualtoken-mllm"):  # trained, then measured: candidate is champion
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.version == client.get_model_version_by_alias(name, "candidate").version
        assert champion.tags["git.commit"] == run.data.tags["git.commit"]  # the workspace's commit
        assert len(champion.tags["dvc.lock.sha256"]) == 64 and len(champion.tags["checkpoint.sha256"]) == 64
        assert run.data.tags[f"champion.{name}"] == f"models:/{name}/{champion.version}"


def test_failing_stage_job_is_retried_and_the_run_marked_failed(tmp_path, slurm_env):
    params = {**SMALL_PARAMS, "curate.validation": {"min_rows": 100000}, "pipeline.retries": 1,
              "pipeline.retry_delay_s": 0, "launch.slurm.poll_s": 0.5,
              "launch.stages": {"curate": {"backend": "slurm"}}}
    ws = make_workspace(tmp_path / "ws", params)
    env = workspace_env(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = _flow(ws, env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert log.count("Task run 'curate' - Running stage 'curate'") == 2  # first try + one retry, as configured
    assert "expect_table_row_count_to_be_between" in log  # the readable GX summary reaches the flow log
    assert "| curate | **failed** |" in log
    jobs = set(re.findall(r"job curate \((\d+)\) failed, exit code \d+; log: \S+curate-\d+.log", log))
    assert len(jobs) == 2  # each try was its own Slurm job, and the flow says how it ended and where its log is

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dualtoken").experiment_id])
    pipeline = [r for r in runs if r.data.tags.get("dualtoken.stage") == "pipeline"]
    assert [r.info.status for r in pipeline] == ["FAILED"]
    assert sorted(r.info.status for r in runs if r.data.tags.get("dualtoken.stage") == "curate") == ["FAILED"] * 2


def test_a_terminated_flow_cancels_its_running_slurm_job(tmp_path, slurm_env):
    """What a cancelled Prefect run does to the flow's process (SIGTERM, Prefect's bridge raises in the flow):
    the stage's Slurm job is scancelled, not left running unowned."""
    import signal

    params = {**SMALL_PARAMS, "pipeline.stages": ["curate"], "pipeline.retries": 0, "launch.slurm.poll_s": 0.5,
              "launch.stages": {"curate": {"backend": "slurm"}},
              "data.sources": [{"kind": "demo", "name": "shapes", "num_images": 50000, "images_per_shard": 500}]}
    ws = make_workspace(tmp_path / "ws", params)
    env = workspace_env(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    flow = subprocess.Popen([sys.executable, "-m", "flows.pipeline"], cwd=ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    job = None
    for line in flow.stdout:  # the job's own log, streamed: it is running once curation reports progress
        found = re.search(r"dualtoken: job (\d+) on ", line)
        job = found[1] if found else job
        if job and "Running stage 'curate'" in line:
            break
    assert job, "the curate job never started"
    flow.send_signal(signal.SIGTERM)
    rest = flow.communicate(timeout=120)[0]
    assert flow.returncode == 143 and "Stopping temporary server" in rest, rest[-2000:]  # exited, cleaned up
    state = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    assert "JobState=CANCELLED" in state, state + rest[-2000:]


def test_a_params_file_dvc_would_not_read_is_refused(tmp_path, capsys):
    """dvc repro reads params.yaml only: a flow given another file would configure the jobs but not the stages."""
    from flows.pipeline import main

    ws = make_workspace(tmp_path / "ws")
    (ws / "other.yaml").write_text((ws / "params.yaml").read_text())
    assert main(["--workspace", str(ws), "--params", "other.yaml"]) == 2
    assert "reads params.yaml only" in capsys.readouterr().err
    assert not (ws / "mlflow.db").exists()  # refused before any run was made


def test_an_experiment_through_the_flow_lands_in_dvc_exp_show(tmp_path):
    """`-S` overrides (checked as the CLI checks them) go into params.yaml, comments kept; the stages run as
    configured; the result is a DVC experiment beside those made with `dvc exp run`."""
    ws = make_workspace(tmp_path / "ws")
    params = ws / "params.yaml"
    params.write_text("# the team's notes stay\n" + params.read_text())
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit",
                                       "-qm", "baseline"]):
        subprocess.run(cmd, cwd=ws, check=True)
    env = workspace_env(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    flow = [sys.executable, "-m", "flows.pipeline"]
    bad = subprocess.run([*flow, "-S", "curate.samples_per_shrd=40"], cwd=ws, env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "samples_per_shrd" in bad.stderr and "the team's notes" in params.read_text()
    run = subprocess.run([*flow, "-S", "curate.samples_per_shard=150", "--stages", "curate", "--name", "small-shards"],
                         cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "saved as DVC experiment small-shards" in run.stdout + run.stderr
    assert params.read_text().startswith("# the team's notes stay\n")
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=ws, env=env, capture_output=True,
                                      text=True, check=True).stdout)
    experiments = [e for row in shown for group in (row.get("experiments") or []) for e in group["revs"]]
    (mine,) = [e for e in experiments if e["name"] == "small-shards"]
    assert mine["data"]["params"]["params.yaml"]["data"]["curate"]["samples_per_shard"] == 150
