"""What every stage application shares (teacher, tokenizer, tokenize, MLLM, ablation, evaluate): process set-up,
an MLflow run on rank 0 only, step metrics streamed to it, and the metrics JSON DVC reads."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dualtoken.config import Config
from dualtoken.storage import atomic_write
from dualtoken.tracking import numeric_metrics, stage_run
from dualtoken.training.config import ProcessConfig
from dualtoken.training.distributed import DistContext, init_distributed


def setup_process(runtime: ProcessConfig, seed: int, timeout_s: int = 1800) -> DistContext:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)
    ctx = init_distributed(runtime.device, timeout_s)
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP also broadcasts them)
    return ctx


@contextlib.contextmanager
def tracked(stage: str, cfg: Config, sections: tuple[str, ...], ctx: DistContext) -> Iterator[Any]:
    """The stage's MLflow run on rank 0; ``None`` on the other ranks, which log nothing."""
    if not ctx.is_main:
        yield None
        return
    with stage_run(stage, cfg.tracking, cfg.model_dump(mode="json", include=set(sections))) as run:
        yield run


class CurveLog:
    """The logged training steps: each row goes to MLflow as it comes (``prefix.key``) and is kept for the
    DVC plot CSV written at the end. A resumed run's CSV starts where it resumed; the killed attempt's
    earlier rows stay in MLflow."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.rows = prefix, []

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics({f"{self.prefix}.{k}": v for k, v in metrics.items()}, step=step)
        self.rows.append({"step": step, **metrics})

    def write_csv(self, path: str | Path | None) -> None:
        if path is None:
            return
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys or ["step"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_write(path, "w") as handle:
            handle.write(buffer.getvalue())


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    with atomic_write(path, "w") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)
        handle.write("\n")


def log_final_metrics(metrics: dict[str, Any], step: int) -> None:
    import mlflow

    mlflow.log_metrics(numeric_metrics(metrics), step=step)
