"""Experiments through the flow, as ``dvc exp run -S`` makes them but on the configured backends: the overrides
are checked as the CLI checks them, written into params.yaml (its comments kept: DVC and every job read that
file), and a run that finished is saved as a DVC experiment (``dvc exp save``), so ``dvc exp show`` lists it
beside those run on the login node."""

from __future__ import annotations

import io
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import get_args

from ruamel.yaml import YAML

from dualtoken.config import load_config
from dualtoken.launch.config import StageName
from dualtoken.schema import ConfigError, apply_overrides


def apply_to_params(path: Path, overrides: Sequence[str]) -> None:
    """Write ``section.key=value`` overrides into the params file, after the whole result has passed the
    configuration's checks (an unknown key or bad value names itself and nothing is written)."""
    load_config(path, list(overrides))
    yaml = YAML()  # round trip: comments, order and quoting stay as the user wrote them
    yaml.preserve_quotes = True
    updated = apply_overrides(yaml.load(path.read_text(encoding="utf-8")), list(overrides))
    text = io.StringIO()
    yaml.dump(updated, text)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text.getvalue(), encoding="utf-8")
    partial.replace(path)


def stage_subset(stages: Sequence[str] | None, configured: Sequence[str]) -> list[str]:
    """The stages to run, in graph order: ``stages`` (each a pipeline stage), else ``pipeline.stages``."""
    if not stages:
        return list(configured)
    known = list(get_args(StageName))
    unknown = sorted(set(stages) - set(known))
    if unknown:
        raise ConfigError(f"stages {unknown}: not pipeline stages; known: {', '.join(known)}")
    return [s for s in known if s in stages]


def save_experiment(root: Path, name: str | None, stages: Sequence[str], env: Mapping[str, str]) -> str:
    """``dvc exp save`` of the workspace (params, dvc.lock, metrics) with the outputs of ``stages`` (those that
    ran: another stage's outputs may not exist); returns the experiment's name."""
    command = ["dvc", "exp", "save", "--force", *(["--name", name] if name else []), *stages]
    done = subprocess.run(command, cwd=root, env=dict(env), capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"dvc exp save failed (the stages' results stay in the workspace): "
                          f"{(done.stderr or done.stdout).strip()[-500:]}")
    saved = re.search(r"saved as: (\S+)", done.stdout)
    return saved.group(1) if saved else (name or "?")
