"""Two CPU processes under torchrun: DDP keeps every weight and every EMA codebook identical across ranks,
and a checkpoint carries both ranks' RNG states; a bad shard in one rank's share stops the whole stage with
that shard's one line and exit status 2, without the other rank waiting for it."""

import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from dualtoken.data.stream import StreamOrder
from dualtoken.text import train_bpe
from tiny import TOKENIZER, tiny_teacher, write_curated_corpus

REPO = Path(__file__).resolve().parents[2]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tokenizer_ddp_step.py"


def test_two_process_training_step_keeps_ranks_in_lockstep(tmp_path):
    corpus = write_curated_corpus(tmp_path / "corpus", {"train": [13, 19]})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(SCRIPT), str(tmp_path), str(corpus)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    different = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not different, different[:5]
    assert bool(rank0["pixel_quantizer.initialized"]) and bool(rank0["semantic_quantizer.initialized"])
    with safe_open(tmp_path / "rank0.safetensors", "pt") as f0, safe_open(tmp_path / "rank1.safetensors", "pt") as f1:
        assert f0.metadata()["losses"] != f1.metadata()["losses"]  # each rank saw its own half of the batch
    checkpoint = tmp_path / "work" / "checkpoints" / "step-00000002"
    assert {"rng-rank0.safetensors", "rng-rank1.safetensors", "model.safetensors", "discriminator.safetensors",
            "optimizer.pt", "d_optimizer.pt"} <= {p.name for p in checkpoint.iterdir()}


def test_a_bad_shard_in_one_ranks_share_stops_the_stage_with_its_line(tmp_path):
    corpus = write_curated_corpus(tmp_path / "curated", {"train": [12, 12], "val": [4]})
    order = StreamOrder([12, 12], streams=2, seed=0, shuffle_buffer=1000)
    (location,) = order.locate(1, 0, 0, 12)  # rank 1 reads exactly one of the two shards in epoch 0
    bad = corpus / f"train-{location.shard:06d}.tar"
    bad.write_bytes(bad.read_bytes()[:5000])
    text = train_bpe(["a red circle", "a blue square"] * 4, 280)
    teacher = tiny_teacher(vocab_size=len(text), pad_token_id=text.pad_token_id)
    teacher.save_pretrained(tmp_path / "teacher")
    text.save_pretrained(tmp_path / "teacher")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"sources": [{"kind": "demo"}]}, "curate": {"output_dir": str(corpus)},
        "teacher": {"output_dir": str(tmp_path / "teacher")},
        "tokenizer": {"overrides": TOKENIZER, "steps": 4, "batch_size": 4, "work_dir": str(tmp_path / "work"),
                      "output_dir": str(tmp_path / "tokenizer"), "metrics_path": str(tmp_path / "m.json"),
                      "losses": {"discriminator_channels": 8, "discriminator_layers": 2, "perceptual_kind": "teacher"},
                      "runtime": {"nproc": 2, "device": "cpu", "loader_workers": 1}},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}))
    proc = subprocess.run([sys.executable, "-m", "stages", "tokenizer", "--params", str(params)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tokenizer: ") and f"{bad.name}: truncated" in last, proc.stderr[-3000:]
