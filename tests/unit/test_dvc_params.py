"""dvc.yaml's params against the configuration: each stage hashes the keys of its own section that decide its
outputs (``dualtoken.config.result_params``) and nothing that only says how its processes run, so a stage
moved to more GPUs, logging more often or reading with more workers is not rerun; every key it lists exists in
params.yaml (DVC would call a missing one changed forever)."""

from __future__ import annotations

import pytest
import yaml
from imports import REPO

from dualtoken.config import PROCESS_KEYS, Config, result_params

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def _params(stage: dict) -> list[str]:
    return (stage.get("do") or stage)["params"]


@pytest.mark.parametrize("name", sorted(DVC))
def test_a_stage_hashes_its_sections_result_keys_only(name):
    listed = _params(DVC[name])
    own = [k for k in listed if k.split(".")[0] == name]
    assert own == result_params(name), f"{name}: paste these params:\n" + "\n".join(f"  - {k}" for k in
                                                                                  result_params(name))
    for key in listed:
        section, *rest = key.split(".")
        model = Config.model_fields[section].annotation if section in Config.model_fields else None
        if not rest and hasattr(model, "model_fields"):  # a whole section: only one without process keys
            assert not PROCESS_KEYS & set(model.model_fields), f"{name}: list {section}'s result keys, not {key}"
        assert not PROCESS_KEYS & set(rest) and "nproc" not in rest, f"{name}: {key} only says how processes run"


@pytest.mark.parametrize("name", sorted(DVC))
def test_every_hashed_key_is_in_params_yaml(name):
    for key in _params(DVC[name]):
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{name}: {key} is not in params.yaml"
            node = node[part]
