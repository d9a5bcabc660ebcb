"""A throw-away copy of this repository (tracked + untracked, not ignored) as its own git + DVC workspace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# Small enough for CI, large enough for the GX split-fraction checks to mean something.
SMALL_PARAMS = {
    "data.sources": [
        {"kind": "demo", "name": "shapes", "num_images": 240, "images_per_shard": 80},
        {"kind": "mnist", "name": "mnist", "num_images": 80, "images_per_shard": 40},
    ],
    "curate.validation": {"min_rows": 200, "max_rows": 1000, "split_tolerance": 0.06},
    "curate.samples_per_shard": 200,
    # A few steps each: the stages' plumbing (DVC, MLflow, registry), not model quality.
    "teacher.steps": 4,
    "teacher.batch_size": 16,
    "teacher.runtime.log_every": 2,
    "tokenizer.steps": 3,
    "tokenizer.batch_size": 8,
    "tokenizer.losses.gan_start_step": 1,
    "tokenizer.runtime.log_every": 1,
    "tokenizer.image_log_every": 2,
    "mllm.phases": [{"name": "align", "steps": 2, "lr": 1e-3, "train": ["projector", "llm"], "tasks": {"caption": 1}},
                    {"name": "joint", "steps": 2, "lr": 1e-3, "train": ["projector", "llm", "heads"],
                     "tasks": {"caption": 1, "vqa": 1, "t2i": 1}}],
    "mllm.batch_size": 6,
    "mllm.llm": {"pretrained": None, "vocab_size": 400, "bpe_samples": 100000},
    "mllm.overrides": {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate_size": 128,
                       "max_positions": 128},
    "mllm.eval": {"vqa_questions": 16, "generated_images": 4, "batch_size": 8,
                  "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "cfg_scale": 3.0}},
    "mllm.runtime.log_every": 1,
    # Two of the four ablation variants (each is its own DVC stage and process), two steps each.
    "ablation.variants": ["a_one_codebook", "d_dualtoken"],
    "ablation.steps": 2,
    "ablation.batch_size": 8,
    "evaluate.images": 16,
    "evaluate.batch_size": 16,
    "evaluate.vqa_questions": 8,
    "evaluate.caption_images": 4,
    "evaluate.generated_images": 4,
    "evaluate.report_prompts": 2,
    "evaluate.report_samples": 2,
}


def make_workspace(dest: Path, params: dict | None = None) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    for dotted, value in (params if params is not None else SMALL_PARAMS).items():
        node = raw
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=test"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "workspace"], cwd=dest, check=True)
    return dest


def workspace_env(**extra: str) -> dict[str, str]:
    """PATH with this interpreter's bin first, so DVC's `python -m stages.x` uses the same environment."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env
