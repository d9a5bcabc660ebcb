"""What every torch stage entry does: parse ``--params`` (and a stage's own positional arguments), relaunch
under torchrun for ``runtime.nproc > 1`` or a multi-node job (``needs_torchrun``), run the application, turn
known failures into exit status 2 with one line (also when a rank under torchrun failed: its line comes last)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from dualtoken.config import Config, load_config
from dualtoken.errors import DualtokenError
from dualtoken.training.distributed import needs_torchrun, relaunch_under_torchrun, report_rank_error


def _own_processes(stage: str) -> Callable[[Config], int]:
    return lambda cfg: getattr(cfg, stage).runtime.nproc


def run_stage(stage: str, module: str, argv: list[str], positional: tuple[str, ...] = (),
              nproc: Callable[[Config], int] | None = None) -> int:
    """``positional`` names go to the application's ``main`` as keyword arguments (e.g. the ablation variant)."""
    parser = argparse.ArgumentParser(description=f"DVC stage {stage}")
    for name in positional:
        parser.add_argument(name)
    parser.add_argument("--params", default="params.yaml")
    # the deepspeed launcher passes this; the rank is read from LOCAL_RANK, which it sets too
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.params)
        processes = (nproc or _own_processes(stage))(cfg)
        if needs_torchrun(processes):
            return relaunch_under_torchrun(module, processes, argv)
        importlib.import_module(f"dualtoken.apps.{stage}").main(cfg, **{n: getattr(args, n) for n in positional})
    except (DualtokenError, FileNotFoundError) as err:
        message = f"{stage}: {err}"
        print(message, file=sys.stderr)
        report_rank_error(message)
        return 2
    return 0
