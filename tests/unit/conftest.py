"""The unit tests' shared expensive fixture: a tiny pipeline trained once per session (curated shards ->
tokenizer -> tokens -> MLLM), used by the mllm stage and evaluation tests."""

import pytest

from dualtoken.apps.mllm import main as mllm_main
from dualtoken.apps.tokenize import main as tokenize_main
from dualtoken.config import parse_config
from dualtoken.data.curated import read_images
from dualtoken.text import train_bpe
from tiny import PHASES, saved_tiny_tokenizer, tiny_teacher, write_curated_corpus


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mllm")
    curated = write_curated_corpus(root / "curated", {"train": [6, 6], "val": [4], "test": [2]})
    saved_tiny_tokenizer(root / "tokenizer", read_images(curated, "train", 100).images)
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
                     "verify_images": 0, "runtime": {"device": "cpu", "loader_workers": 0}},
        "mllm": {"output_dir": str(root / "mllm"), "work_dir": str(root / "mllm-work"),
                 "metrics_path": str(root / "mllm.json"),
                 "plots_path": str(root / "mllm-train.csv"), "batch_size": 4, "phases": PHASES,
                 "architecture": "demo", "llm": {"vocab_size": 300},
                 "overrides": {"hidden_size": 32, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate_size": 64,
                               "max_positions": 64, "projector_hidden": 32, "head_width": 16, "head_layers": 1,
                               "head_heads": 2},
                 "runtime": {"device": "cpu", "log_every": 1, "checkpoint_every": 2},
                 "eval": {"vqa_questions": 10, "generated_images": 3, "batch_size": 4}},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
    })
    tokenize_main(cfg)
    return root, cfg, mllm_main(cfg)
