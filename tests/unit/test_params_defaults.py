"""One set of defaults: the library's (the schema, paper-scale where the paper sets a value) and ``params.yaml``
(the demo profile) may differ only where the demo says why.

``params.yaml`` writes every key, so each knob is visible and ``dvc exp run -S key=value`` can set it. Any value
there that is not the library's default carries a comment (on its line or the comment line above it) saying why
the demo chooses otherwise. So a default changed in code cannot drift away from the demo unnoticed: this test
then names the key, and the change either moves ``params.yaml`` too or says why not.
"""

from __future__ import annotations

import yaml
from imports import REPO
from pydantic import BaseModel

from dualtoken.config import Config, load_config

PARAMS = REPO / "params.yaml"
# Sections with no library default to compare with: the corpus is the user's, and where stages run is the site's
# (launch profiles such as infra/slurm/launch.yaml replace it whole).
NO_DEFAULT = ("data", "launch")


def _leaves(node: yaml.MappingNode, schema: dict, prefix: str = ""):
    """(dotted key, line of its key) for every leaf ``params.yaml`` writes, following the schema's nesting."""
    for key_node, value in node.value:
        key = key_node.value
        path = f"{prefix}{key}"
        below = schema.get(key)
        if isinstance(value, yaml.MappingNode) and isinstance(below, dict) and value.value and all(
                k.value in below for k, _ in value.value):  # a section; else an open mapping is one value
            yield from _leaves(value, below, f"{path}.")
        else:
            yield path, key_node.start_mark.line


def _get(dumped: dict, path: str):
    for part in path.split("."):
        dumped = dumped[part]
    return dumped


def _explained(lines: list[str], line: int) -> bool:
    """A comment on the key's line (a one-line mapping: the line it shares), or a comment line directly above."""
    return "#" in lines[line] or (line > 0 and lines[line - 1].lstrip().startswith("#"))


def test_every_value_that_differs_from_the_library_default_says_why():
    lines = PARAMS.read_text().splitlines()
    ours = load_config(PARAMS).model_dump(mode="json")
    raw = yaml.safe_load(PARAMS.read_text())
    library = Config.model_validate({"data": raw["data"]}).model_dump(mode="json")
    silent = []
    for path, line in _leaves(yaml.compose(PARAMS.read_text()), library):
        if path.split(".")[0] in NO_DEFAULT or _get(ours, path) == _get(library, path):
            continue
        if not _explained(lines, line):
            silent.append(f"{path} (line {line + 1}): {_get(ours, path)!r}, library default {_get(library, path)!r}")
    assert not silent, ("params.yaml differs from the library's default without a comment saying why; add one, or "
                        "use the default:\n  " + "\n  ".join(silent))


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _fields(kind, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_params_yaml_writes_every_key_so_dvc_exp_run_can_set_it():
    raw = yaml.safe_load(PARAMS.read_text())

    def written(path: str) -> bool:
        node = raw
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    missing = [p for p in _fields(Config) if p.split(".")[0] not in NO_DEFAULT and not written(p)]
    assert not missing, f"params.yaml lacks {missing}: write each with its default (dvc exp run -S sets only those)"
