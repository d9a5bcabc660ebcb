"""Run one stage: load params (+ ``-S`` overrides), take this process's slice, relaunch under torchrun where
the stage's section asks for several processes (or nodes), call the application, and turn known failures into
one line with exit status 2 (also when a rank under torchrun failed: its line comes last). A training run stopped
by a scheduler's signal exits ``REQUEUE_EXIT`` after its checkpoint, and leaves the job script its requeue marker."""

from __future__ import annotations

import argparse
import importlib
import sys

from dualtoken.config import Config, load_config
from dualtoken.errors import DualtokenError
from dualtoken.partition import WorkSlice, slice_from_env
from dualtoken.schema import ConfigError
from dualtoken.training.distributed import (
    needs_torchrun,
    processes_per_node,
    relaunch_under_torchrun,
    report_rank_error,
    under_torchrun,
)
from dualtoken.training.preemption import REQUEUE_EXIT, Preempted, ask_for_requeue
from stages import Stage

PROG = "dualtoken"


def fail(who: str, err: Exception, status: int = 2) -> int:
    """Print a known failure as one line, ``who: message`` (and leave it for the relaunching process); exit
    ``status`` (2; a run stopped on a scheduler's signal: ``REQUEUE_EXIT``)."""
    message = f"{who}: {err}"
    print(message, file=sys.stderr)
    report_rank_error(message, status)
    if status == REQUEUE_EXIT:
        ask_for_requeue()
    return status


def work_slice(stage: Stage, args: argparse.Namespace) -> WorkSlice | None:
    """``--rank/--world``, else an array task's slice from the launcher's environment; None: the whole input
    (torchrun's ranks are the application's to split)."""
    rank, world = getattr(args, "rank", None), getattr(args, "world", None)
    if (rank is None) != (world is None):
        raise ConfigError("--rank and --world go together (this process's slice of the shard list)")
    if rank is not None:
        if getattr(args, "finalize", False):
            raise ConfigError("--finalize assembles what every slice wrote: it takes no --rank/--world")
        return WorkSlice(rank, world)
    if stage.sliceable and not under_torchrun():
        env = slice_from_env()
        return None if env.whole else env
    return None


def _processes(stage: Stage, cfg: Config) -> int:
    """One process per allocated GPU in a scheduler's job, else the section's ``runtime.nproc``."""
    return processes_per_node(getattr(cfg, stage.processes).runtime.nproc) if stage.processes else 1


def run(stage: Stage, args: argparse.Namespace, argv: list[str]) -> int:
    """``argv``: this process's own arguments, which a torchrun relaunch hands to every rank unchanged."""
    try:
        cfg = load_config(args.params, args.overrides)
        part = work_slice(stage, args)
        finalize = getattr(args, "finalize", False)
        # an array task, or the assembly after one, is one process on its slice whatever runtime.nproc says
        nproc = _processes(stage, cfg)
        if part is None and not finalize and needs_torchrun(nproc):
            status = relaunch_under_torchrun("stages", nproc, argv)
            if status == REQUEUE_EXIT:
                ask_for_requeue()
            return status
        app = importlib.import_module(stage.app)
        if stage.variants:
            for variant in args.variants or cfg.ablation.variants:
                app.main(cfg, variant)
        elif stage.sliceable:
            app.main(cfg, part=part, **({"finalize_only": finalize} if stage.finalize else {}))
        else:
            app.main(cfg)
    except Preempted as err:
        return fail(stage.name, err, err.exit_code)
    except (DualtokenError, FileNotFoundError) as err:
        return fail(stage.name, err)
    return 0
