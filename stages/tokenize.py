"""DVC stage ``tokenize``: curated image shards -> dual-code token shards, verified, with code statistics."""

from __future__ import annotations

import sys

from stages.common import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("tokenize", "stages.tokenize", sys.argv[1:]))
