"""DVC stage ``tokenizer``: train the DualToken tokenizer from the teacher; evaluate, save, register."""

from __future__ import annotations

import sys

from stages.common import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("tokenizer", "stages.tokenizer", sys.argv[1:]))
