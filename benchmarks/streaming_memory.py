"""Peak memory of the training loops against corpus size: the tokenizer trainer and the MLLM trainer, 20 steps
each, on a 4k- and a 100k-sample corpus made from the demo source, each run in a fresh process.

The trainers stream their shards, so the peak RSS should not depend on the corpus: the ratio 100k / 4k is the
measure (target <= 1.15). Holding the split would add about 12 KB per 64 px image (1.2 GB at 100k). Models are
the demo's shapes with random weights; loader workers 0 (every decoded sample is in the measured process); the
library's default shuffle buffer (1,000 samples: below both corpus sizes, so both runs stream through a
window). The large corpora repeat 4,000 rendered scenes under distinct keys: the loaders see 100k samples, the
writing takes seconds. The last line is one JSON object:
``{"rss_ratio_tokenizer": x, "rss_ratio_mllm": y}``.

    python benchmarks/streaming_memory.py [--small 4000] [--large 100000] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))


def _shards(total: int, per: int = 1000) -> list[int]:
    return [min(per, total - start) for start in range(0, total, per)]


def run_tokenizer(root: Path, work: Path, steps: int) -> None:
    import torch
    from rich.console import Console
    from transformers import SiglipVisionModel

    from dualtoken.data.shards import split_shards
    from dualtoken.models.configuration import named_config
    from dualtoken.models.dualtoken import DualTokenModel
    from dualtoken.training.distributed import DistContext
    from dualtoken.training.tokenizer import train_tokenizer
    from dualtoken.training.tokenizer_config import TokenizerConfig

    torch.manual_seed(0)
    config = named_config("demo")
    cfg = TokenizerConfig.model_validate({
        "steps": steps, "batch_size": 32, "shuffle_buffer": 1000, "work_dir": str(work), "image_log_every": 10**6,
        "losses": {"gan_start_step": 10**6, "perceptual_kind": "teacher"},
        "runtime": {"device": "cpu", "loader_workers": 0, "log_every": steps, "checkpoint_every": 10**6}})
    train_tokenizer(cfg, DualTokenModel(config), SiglipVisionModel(config.vision_config), split_shards(root, "train"),
                    DistContext(0, 1, 0, torch.device("cpu")), 0, {}, Console(quiet=True))


def run_mllm(root: Path, work: Path, steps: int, tokenizer_dir: Path) -> None:
    import torch
    from mllm_engine import build
    from rich.console import Console
    from transformers import AutoTokenizer

    from dualtoken.data.shards import split_shards
    from dualtoken.data.tokens import read_layout
    from dualtoken.training.distributed import DistContext
    from dualtoken.training.mllm import TokenSource, train_mllm
    from dualtoken.training.mllm_config import MllmConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = MllmConfig.model_validate({
        "batch_size": 32, "shuffle_buffer": 1000, "work_dir": str(work), "zero_stage": 0, "max_text_tokens": 32,
        "phases": [{"name": "all", "steps": steps, "lr": 1e-4, "train": ["projector", "llm", "heads"],
                    "tasks": {"caption": 1, "vqa": 2, "t2i": 2}}],
        "runtime": {"device": "cpu", "loader_workers": 0, "log_every": steps, "checkpoint_every": 10**6}})
    source = TokenSource(split_shards(root, "train"), read_layout(root), tokenizer)
    train_mllm(cfg, build("demo", tokenizer), source, DistContext(0, 1, 0, torch.device("cpu")), 0, {},
               Console(quiet=True))


def child(kind: str, root: Path, work: Path, steps: int, tokenizer_dir: Path | None) -> None:
    if kind == "tokenizer":
        run_tokenizer(root, work, steps)
    else:
        run_mllm(root, work, steps, tokenizer_dir)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(kind: str, root: Path, work: Path, steps: int, tokenizer_dir: Path | None = None) -> float:
    argv = [sys.executable, __file__, "--child", kind, str(root), str(work), str(steps), str(tokenizer_dir or "")]
    out = subprocess.run(argv, check=True, capture_output=True, text=True,
                         env={"TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2",
                              "PYTHONPATH": str(TESTS.parent / "benchmarks")})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, root, work, steps, tok = sys.argv[2:7]
        child(kind, Path(root), Path(work), int(steps), Path(tok) if tok else None)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=4000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    from tiny import tiny_text_tokenizer, write_curated_corpus, write_token_corpus

    peaks: dict[str, dict[int, float]] = {"tokenizer": {}, "mllm": {}}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp_path = Path(tmp)
        for n in (args.small, args.large):
            curated = write_curated_corpus(tmp_path / f"curated-{n}", {"train": _shards(n)}, size=64, distinct=4000)
            tokens = write_token_corpus(tmp_path / f"tokens-{n}", {"train": _shards(n)}, grid=8, depth=4,
                                        codebook=512, distinct=4000)
            if n == args.small:  # one text tokenizer for both runs: the trainer is what is measured
                tiny_text_tokenizer(tokens).save_pretrained(tmp_path / "bpe")
            peaks["tokenizer"][n] = measure("tokenizer", curated, tmp_path / f"work-t-{n}", args.steps)
            peaks["mllm"][n] = measure("mllm", tokens, tmp_path / f"work-m-{n}", args.steps, tmp_path / "bpe")
            print(f"{n:>7} samples: peak RSS tokenizer trainer {peaks['tokenizer'][n]:.0f} MB, "
                  f"MLLM trainer {peaks['mllm'][n]:.0f} MB", flush=True)
    ratios = {f"rss_ratio_{k}": round(v[args.large] / v[args.small], 3) for k, v in peaks.items()}
    print(f"ratio {args.large} / {args.small}: tokenizer {ratios['rss_ratio_tokenizer']:.3f}, "
          f"MLLM {ratios['rss_ratio_mllm']:.3f} (target <= 1.15)")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
