"""DVC stage ``mllm``: train the unified MLLM on the token shards with DeepSpeed; evaluate, save, register."""

from __future__ import annotations

import sys

from stages.common import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("mllm", "stages.mllm", sys.argv[1:]))
