"""``python -m stages <command>``: the ``dualtoken`` command line, which DVC's stages and torchrun's ranks run."""

import sys

from stages.cli import main

sys.exit(main())
