"""Seed noise of the conflict ablation: every variant trained at several seeds, and the margins the paper's
ordering needs measured against that noise.

The ablation stage itself (``dualtoken ablation``, the params file's budget and variants) runs once per seed
with the top-level ``seed`` changed, so initialisation of the new parts, data order and quantizer seeding all
vary; the teacher and the curated corpus stay the committed ones (run ``make demo`` first). Each run writes
into ``--out`` (nothing in the repository is touched; MLflow runs go to a SQLite file there). The table: per
variant the mean and spread (sample std) of test PSNR and mean zero-shot through its semantic path, then the
two margins of issue 16: (d) - (a) (>= 2 dB PSNR or >= 5 points zero-shot) and |(d) - (c)| (<= 0.5 dB), per seed.

    python benchmarks/ablation_seeds.py [--seeds 0 1 2] [--out /tmp/ablation-seeds] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from dualtoken.evaluation.ablation import VARIANTS, mean_zero_shot


def run_seed(seed: int, out: Path, params: str) -> dict[str, dict]:
    """The ablation stage at ``seed``; its metrics per variant (reused when this seed already ran)."""
    where = out / f"seed{seed}"
    metrics = where / "metrics"
    if not all((metrics / f"{v}.json").is_file() for v in VARIANTS):  # every variant the ablation knows
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"}
        cmd = [sys.executable, "-m", "stages", "ablation", "--params", params, "-S", f"seed={seed}",
               "-S", f"ablation.variants={json.dumps(list(VARIANTS))}", "-S", f"ablation.output_dir={where / 'models'}",
               "-S", f"ablation.metrics_dir={metrics}", "-S", f"ablation.work_dir={where / 'work'}", *VARIANTS]
        print(f"seed {seed}: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True, env=env)
    return {v: json.loads((metrics / f"{v}.json").read_text()) for v in VARIANTS}


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ablation-seeds"))
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {seed: run_seed(seed, args.out.resolve(), args.params) for seed in args.seeds}

    def psnr(seed: int, v: str) -> float:
        return runs[seed][v]["reconstruction"]["psnr"]

    def zero_shot(seed: int, v: str) -> float:
        return 100 * mean_zero_shot(runs[seed][v]["zero_shot"], "tokenizer")

    print(f"\n| variant | PSNR dB ({len(args.seeds)} seeds) | zero-shot % | per seed PSNR |")
    print("|---|---|---|---|")
    for v in VARIANTS:
        per_seed = ", ".join(f"{psnr(s, v):.2f}" for s in args.seeds)
        shots = spread([zero_shot(s, v) for s in args.seeds]) if VARIANTS[v].semantic_loss else "- (no semantic loss)"
        print(f"| {v} | {spread([psnr(s, v) for s in args.seeds])} | {shots} | {per_seed} |")
    print("\n| margin | per seed | mean |")
    print("|---|---|---|")
    margins = (("(d) - (a) PSNR dB", psnr, "a_one_codebook"),
               ("(d) - (a) zero-shot points", zero_shot, "a_one_codebook"),
               ("(d) - (c) PSNR dB", psnr, "c_recon_pixel_layer"))
    for name, metric, other in margins:
        values = [metric(s, "d_dualtoken") - metric(s, other) for s in args.seeds]
        print(f"| {name} | {', '.join(f'{x:+.2f}' for x in values)} | {statistics.mean(values):+.2f} |")


if __name__ == "__main__":
    main()
