"""DVC stage ``curate``: raw sources -> validated WebDataset shards, quarantine, manifest, stats."""

from __future__ import annotations

import argparse
import sys

from dualtoken.apps.curate import main
from dualtoken.config import load_config
from dualtoken.errors import DualtokenError


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        main(load_config(args.params))
    except DualtokenError as err:
        print(f"curate: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
