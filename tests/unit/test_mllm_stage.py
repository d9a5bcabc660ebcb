"""The mllm stage end to end on tiny models: curated shards -> tokens -> DeepSpeed training -> evaluation,
save, MLflow registration; then ``dualtoken chat`` / ``dualtoken generate`` from the folder and from the
registered model."""

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from dualtoken.apps.inference import load_mllm
from dualtoken.apps.mllm import check_tasks
from dualtoken.apps.mllm import main as mllm_main
from dualtoken.apps.tokenize import main as tokenize_main
from dualtoken.cli import main as cli
from dualtoken.config import ConfigError, MllmConfig, parse_config
from dualtoken.data.curated import load_split
from dualtoken.data.sequences import SequenceCorpus
from dualtoken.models.mllm import DualTokenMLLM
from dualtoken.text import train_bpe
from tiny import saved_tiny_tokenizer, tiny_teacher, tiny_text_tokenizer, tiny_token_split, write_curated_corpus

PHASES = [{"name": "understand", "steps": 3, "lr": 3e-3, "train": ["projector", "llm"],
           "tasks": {"caption": 1, "vqa": 1}},
          {"name": "generate", "steps": 2, "lr": 3e-3, "train": ["heads"], "tasks": {"t2i": 1}}]


@pytest.fixture(autouse=True)
def _configured_tracking_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mllm")
    curated = write_curated_corpus(root / "curated", {"train": [6, 6], "val": [4], "test": [2]})
    saved_tiny_tokenizer(root / "tokenizer", load_split(curated, "train").images)
    teacher_text = train_bpe(["a red circle", "a blue square"] * 4, 280)
    teacher = tiny_teacher(vocab_size=len(teacher_text), pad_token_id=teacher_text.pad_token_id)
    teacher.save_pretrained(root / "teacher")
    teacher_text.save_pretrained(root / "teacher")
    cfg = parse_config({
        "data": {"sources": [{"kind": "demo"}]},
        "curate": {"output_dir": str(curated)},
        "teacher": {"output_dir": str(root / "teacher")},
        "tokenizer": {"output_dir": str(root / "tokenizer"), "metrics_path": str(root / "no-metrics.json")},
        "tokenize": {"output_dir": str(root / "tokens"), "work_dir": str(root / "tokenize-work"),
                     "metrics_path": str(root / "tokenize.json"), "plots_dir": str(root / "plots"), "batch_size": 4,
                     "loader_workers": 0, "verify_images": 0, "runtime": {"device": "cpu"}},
        "mllm": {"output_dir": str(root / "mllm"), "work_dir": str(root / "mllm-work"),
                 "metrics_path": str(root / "mllm.json"), "batch_size": 4, "phases": PHASES,
                 "llm": {"hidden_size": 32, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate_size": 64,
                         "vocab_size": 300, "max_positions": 64},
                 "head": {"projector_hidden": 32, "width": 16, "layers": 1, "heads": 2},
                 "runtime": {"device": "cpu", "log_every": 1, "checkpoint_every": 2},
                 "eval": {"vqa_questions": 10, "generated_images": 3, "batch_size": 4}},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
    })
    tokenize_main(cfg)
    return root, cfg, mllm_main(cfg)


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


def test_a_phase_asking_for_a_task_the_corpus_lacks_is_a_config_error_naming_it():
    split = tiny_token_split(6)
    for meta in split.meta:
        meta["qa"] = []  # e.g. a folder corpus of captioned photos
    corpus = SequenceCorpus(split, tiny_text_tokenizer(split), 16)
    cfg = MllmConfig.model_validate({"phases": PHASES})
    with pytest.raises(ConfigError, match=r"mllm\.phases\.0\.tasks\.vqa: phase 'understand' asks for vqa"):
        check_tasks(cfg, corpus)
    check_tasks(cfg.model_copy(update={"run_phases": ["generate"]}), corpus)  # that phase needs captions only


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
