"""The `dualtoken` CLI and the curate stage entry point, run as a user would run them."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import webdataset as wds
import yaml

from stages.cli import main as cli_main


def _params(tmp_path, **curate):
    raw = {
        "data": {"sources": [{"kind": "webdataset", "name": "web",
                              "urls": [str(tmp_path / "in" / "demo-{000000..000001}.tar")]}]},
        "curate": {"output_dir": str(tmp_path / "out"), "work_dir": str(tmp_path / "work"),
                   "metrics_path": str(tmp_path / "metrics.json"), "workers": 1,
                   "validation": {"min_rows": 50, "split_tolerance": 0.08}, **curate},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_config_command_reports_bad_keys(capsys):
    assert cli_main(["config", "-S", "curate.workerz=2"]) == 2
    assert "curate.workerz: unknown key" in capsys.readouterr().err
    assert cli_main(["config", "-S", "curate.workers=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["curate"]["workers"] == 3


def _only_run(db: Path):
    """The one run in a SQLite store, read without touching MLflow's process-wide tracking URI."""
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("dualtoken").experiment_id])
    return run


def test_demo_corpus_then_curate_with_overrides(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli_main(["demo-corpus", "--out", str(tmp_path / "in"), "--num", "120", "--per-shard", "60"]) == 0
    assert len(list(wds.WebDataset(str(tmp_path / "in" / "demo-{000000..000001}.tar"), shardshuffle=False))) == 120
    params = _params(tmp_path)
    assert cli_main(["curate", "--params", str(params), "-S", "curate.samples_per_shard=40"]) == 0
    stats = json.loads((tmp_path / "metrics.json").read_text())
    assert stats["inputs"] == 120 == stats["accepted"] + stats["rejected"]
    assert len(stats["shards_by_split"]["train"]) == -(-stats["accepted_by_split"]["train"] // 40)
    err = capsys.readouterr().err
    assert "curate done" in err and "manifest:" in err and "MLflow:" in err
    run = _only_run(tmp_path / "mlflow.db")
    assert run.data.tags["dualtoken.stage"] == "curate" and run.data.params["curate.samples_per_shard"] == "40"
    assert run.data.metrics["inputs"] == 120


def test_stage_fails_readably_when_validation_fails(tmp_path):
    cli_main(["demo-corpus", "--out", str(tmp_path / "in"), "--num", "60", "--per-shard", "30"])
    params = _params(tmp_path, validation={"min_rows": 1000})
    proc = subprocess.run([sys.executable, "-m", "stages", "curate", "--params", str(params)], capture_output=True,
                          text=True, env={"MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
                                          "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "failed validation" in proc.stderr and "expect_table_row_count_to_be_between" in proc.stderr
    assert "observed=60" in proc.stderr
    result = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert result["success"] is False
    assert _only_run(tmp_path / "mlflow.db").info.status == "FAILED"


@pytest.mark.parametrize(("argv", "who"), [(["curate", "-S", "nonsense"], "curate"),
                                           (["config", "--params", "/nonexistent.yaml"], "dualtoken")])
def test_cli_errors_exit_2(argv, who, capsys):
    assert cli_main(argv) == 2
    assert capsys.readouterr().err.startswith(f"{who}: ")  # a stage's line names the stage, as under DVC


def test_missing_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    params = _params(tmp_path)  # points at shards that were never written
    assert cli_main(["curate", "--params", str(params)]) == 2  # as every stage and command does
    err = capsys.readouterr().err
    assert "curate: input shard" in err and "is missing" in err and "Traceback" not in err


def test_unreachable_tracking_server_fails_fast_with_a_hint(tmp_path, monkeypatch, capsys):
    import time

    from services import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    t0 = time.perf_counter()
    assert cli_main(["curate", "--params", str(_params(tmp_path))]) == 2
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert "is not reachable" in err and "infra/local/mlflow.sh" in err



def test_model_stages_explain_missing_inputs(tmp_path):
    params = _params(tmp_path)
    raw = yaml.safe_load(params.read_text())
    raw["teacher"] = {"output_dir": str(tmp_path / "teacher")}
    raw["tokenizer"] = {"output_dir": str(tmp_path / "tokenizer")}
    params.write_text(yaml.safe_dump(raw))
    for stage, hint in (("teacher", "run the curate stage first"), ("tokenizer", "run the teacher stage first"),
                        ("tokenize", "run the tokenizer stage first")):
        proc = subprocess.run([sys.executable, "-m", "stages", stage, "--params", str(params)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and hint in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_unknown_architecture_names_the_known_ones():
    from dualtoken.models.teacher import vision_config_of

    assert vision_config_of("demo")["hidden_size"] == 128
    with pytest.raises(ValueError, match=r"unknown architecture 'vit-huge'; known: \['demo'"):
        vision_config_of("vit-huge")


def test_pretrained_teacher_is_loaded_evaluated_and_recorded(tmp_path, monkeypatch):
    from dualtoken.models.teacher import checkpoint_digest
    from dualtoken.text import train_bpe
    from tiny import SIZE, tiny_teacher

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli_main(["demo-corpus", "--out", str(tmp_path / "in"), "--num", "120", "--per-shard", "60",
                     "--size", str(SIZE)]) == 0
    params = _params(tmp_path, resolution=SIZE, min_side=8)
    assert cli_main(["curate", "--params", str(params)]) == 0
    tokenizer = train_bpe(["a red circle", "a blue square", "a handwritten digit one"] * 10, vocab_size=300)
    siglip = tiny_teacher(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    siglip.save_pretrained(tmp_path / "siglip")
    tokenizer.save_pretrained(tmp_path / "siglip")
    out = tmp_path / "teacher"
    assert cli_main(["teacher", "--params", str(params), "-S", f"teacher.pretrained={tmp_path / 'siglip'}",
                     "-S", f"teacher.output_dir={out}", "-S", f"teacher.metrics_path={tmp_path / 't.json'}"]) == 0
    identity = json.loads((out / "teacher.json").read_text())
    assert identity["source"] == "pretrained" and identity["sha256"] == checkpoint_digest(tmp_path / "siglip")
    metrics = json.loads((tmp_path / "t.json").read_text())
    assert {"shape", "colour"} <= set(metrics["zero_shot"]) and "image_to_text" in metrics["retrieval_r1"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_each_config_logs_to_its_own_tracking_store(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; it must not capture the next config's runs."""
    import os

    from dualtoken.tracking import TrackingConfig, start_pipeline_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("first", "second"):
        cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / name}.db")
        run_id = start_pipeline_run(cfg, name, {})
        assert mlflow.MlflowClient(cfg.tracking_uri).get_run(run_id).info.run_name == name
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_the_runner_takes_slices_from_the_command_line_or_an_array_task_never_from_torchrun(monkeypatch):
    from argparse import Namespace

    from dualtoken.partition import WorkSlice
    from dualtoken.schema import ConfigError
    from stages import STAGES
    from stages.runner import work_slice

    for name in ("DUALTOKEN_ARRAY_INDEX", "DUALTOKEN_ARRAY_SIZE", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                 "TORCHELASTIC_RUN_ID", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    tokenize, teacher = STAGES["tokenize"], STAGES["teacher"]
    plain = Namespace(rank=None, world=None, finalize=False)
    assert work_slice(tokenize, plain) is None  # the whole input: runtime.nproc decides on a relaunch
    assert work_slice(tokenize, Namespace(rank=1, world=3, finalize=False)) == WorkSlice(1, 3)
    with pytest.raises(ConfigError, match="--rank and --world go together"):
        work_slice(tokenize, Namespace(rank=1, world=None, finalize=False))
    with pytest.raises(ConfigError, match=r"--finalize .* takes no --rank/--world"):
        work_slice(tokenize, Namespace(rank=0, world=2, finalize=True))
    monkeypatch.setenv("DUALTOKEN_ARRAY_INDEX", "2")
    monkeypatch.setenv("DUALTOKEN_ARRAY_SIZE", "4")
    assert work_slice(tokenize, plain) == WorkSlice(2, 4)  # an array task: one process on its slice
    assert work_slice(teacher, Namespace()) is None  # not sliceable: the environment means nothing to it
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert work_slice(tokenize, plain) is None  # under torchrun the ranks split the input themselves


def test_a_schedulers_job_runs_one_process_per_allocated_gpu(monkeypatch):
    """The Slurm and Kubernetes jobs export the GPUs they got (DUALTOKEN_NPROC); runtime.nproc counts here only."""
    from dualtoken.config import parse_config
    from stages import STAGES
    from stages.runner import _processes

    cfg = parse_config({"data": {"sources": [{"kind": "demo"}]}, "tokenizer": {"runtime": {"nproc": 2}}})
    monkeypatch.delenv("DUALTOKEN_NPROC", raising=False)
    assert _processes(STAGES["tokenizer"], cfg) == 2 and _processes(STAGES["curate"], cfg) == 1
    monkeypatch.setenv("DUALTOKEN_NPROC", "8")
    assert _processes(STAGES["tokenizer"], cfg) == 8 and _processes(STAGES["curate"], cfg) == 1
    monkeypatch.setenv("DUALTOKEN_NPROC", "")  # a job without GPUs
    assert _processes(STAGES["tokenizer"], cfg) == 2


def test_every_stage_is_a_command_with_exactly_its_own_options():
    from stages import STAGES
    from stages.cli import build_parser

    parser = build_parser()
    for name, stage in STAGES.items():
        args = parser.parse_args([name, "--params", "p.yaml", "-S", "seed=1"])
        assert args.stage is stage and args.overrides == ["seed=1"]
        with_slice = [name, "--rank", "0", "--world", "2"]
        if stage.sliceable:
            assert parser.parse_args(with_slice).world == 2
        else:
            with pytest.raises(SystemExit):
                parser.parse_args(with_slice)
    assert parser.parse_args(["--local_rank=0", "mllm"]).stage is STAGES["mllm"]  # as the deepspeed launcher
    assert parser.parse_args(["ablation", "a_one_codebook", "d_dualtoken"]).variants == ["a_one_codebook",
                                                                                         "d_dualtoken"]


def test_an_experiment_in_a_temporary_copy_tracks_into_the_workspaces_store(tmp_path, monkeypatch):
    """`dvc exp run --temp` and queued experiments run in a copy DVC deletes; a relative SQLite store there would
    go with it, so its runs go to the workspace's (DVC_ROOT) store, with a warning saying so."""
    from dualtoken.tracking import in_workspace

    workspace, copy = tmp_path / "ws", tmp_path / "ws" / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    with pytest.warns(UserWarning, match="temporary copy"):
        assert in_workspace("sqlite:///mlflow.db", {"DVC_ROOT": str(workspace)}) == \
            f"sqlite:///{workspace.resolve() / 'mlflow.db'}"
    assert in_workspace("sqlite:///mlflow.db", {}) == "sqlite:///mlflow.db"  # no experiment: as configured
    assert in_workspace("sqlite:////srv/m.db", {"DVC_ROOT": str(workspace)}) == "sqlite:////srv/m.db"
    assert in_workspace("http://127.0.0.1:5000", {"DVC_ROOT": str(workspace)}) == "http://127.0.0.1:5000"
    monkeypatch.chdir(workspace)  # a workspace experiment runs in the workspace itself
    assert in_workspace("sqlite:///mlflow.db", {"DVC_ROOT": str(workspace)}) == "sqlite:///mlflow.db"
