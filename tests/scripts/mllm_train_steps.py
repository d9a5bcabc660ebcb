"""Train the tiny MLLM through two phases and write every step's loss and the final weights' sum to a JSON
file (argv[1]).

Run as one process or under torchrun; argv[2] is the gradient accumulation (same global batch either way),
argv[3] the work folder, argv[4] the ZeRO stage.
"""

import json
import sys
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualtoken.config import MllmConfig
from dualtoken.data.sequences import SequenceCorpus
from dualtoken.training.distributed import init_distributed, shutdown_distributed
from dualtoken.training.mllm import train_mllm
from tiny import tiny_mllm, tiny_text_tokenizer, tiny_token_split

out, accum, work, zero = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ctx = init_distributed("cpu")
split = tiny_token_split(24)
tokenizer = tiny_text_tokenizer(split)
model = tiny_mllm(tokenizer)
cfg = MllmConfig.model_validate({
    "batch_size": 8, "work_dir": work, "zero_stage": zero, "optim": {"lr": 3e-3, "warmup_steps": 0},
    "phases": [{"name": "understand", "steps": 2, "lr": 3e-3, "train": ["projector", "llm"],
                "tasks": {"caption": 1, "vqa": 1}},
               {"name": "all", "steps": 2, "lr": 3e-3, "train": ["projector", "llm", "heads"],
                "tasks": {"caption": 1, "vqa": 1, "t2i": 1}}],
    "runtime": {"device": "cpu", "grad_accum": accum, "log_every": 1, "checkpoint_every": 100}})
rows = train_mllm(cfg, model, SequenceCorpus(split, tokenizer, 16), ctx, 0, {}, Console(stderr=True))
if ctx.is_main:  # every rank holds the full weights again once a phase's engine is gone (also under ZeRO-3)
    total = float(sum(p.detach().double().sum() for p in model.parameters()))
    out.write_text(json.dumps({"losses": [r["loss"] for r in rows], "weights": total}))
shutdown_distributed()
