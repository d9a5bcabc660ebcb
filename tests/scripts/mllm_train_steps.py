"""Train the tiny MLLM through two phases and write every step's loss and the final weights' sum to a JSON
file (argv[1]).

Run as one process or under torchrun; argv[2] is the gradient accumulation (same global batch either way),
argv[3] the work folder, argv[4] the ZeRO stage, argv[5] the token corpus it streams.
"""

import json
import sys
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualtoken.data.shards import split_shards
from dualtoken.data.tokens import read_layout
from dualtoken.training.distributed import init_distributed, shutdown_distributed
from dualtoken.training.mllm import TokenSource, train_mllm
from dualtoken.training.mllm_config import MllmConfig
from tiny import tiny_mllm, tiny_text_tokenizer

out, accum, work, zero, corpus = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
ctx = init_distributed("cpu")
tokenizer = tiny_text_tokenizer(corpus)
model = tiny_mllm(tokenizer)
cfg = MllmConfig.model_validate({
    "batch_size": 8, "work_dir": work, "zero_stage": zero, "optim": {"warmup_steps": 0},
    "phases": [{"name": "understand", "steps": 2, "lr": 3e-3, "train": ["projector", "llm"],
                "tasks": {"caption": 1, "vqa": 1}},
               {"name": "all", "steps": 2, "lr": 3e-3, "train": ["projector", "llm", "heads"],
                "tasks": {"caption": 1, "vqa": 1, "t2i": 1}}],
    "max_text_tokens": 16,
    "runtime": {"device": "cpu", "grad_accum": accum, "log_every": 1, "checkpoint_every": 100, "loader_workers": 0}})
source = TokenSource(split_shards(corpus, "train"), read_layout(corpus), tokenizer)
rows = train_mllm(cfg, model, source, ctx, 0, {}, Console(stderr=True))
if ctx.is_main:  # every rank holds the full weights again once a phase's engine is gone (also under ZeRO-3)
    total = float(sum(p.detach().double().sum() for p in model.parameters()))
    out.write_text(json.dumps({"losses": [r["loss"] for r in rows], "weights": total}))
shutdown_distributed()
