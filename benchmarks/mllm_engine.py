"""MLLM training step: the DeepSpeed engine (as the stage runs it) against a plain torch loop, same model,
same batches, same run; plus tokens/s for the demo shape and a Qwen2.5-0.5B shape (random weights).

plain = forward, backward, clip, AdamW step, zero_grad. deepspeed = ``engine(...)``, ``engine.backward``,
``engine.step`` with the ZeRO stage asked for (on one CPU process: gloo, a torch AdamW). The ratio
deepspeed/plain (seconds per step) is DeepSpeed's overhead; the target on CPU is <= 1.1.

    python benchmarks/mllm_engine.py [--shapes demo qwen2.5-0.5b] [--steps 8] [--batch 16] [--zero 0 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dualtoken.models.mllm_shapes import SHAPES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

RELEASED_VOCAB = 151_936  # Qwen2.5's: the logits' real cost


def build(shape: str, tokenizer):
    from dualtoken.data.sequences import SPECIAL_TOKENS
    from dualtoken.data.tokens import STREAMS
    from dualtoken.models.mllm import DualTokenMLLM, DualTokenMLLMConfig

    torch.manual_seed(0)
    # the named LM shape; the visual parts are the demo's, on the demo tokenizer's layout
    llm = SHAPES[shape].llm_config(len(tokenizer) if shape == "demo" else max(len(tokenizer), RELEASED_VOCAB))
    codes = {"grid": [8, 8], **{s: {"depth": 4, "codebook_size": 512, "dim": 16, "books": 1} for s in STREAMS}}
    config = DualTokenMLLMConfig(llm_config=llm, codes=codes, **SHAPES["demo"].visual(),
                                 special_token_ids={t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS})
    return DualTokenMLLM(config)


def time_plain(model, data) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for batch in data:
        t0 = time.perf_counter()
        model(**batch.model_inputs()).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def time_deepspeed(model, data, zero: int, ctx) -> list[float]:
    from dualtoken.training.deepspeed_engine import engine_config, running_engine

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    config = engine_config(len(data[0].input_ids), 1, 1, 1.0, zero, "fp32")
    times = []
    with running_engine(model, optimizer, None, config, ctx) as engine:
        for batch in data:
            t0 = time.perf_counter()
            engine.backward(engine(**batch.model_inputs()).loss)
            engine.step()
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["demo", "qwen2.5-0.5b"], choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per engine (after 2 warm-up steps)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--zero", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rich.console import Console

    from dualtoken.training.distributed import DistContext
    from tiny import tiny_mllm_batches, tiny_text_tokenizer, tiny_token_columns, write_token_corpus

    with tempfile.TemporaryDirectory() as tmp:
        root = write_token_corpus(Path(tmp), {"train": [256]}, grid=8, depth=4, codebook=512)
        tokenizer = tiny_text_tokenizer(root)
        columns = tiny_token_columns(root, tokenizer, 32)
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    console = Console()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
                  f"{args.steps} timed steps (median s/step)")
    for shape in args.shapes:
        steps = args.steps if shape == "demo" else max(2, args.steps // 4)
        data = tiny_mllm_batches(columns, tokenizer, {"caption": 1, "vqa": 2, "t2i": 2},
                                 args.batch if shape == "demo" else max(2, args.batch // 8), steps + 2, 64)
        tokens = statistics.mean(b.tokens for b in data)
        model = build(shape, tokenizer)
        params = sum(p.numel() for p in model.parameters())
        plain = statistics.median(time_plain(model, data)[2:])
        line = f"{shape:13s} {params / 1e6:7.1f}M params, {tokens:.0f} tokens/step: plain {plain:.3f} s " \
               f"({tokens / plain:,.0f} tokens/s)"
        for zero in args.zero:
            model = build(shape, tokenizer)
            ds = statistics.median(time_deepspeed(model, data, zero, ctx)[2:])
            line += f"; ZeRO-{zero} {ds:.3f} s ({tokens / ds:,.0f} tokens/s, {ds / plain:.2f}x plain)"
        console.print(line)
        del model


if __name__ == "__main__":
    main()
