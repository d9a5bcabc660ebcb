"""DVC stage ``curate``: raw sources -> validated WebDataset shards, quarantine, manifest, stats."""

from __future__ import annotations

import argparse
import sys

from dualtoken.apps.curate import main
from dualtoken.config import ConfigError, load_config
from dualtoken.curation.job import ValidationFailed
from dualtoken.storage import StorageError
from dualtoken.tracking import TrackingError


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        main(load_config(args.params))
    except (ConfigError, ValidationFailed, StorageError, TrackingError) as err:
        print(f"curate: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
