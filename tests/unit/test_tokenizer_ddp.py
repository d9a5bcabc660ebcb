"""Two CPU processes under torchrun: DDP keeps every weight and every EMA codebook identical across ranks,
and a checkpoint carries both ranks' RNG states."""

import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tokenizer_ddp_step.py"


def test_two_process_training_step_keeps_ranks_in_lockstep(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=300)
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
