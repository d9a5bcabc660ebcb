"""DVC stage ``evaluate``: every model on the held-out split; metrics, plots and the HTML report."""

from __future__ import annotations

import sys

from stages.common import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("evaluate", "stages.evaluate", sys.argv[1:], nproc=lambda cfg: 1))
