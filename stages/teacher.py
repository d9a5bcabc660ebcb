"""DVC stage ``teacher``: train the demo SigLIP teacher from scratch (or record a pretrained one)."""

from __future__ import annotations

import sys

from stages.common import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("teacher", "stages.teacher", sys.argv[1:]))
