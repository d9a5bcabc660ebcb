"""The demo MLLM's recipe, searched: VQA per question type and teacher-judged generation for each variant.

Each row runs the MLLM stage itself (``dualtoken mllm``: params.yaml plus that row's overrides) on the
committed token corpus and tokenizer (run ``make demo`` first), into ``--out``; nothing in the repository is
touched and MLflow runs go to a SQLite file there. The stage's own evaluation scores it: VQA on the first
``mllm.eval.images`` val samples (exact match, per type), images generated from val captions judged by the
teacher (chance 1/6 shape, 1/8 colour). Rows that already ran are read back. Times are this machine's.

    python benchmarks/mllm_recipe.py [--rows NAME ...] [--out /tmp/mllm-recipe] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dualtoken.config import load_config

QUESTION_TYPES = ("colour", "shape", "position", "exists", "count", "digit")


def phase_steps(params: str, **steps: int) -> str:
    """An ``mllm.phases`` override: the params file's phases with the named phases' steps replaced."""
    phases = [p.model_dump(mode="json") for p in load_config(params).mllm.phases]
    unknown = set(steps) - {p["name"] for p in phases}
    if unknown:
        raise ValueError(f"no phases {sorted(unknown)} in {params}")
    return "mllm.phases=" + json.dumps([{**p, "steps": steps.get(p["name"], p["steps"])} for p in phases])


def rows(params: str) -> dict[str, list[str]]:
    """Variant name -> its overrides of the params file."""
    return {
        "params.yaml": [],
        "one question per sequence": ["mllm.vqa_turns=1"],
        "understand 3x (480 steps)": [phase_steps(params, understand=480)],
        "generate 4x (240 steps)": [phase_steps(params, generate=240)],
    }


def run_row(name: str, overrides: list[str], out: Path, params: str) -> dict[str, Any]:
    """The MLLM stage with ``overrides``; its metrics (reused when this row already ran)."""
    where = out / name.replace(" ", "_").replace("(", "").replace(")", "")
    metrics = where / "metrics.json"
    if not metrics.is_file():
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"}
        sets = [*overrides, f"mllm.output_dir={where / 'model'}", f"mllm.metrics_path={metrics}",
                f"mllm.work_dir={where / 'work'}", f"mllm.plots_path={where / 'train.csv'}", "mllm.register_as=null"]
        cmd = [sys.executable, "-m", "stages", "mllm", "--params", params, *(a for s in sets for a in ("-S", s))]
        print(f"{name}: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True, env=env)
    return json.loads(metrics.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--rows", nargs="*", default=None, help="variant names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mllm-recipe"))
    args = parser.parse_args()
    variants = rows(args.params)
    chosen = args.rows or list(variants)
    unknown = [r for r in chosen if r not in variants]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows are {list(variants)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {r: run_row(r, variants[r], args.out.resolve(), args.params) for r in chosen}

    print(f"\n| variant | VQA | {' | '.join(QUESTION_TYPES)} | generated shape | generated colour | train s |")
    print("|---|---|" + "---|" * len(QUESTION_TYPES) + "---|---|---|")
    for r, m in results.items():
        per_type = m["vqa"]["per_type"]
        types = " | ".join(f"{per_type[t]['accuracy']:.2f}" if t in per_type else "-" for t in QUESTION_TYPES)
        gen = m.get("generation", {})
        judged = " | ".join(f"{gen[t]['accuracy']:.2f}" if t in gen else "-" for t in ("shape", "colour"))
        print(f"| {r} | {m['vqa']['accuracy']:.3f} | {types} | {judged} | {m['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
