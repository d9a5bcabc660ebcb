"""DVC stage ``ablation@<variant>`` (a ``foreach`` over ``ablation.variants``): train one tokenizer variant
of the conflict ablation with the shared budget and measure it. Processes: ``tokenizer.runtime.nproc``."""

from __future__ import annotations

import sys

from stages.common import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("ablation", "stages.ablation", sys.argv[1:], positional=("variant",),
                       nproc=lambda cfg: cfg.tokenizer.runtime.nproc))
