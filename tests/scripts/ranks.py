"""Relaunches itself under torchrun as a stage does (``dualtoken.training.distributed``), then every rank says
what it joined. A job runs it to check the launch path end to end: ``python -m ranks NPROC``."""

import os
import sys

from dualtoken.training.distributed import (
    init_distributed,
    needs_torchrun,
    relaunch_under_torchrun,
    shutdown_distributed,
)

if __name__ == "__main__":
    nproc = int(sys.argv[1])
    if needs_torchrun(nproc):
        sys.exit(relaunch_under_torchrun("ranks", nproc, sys.argv[1:]))
    ctx = init_distributed("cpu")
    total = ctx.reduce_number(ctx.rank + 1)  # a real collective over the group
    line = (f"rank {ctx.rank}/{ctx.world} run {os.environ['TORCHELASTIC_RUN_ID']} step "
            f"{os.environ.get('SLURM_STEP_ID', '-')} sum {total:.0f}\n")
    os.write(sys.stdout.fileno(), line.encode())  # one write: both ranks share the job's log and print at once
    shutdown_distributed()
