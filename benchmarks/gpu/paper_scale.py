"""Paper-scale throughput on one GPU with random weights (nothing is downloaded), one table at the end.

1. Tokenizer training at so400m-patch14-384 (bf16 autocast, gradient checkpointing): images/s through the
   real trainer (``train_tokenizer``: all losses, discriminator, checkpoints off the timed path).
2. MLLM training (``train_mllm``: DeepSpeed, the ZeRO stage given, SDPA, bf16, gradient checkpointing) on
   the named Qwen2.5-0.5B and 3B shapes (released LM configs, the paper's heads) with the so400m code layout
   (27 x 27 positions, depth 8, 16384 codes):
   tokens/s and MFU = 6 x parameters x tokens/s / peak bf16 FLOP/s (attention FLOPs left out: a lower bound).

    python benchmarks/gpu/paper_scale.py [--zero 2] [--peak-tflops 989] [--steps 12]
    python benchmarks/gpu/paper_scale.py --smoke     # tiny shapes on CPU: checks the script, measures nothing

Budget: under 5 minutes on an H200. Record results in benchmarks/README.md with the date and the machine.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

RELEASED_VOCAB = 151_936  # Qwen2.5's: the logits' real cost
SMOKE = {"hidden_size": 32, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate_size": 64, "max_positions": 2048,
         "projector_hidden": 32, "head_width": 16, "head_layers": 1, "head_heads": 2}


def tokenizer_images_per_s(smoke: bool, steps: int, batch: int, work: Path) -> float:
    from rich.console import Console
    from safetensors.torch import save_file
    from transformers import SiglipVisionModel

    from dualtoken.data.shards import split_shards
    from dualtoken.models.configuration import named_config
    from dualtoken.models.dualtoken import DualTokenModel
    from dualtoken.models.lpips import LPIPS
    from dualtoken.training.distributed import init_distributed
    from dualtoken.training.tokenizer import train_tokenizer
    from dualtoken.training.tokenizer_config import TokenizerConfig
    from tiny import tiny_tokenizer_config, write_curated_corpus

    config = tiny_tokenizer_config() if smoke else named_config("so400m-patch14-384")
    model = DualTokenModel(config)
    teacher = SiglipVisionModel(config.vision_config)
    size = config.vision_config.image_size
    # streamed as the stage streams them: JPEG shards, decoded by the loader's workers
    corpus = write_curated_corpus(work / "curated", {"train": [batch * 2, batch * 2]}, size=size, image="jpg")
    lpips = work / "lpips_random.safetensors"  # the released perceptual loss's cost; its weights do not matter here
    save_file(LPIPS().state_dict(), str(lpips))
    cfg = TokenizerConfig.model_validate({
        "steps": steps, "batch_size": batch, "work_dir": str(work / "tokenizer"), "image_log_every": 10**6,
        "losses": {"gan_start_step": 0, "lpips_weights": str(lpips)},
        "runtime": {"log_every": 1, "checkpoint_every": 10**6}})
    rates: list[float] = []
    ctx = init_distributed("auto")
    train_tokenizer(cfg, model, teacher, split_shards(corpus, "train"), ctx, 0, {}, Console(),
                    sink=lambda step, row: rates.append(row["samples_per_s"]))
    return statistics.median(rates[2:] or rates)


def mllm_tokens_per_s(shape: str, smoke: bool, steps: int, batch: int, zero: int, work: Path) -> tuple[float, int]:
    from rich.console import Console

    from dualtoken.data.sequences import SPECIAL_TOKENS
    from dualtoken.data.shards import split_shards
    from dualtoken.data.tokens import STREAMS, read_layout
    from dualtoken.models.mllm import DualTokenMLLM, DualTokenMLLMConfig
    from dualtoken.models.mllm_shapes import named_shape
    from dualtoken.training.distributed import init_distributed
    from dualtoken.training.mllm import TokenSource, train_mllm
    from dualtoken.training.mllm_config import MllmConfig
    from tiny import tiny_text_tokenizer, write_token_corpus

    grid, depth, book, dim = (2, 2, 32, 8) if smoke else (27, 8, 16384, 32)
    root = write_token_corpus(work / f"tokens-{shape}", {"train": [32, 32]}, grid=grid, depth=depth, codebook=book)
    tokenizer = tiny_text_tokenizer(root)
    # the named shape: the released LM and the paper's heads (smoke: the demo's, tiny)
    named = named_shape("demo", **SMOKE) if smoke else named_shape(shape)
    llm = named.llm_config(len(tokenizer) if smoke else max(len(tokenizer), RELEASED_VOCAB))
    codes = {"grid": [grid, grid], **{s: {"depth": depth, "codebook_size": book, "dim": dim, "books": 1}
                                      for s in STREAMS}}
    config = DualTokenMLLMConfig(llm_config=llm, codes=codes, **named.visual(),
                                 special_token_ids={t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS})
    model = DualTokenMLLM(config)
    params = sum(p.numel() for p in model.parameters())
    cfg = MllmConfig.model_validate({
        "batch_size": batch, "work_dir": str(work / f"mllm-{shape}"), "zero_stage": zero,
        "phases": [{"name": "bench", "steps": steps, "lr": 1e-4, "train": ["projector", "llm", "heads"],
                    "tasks": {"caption": 1, "vqa": 1, "t2i": 2}}],
        "runtime": {"log_every": 1, "checkpoint_every": 10**6, "gradient_checkpointing": "auto"}})
    source = TokenSource(split_shards(root, "train"), read_layout(root), tokenizer)
    rows = train_mllm(cfg, model, source, init_distributed("auto"), 0, {}, Console())
    return statistics.median([r["tokens_per_s"] for r in rows[2:]] or [rows[-1]["tokens_per_s"]]), params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zero", type=int, default=2, choices=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--tokenizer-batch", type=int, default=32)
    parser.add_argument("--mllm-batch", type=int, default=16)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    steps = 4 if args.smoke else args.steps
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rate = tokenizer_images_per_s(args.smoke, steps, 4 if args.smoke else args.tokenizer_batch, Path(tmp))
        table.append(("tokenizer so400m-patch14-384" if not args.smoke else "tokenizer (smoke)",
                      f"{rate:,.1f} images/s", "", f"{time.perf_counter() - t0:.0f} s"))
        for shape in (["smoke"] if args.smoke else ["qwen2.5-0.5b", "qwen2.5-3b"]):
            t0 = time.perf_counter()
            tps, params = mllm_tokens_per_s(shape, args.smoke, steps, 4 if args.smoke else args.mllm_batch,
                                            args.zero, Path(tmp))
            mfu = 6 * params * tps / (args.peak_tflops * 1e12)
            table.append((f"mllm {shape} ({params / 1e9:.2f}B, ZeRO-{args.zero})", f"{tps:,.0f} tokens/s",
                          f"MFU {mfu:.1%}", f"{time.perf_counter() - t0:.0f} s"))
    print(f"\n{device}, torch {torch.__version__}")
    for row in table:
        print(" | ".join(f"{c:40s}" if i == 0 else f"{c:>18s}" for i, c in enumerate(row)))


if __name__ == "__main__":
    main()
