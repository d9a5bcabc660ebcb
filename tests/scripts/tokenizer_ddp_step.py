"""Run under torchrun (2 CPU processes): a few tokenizer steps with DDP, each rank streaming its share of the
curated corpus at CORPUS, then each rank dumps what it has.

Usage: python -m torch.distributed.run --standalone --nproc-per-node 2 tests/scripts/tokenizer_ddp_step.py OUT CORPUS
"""

import sys
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny.py

from dualtoken.data.shards import split_shards
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.training.distributed import init_distributed, shutdown_distributed
from dualtoken.training.tokenizer import train_tokenizer
from tiny import tiny_teacher, tiny_tokenizer_config, tokenizer_cfg


def main(out: Path, corpus: Path) -> None:
    ctx = init_distributed("cpu")
    try:
        teacher = tiny_teacher()
        torch.manual_seed(ctx.rank)  # different initial weights per rank: DDP must broadcast rank 0's
        model = DualTokenModel.from_siglip(teacher.vision_model, tiny_tokenizer_config())
        cfg = tokenizer_cfg(out / "work", steps=3, losses={"gan_start_step": 1}, runtime={"checkpoint_every": 2})
        losses = train_tokenizer(cfg, model, teacher.vision_model, split_shards(corpus, "train"), ctx, 0, {},
                                 Console(quiet=True))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / f"rank{ctx.rank}.safetensors"), metadata={"losses": repr(losses)})
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
