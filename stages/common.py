"""What every torch stage entry (teacher, tokenizer, tokenize) does: parse ``--params``, relaunch under
torchrun for ``runtime.nproc > 1``, run the application, turn known failures into exit status 2 with one line."""

from __future__ import annotations

import argparse
import importlib
import sys

from dualtoken.config import load_config
from dualtoken.errors import DualtokenError
from dualtoken.training.distributed import relaunch_under_torchrun, under_torchrun


def run_stage(stage: str, module: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=f"DVC stage {stage}")
    parser.add_argument("--params", default="params.yaml")
    # the deepspeed launcher passes this; the rank is read from LOCAL_RANK, which it sets too
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.params)
        nproc = getattr(cfg, stage).runtime.nproc
        if nproc > 1 and not under_torchrun():
            return relaunch_under_torchrun(module, nproc, argv)
        importlib.import_module(f"dualtoken.apps.{stage}").main(cfg)
    except (DualtokenError, FileNotFoundError) as err:
        print(f"{stage}: {err}", file=sys.stderr)
        return 2
    return 0
