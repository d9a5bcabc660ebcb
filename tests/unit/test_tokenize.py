"""Corpus tokenisation with a real (tiny) DualToken model: round trip, determinism, resume after a kill,
slices + finalize, the torchrun stage, and the built-in checks failing loudly."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from mlflow.tracking import MlflowClient

from dualtoken.apps.tokenize import main as tokenize_main
from dualtoken.config import parse_config
from dualtoken.data.curated import from_model_output, read_images, to_model_input
from dualtoken.data.tokens import CorruptTokens, TokenLayout, read_layout, read_token_split
from dualtoken.metrics.reconstruction import psnr
from dualtoken.models.dualtoken import DualTokenCodes
from dualtoken.partition import WorkSlice
from dualtoken.storage import StorageConfig
from dualtoken.tokenization.job import IncompleteTokenization, Settings, ShardStore, make_plan, tokenize_slice
from dualtoken.tokenization.verify import VerificationFailed
from tiny import saved_tiny_tokenizer, write_curated_corpus

REPO = Path(__file__).resolve().parents[2]
KILL_SCRIPT = REPO / "tests" / "scripts" / "tokenize_until_killed.py"
SHARDS = {"train": [5, 5, 3], "val": [4], "test": [2]}
SPLITS = ["train", "val", "test"]
CPU = StorageConfig()


@pytest.fixture(autouse=True)
def _configured_tracking_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # each config's tracking_uri decides


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenize")
    curated = write_curated_corpus(root / "curated", SHARDS)
    model = saved_tiny_tokenizer(root / "model", read_images(curated, "train", 100).images)
    val = read_images(curated, "val", 100).images
    with torch.no_grad():
        val_psnr = float(psnr(val, from_model_output(model.reconstruct(to_model_input(val)))).mean())
    (root / "tokenizer.json").write_text(json.dumps({"psnr": val_psnr}))  # what the tokenizer stage reports
    return root, curated, model


def _settings(workers: int = 0) -> Settings:
    return Settings(4, torch.device("cpu"), "fp32", loader_workers=workers)


def _slice(corpus, work: Path, workers: int = 0, identity=None, **kwargs):
    _, curated, model = corpus
    plan = make_plan(str(curated), SPLITS, TokenLayout.of_model(model.config), CPU)
    return tokenize_slice(model, plan, ShardStore(work), WorkSlice(), identity or {"test": "kill"},
                          _settings(workers), CPU, **kwargs)


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def reference(corpus):
    work = corpus[0] / "reference"
    result = _slice(corpus, work)
    assert result.images == 19 and len(result.tokenized) == 5
    return _tars(work / "shards")


def _cfg(corpus, name: str, **tokenize):
    root, curated, _ = corpus
    return parse_config({
        "data": {"sources": [{"kind": "demo"}]},
        "curate": {"output_dir": str(curated)},
        "tokenizer": {"output_dir": str(root / "model"), "metrics_path": str(root / "tokenizer.json")},
        "tokenize": {"output_dir": str(root / name / "tokens"), "work_dir": str(root / name / "work"),
                     "metrics_path": str(root / name / "tokenize.json"), "plots_dir": str(root / name / "plots"),
                     "batch_size": 4, "runtime": {"device": "cpu", "loader_workers": 0}, **tokenize},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
    })


def test_stage_round_trips_codes_text_and_pixels(corpus, reference):
    root, curated, model = corpus
    cfg = _cfg(corpus, "single")
    metrics = tokenize_main(cfg)
    out = Path(cfg.tokenize.output_dir)
    assert _tars(out) == reference  # same bytes as the job run directly
    assert metrics["counts"] == metrics["curated_counts"] == {"train": 13, "val": 4, "test": 2}
    assert metrics["accounting_ok"] and metrics["shards"] == 5 and metrics["shards_tokenized"] == 5
    assert metrics["tokens"]["total"] == 19 * 16 * (2 + 2)  # 4x4 grid, depth 2 per stream
    check = metrics["verify"]
    assert check["ok"] and check["images"] == 4 and check["delta_db"] <= 0.1
    assert check["delta_tokenizer_stage_db"] <= 0.1  # the tokenizer stage's own val PSNR, reproduced
    assert read_layout(out).pixel.dtype == np.uint16
    for split in SPLITS:
        tokens, images = read_token_split(out, split, 100), read_images(curated, split, 100)
        codes = model.encode(to_model_input(images.images))
        assert torch.equal(tokens.pixel, codes.pixel) and torch.equal(tokens.semantic, codes.semantic)
        assert tokens.meta == images.meta and tokens.keys == [m["key"] for m in images.meta]
        with torch.no_grad():
            assert torch.equal(model.decode(tokens.pixel), model.reconstruct(to_model_input(images.images)))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "train-000000.tar").stat().st_mode) == 0o666 & ~umask  # readable by the team
    index = json.loads((out / "shards.json").read_text())
    texts = index["texts"]["train"]
    curated_metas = read_images(curated, "train", 100).meta
    assert texts["samples"] == 13 and texts["questions"] == sum(len(m["qa"]) for m in curated_metas)
    assert texts["captions"] == sum(len(m["captions"]) for m in curated_metas) and texts["answers"]
    assert all((out / f"{name}.idx").is_file() for name in index["shards"])  # the loaders' offset indexes
    streamed = list(wds.WebDataset(str(out / "train-{000000..000002}.tar"), shardshuffle=False).decode())
    assert [s["__key__"] for s in streamed] == [m["key"] for m in curated_metas]  # any WebDataset reader
    assert streamed[0]["pixel.npy"].shape == (4, 4, 2)
    saved = json.loads(Path(cfg.tokenize.metrics_path).read_text())
    assert saved["codes"]["pixel"]["usage"]["d1"] > 0 and saved["codes"]["pixel"]["codebook_size"] == 32
    assert (Path(cfg.tokenize.plots_dir) / "code_usage.png").read_bytes()[:4] == b"\x89PNG"

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("dualtoken").experiment_id],
                                filter_string="tags.`dualtoken.stage` = 'tokenize'")
    assert run.data.metrics["verify.psnr_written"] == pytest.approx(check["psnr_written"])
    assert run.data.metrics["codes.semantic.entropy_bits.d1"] == saved["codes"]["semantic"]["entropy_bits"]["d1"]
    assert {"tokenize/code_usage.png", "tokenize/code_usage.csv", "tokenize/shards.json", "tokenize/tokenize.json"} \
        <= {a.path for a in client.list_artifacts(run.info.run_id, "tokenize")}
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"curated", "tokens"}

    again = tokenize_main(cfg)  # everything is marked done: nothing is encoded twice
    assert again["shards_tokenized"] == 0 and again["shards_kept"] == 5 and _tars(out) == reference


def test_output_does_not_depend_on_loader_workers(corpus, reference):
    result = _slice(corpus, corpus[0] / "workers", workers=2)
    assert sorted(result.tokenized) == sorted(reference) and _tars(corpus[0] / "workers" / "shards") == reference


def test_resume_after_a_kill_redoes_only_unfinished_shards(corpus, reference):
    root, curated, _ = corpus
    work = root / "killed"
    proc = subprocess.run([sys.executable, str(KILL_SCRIPT), str(curated), str(root / "model"), str(work), "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-3000:]
    store = ShardStore(work)
    assert store.marker("train-000000.tar").is_file()
    assert not store.marker("train-000001.tar").exists()  # the other worker's shard was in flight
    seen: list[str] = []
    result = _slice(corpus, work, on_shard=lambda record, done, total: seen.append(f"{record.name} {done}/{total}"))
    assert result.resumed == ["train-000000.tar"]
    assert sorted(result.tokenized) == ["test-000000.tar", "train-000001.tar", "train-000002.tar", "val-000000.tar"]
    assert seen[-1].endswith("5/5") and result.images == 14
    assert _tars(work / "shards") == reference
    assert not list((work / "shards").glob(".*.tmp"))  # the killed writer's temporary file is gone


def test_changed_settings_redo_every_shard(corpus, reference):
    work = corpus[0] / "changed"
    _slice(corpus, work)
    result = _slice(corpus, work, identity={"test": "another tokenizer"})
    assert result.resumed == [] and len(result.tokenized) == 5


def test_slices_then_finalize_equal_the_single_run(corpus, reference, capsys):
    cfg = _cfg(corpus, "sliced")
    assert tokenize_main(cfg, part=WorkSlice(0, 2)) == {}  # a lone slice stops before assembling
    assert "dualtoken tokenize --finalize" in capsys.readouterr().err
    with pytest.raises(IncompleteTokenization, match="2 of 5 shards are not tokenised yet"):
        tokenize_main(cfg, finalize_only=True)
    tokenize_main(cfg, part=WorkSlice(1, 2))
    metrics = tokenize_main(cfg, finalize_only=True)
    assert _tars(Path(cfg.tokenize.output_dir)) == reference
    assert metrics["shards_kept"] == 5 and metrics["throughput"]["images_per_s"] is None


def test_two_ranks_under_torchrun_match_one_process(corpus, reference, tmp_path):
    cfg = _cfg(corpus, "torchrun", runtime={"device": "cpu", "nproc": 2, "threads": 1})
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "stages", "tokenize", "--params", str(params)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _tars(Path(cfg.tokenize.output_dir)) == reference
    metrics = json.loads(Path(cfg.tokenize.metrics_path).read_text())
    assert metrics["shards_tokenized"] == 5 and metrics["throughput"]["images"] == 19  # both ranks counted
    assert metrics["verify"]["ok"]


def test_reconstruction_mismatch_fails_the_stage(corpus, tmp_path):
    root = corpus[0]
    wrong = tmp_path / "tokenizer.json"
    wrong.write_text(json.dumps({"psnr": json.loads((root / "tokenizer.json").read_text())["psnr"] + 1.0}))
    cfg = _cfg(corpus, "mismatch")
    cfg = cfg.model_copy(update={"tokenizer": cfg.tokenizer.model_copy(update={"metrics_path": str(wrong)})})
    with pytest.raises(VerificationFailed, match="tokenizer stage's val PSNR"):
        tokenize_main(cfg)
    assert json.loads(Path(cfg.tokenize.metrics_path).read_text())["verify"]["ok"] is False


class _OffByOne:
    """A faulty tokenizer: the real model's codes shifted past the end of the pixel codebook."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def eval(self):
        return self

    def encode(self, x):
        codes = self.model.encode(x)
        return DualTokenCodes(pixel=codes.pixel + self.config.pixel_codebook_size, semantic=codes.semantic)


def test_out_of_range_codes_are_caught_before_anything_is_written(corpus, tmp_path):
    _, curated, model = corpus
    plan = make_plan(str(curated), ["val"], TokenLayout.of_model(model.config), CPU)
    store = ShardStore(tmp_path)
    with pytest.raises(CorruptTokens, match=r"val-000000\.tar: pixel codes of .* outside the codebook \[0, 32\)"):
        tokenize_slice(_OffByOne(model), plan, store, WorkSlice(), {}, _settings(), CPU)
    assert not any(store.root.iterdir())  # no shard, no marker, no temporary file


def test_stage_without_a_tokenizer_says_what_to_run(corpus, tmp_path):
    cfg = _cfg(corpus, "nomodel", tokenizer=str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="run the tokenizer stage first"):
        tokenize_main(cfg)


def test_cli_slice_options_are_checked(corpus, tmp_path, capsys):
    from stages.cli import main as cli_main

    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(_cfg(corpus, "cli").model_dump(mode="json")))
    assert cli_main(["tokenize", "--params", str(params), "--rank", "0"]) == 2
    assert "--rank and --world go together" in capsys.readouterr().err
    assert cli_main(["tokenize", "--params", str(params), "--rank", "2", "--world", "2"]) == 2
    assert "rank 2 is not in [0, 2)" in capsys.readouterr().err
    assert cli_main(["tokenize", "--params", str(params), "--finalize"]) == 2
    assert "5 of 5 shards are not tokenised yet" in capsys.readouterr().err
