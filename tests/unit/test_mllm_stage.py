"""The mllm stage end to end on tiny models: curated shards -> tokens -> DeepSpeed training -> evaluation,
save, MLflow registration; then ``dualtoken chat`` / ``dualtoken generate`` from the folder and from the
registered model."""

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from dualtoken.apps.mllm import check_tasks
from dualtoken.data.texts import TextStats
from dualtoken.models.mllm import DualTokenMLLM
from dualtoken.schema import ConfigError
from dualtoken.serving.inference import load_mllm
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


def test_logged_models_require_public_versions_and_carry_the_package():
    from importlib.metadata import version

    from dualtoken.serving.registry import PACKAGE, requirements

    pins = dict(r.split("==") for r in requirements())
    assert pins["torch"] == version("torch").split("+")[0] and not any("+" in v for v in pins.values())
    assert (PACKAGE / "models" / "dualtoken.py").is_file()  # what code_paths copies into the model
