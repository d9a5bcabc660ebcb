"""The mllm stage end to end on tiny models: curated shards -> tokens -> DeepSpeed training -> evaluation,
save, MLflow registration; then ``dualtoken chat`` / ``dualtoken generate`` from the folder and from the
registered model; the registered candidate served by ``mlflow models predict`` from the logged model alone."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from dualtoken.apps.mllm import check_tasks
from dualtoken.data.texts import TextStats
from dualtoken.models.mllm import DualTokenMLLM
from dualtoken.models.teacher import checkpoint_digest
from dualtoken.schema import ConfigError
from dualtoken.serving.inference import load_mllm
from dualtoken.serving.registry import CHECKPOINT_TAG
from dualtoken.training.mllm_config import MllmConfig
from stages.cli import main as cli
from tiny import PHASES


@pytest.fixture(autouse=True)
def _configured_tracking_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_stage_trains_evaluates_saves_and_registers(trained):
    root, cfg, metrics = trained
    assert metrics["steps"] == 5 and metrics["final"]["loss"] > 0
    vqa, gen = metrics["vqa"], metrics["generation"]
    assert vqa["questions"] == 10 and 0 <= vqa["accuracy"] <= 1 and 0 <= vqa["majority_baseline"] <= 1
    assert gen["images"] >= 1 and gen["shape"]["chance"] == pytest.approx(1 / 6)
    assert json.loads(Path(cfg.mllm.metrics_path).read_text())["vqa"]["accuracy"] == vqa["accuracy"]
    model = DualTokenMLLM.from_pretrained(root / "mllm", local_files_only=True)
    assert model.config.tokenizer_path == str(root / "tokenizer") and len(model.config.tokenizer_sha256) == 64
    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("dualtoken").experiment_id],
                             "tags.`dualtoken.stage` = 'mllm'")[0]
    history = client.get_metric_history(run.info.run_id, "train.pixel.d1")
    assert [m.step for m in history] == [4, 5]  # the generation phase's steps, numbered across phases
    assert {"train.text_loss", "train.tokens_per_s", "train.lr", "vqa.accuracy"} <= set(run.data.metrics)
    assert client.get_model_version("dualtoken-mllm", "1").status == "READY"


def test_a_phase_asking_for_a_task_the_corpus_lacks_is_a_config_error_naming_it(trained):
    root, _, _ = trained
    recorded = json.loads((root / "tokens" / "shards.json").read_text())["texts"]["train"]
    assert recorded["samples"] == 12 and recorded["questions"] > 0  # the tokenize stage counted them
    texts = TextStats()
    for _ in range(6):
        texts.add({"captions": ["a photo"], "qa": []})  # e.g. a folder corpus of captioned photos
    cfg = MllmConfig.model_validate({"phases": PHASES})
    with pytest.raises(ConfigError, match=r"mllm\.phases\.0\.tasks\.vqa: phase 'understand' asks for vqa"):
        check_tasks(cfg, texts)
    check_tasks(cfg.model_copy(update={"run_phases": ["generate"]}), texts)  # that phase needs captions only


def test_chat_and_generate_from_the_folder_and_the_registry(trained, tmp_path, capsys):
    root, cfg, _ = trained
    image = tmp_path / "in.png"
    Image.new("RGB", (50, 40), (200, 20, 20)).save(image)
    assert cli(["chat", "--image", str(image), "what colour is it?", "--model", str(root / "mllm"),
                "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")  # one answer line (an untrained model may say nothing)
    out = tmp_path / "gen.png"
    assert cli(["generate", "a red circle", "-o", str(out), "--model", str(root / "mllm"), "--seed", "1"]) == 0
    assert Image.open(out).size == (32, 32)
    again = tmp_path / "again.png"
    cli(["generate", "a red circle", "-o", str(again), "--model", str(root / "mllm"), "--seed", "1"])
    assert out.read_bytes() == again.read_bytes()  # seeded
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    try:
        registered = load_mllm("models:/dualtoken-mllm/1")
    finally:
        mlflow.set_tracking_uri(None)
    local = load_mllm(str(root / "mllm"))
    for a, b in zip(local.model.state_dict().values(), registered.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert cli(["chat", "--image", str(tmp_path / "missing.png"), "q", "--model", str(root / "mllm")]) == 2
    assert cli(["generate", "x", "--model", str(tmp_path / "nowhere")]) == 2
    assert "run the mllm stage" in capsys.readouterr().err


def _uv_dir() -> str:
    """Where the ``uv`` executable is (MLflow's uv env manager calls it by name)."""
    found = shutil.which("uv")
    if not found:
        probe = subprocess.run(["python3", "-c", "import uv; print(uv.find_uv_bin())"], capture_output=True,
                               text=True)
        found = probe.stdout.strip() if probe.returncode == 0 else None
    if not found:
        pytest.skip("no uv on this machine (`python3 -m pip install uv`; `make venv` installs it)")
    return str(Path(found).parent)


def test_the_registered_candidate_serves_from_the_logged_model_alone(trained, tmp_path):
    """`mlflow models predict` builds an environment from the model's requirements (public versions and the
    package wheel inside the model), away from this repository, and answers a question and draws a prompt."""
    root, cfg, _ = trained
    client = MlflowClient(cfg.tracking.tracking_uri)
    version = client.get_model_version_by_alias("dualtoken-mllm", "candidate")
    assert version.tags[CHECKPOINT_TAG] == checkpoint_digest(root / "mllm")
    assert len(version.tags["git.commit"]) >= 40 and len(version.tags["dvc.lock.sha256"]) == 64
    png = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 20, 20)).save(png, format="PNG")
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"dataframe_split": {
        "columns": ["prompt", "image"],
        "data": [["what colour is it?", base64.b64encode(png.getvalue()).decode()], ["a red circle", ""]]},
        "params": {"max_new_tokens": 3, "seed": 1}}))
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MLFLOW_TRACKING_URI=cfg.tracking.tracking_uri, PATH=f"{venv_bin}:{_uv_dir()}:{os.environ['PATH']}")
    served = subprocess.run([str(venv_bin / "mlflow"), "models", "predict", "-m", "models:/dualtoken-mllm@candidate",
                             "-i", str(request), "-t", "json", "-o", str(tmp_path / "out.json"), "--env-manager",
                             "uv"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    log = served.stdout + served.stderr
    assert served.returncode == 0, log[-4000:]
    assert re.search(r"dualtoken==[\d.]+ \(from file:", log), log[-4000:]  # the wheel, not this checkout
    answer, drawn = json.loads((tmp_path / "out.json").read_text())["predictions"]
    assert isinstance(answer, str)
    assert Image.open(io.BytesIO(base64.b64decode(drawn))).size == (32, 32)


def test_logged_models_require_public_versions():
    from importlib.metadata import version

    from dualtoken.serving.registry import requirements

    pins = dict(r.split("==") for r in requirements())
    assert pins["torch"] == version("torch").split("+")[0] and not any("+" in v for v in pins.values())
