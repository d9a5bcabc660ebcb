"""The import contract: the library's layers point down only (``make lint`` runs this file).

A module may import its own package and anything in a lower layer. Packages in one layer are peers that do not
import each other; an application (``dualtoken.apps.*``) is a leaf that only the stage runner imports; the flows
orchestrate stages and never reach into model, data or training code. Every import counts, lazy ones too."""

from __future__ import annotations

import pytest
from imports import REPO, SRC, imports_of

LAYERS = (  # bottom to top: (packages or modules of dualtoken, ...)
    ("errors", ""),
    ("schema",),
    ("storage", "tracking", "partition", "text", "launch"),
    ("data",),
    ("models",),
    ("metrics",),
    ("training", "curation"),
    ("tokenization",),
    ("evaluation",),
    ("config",),
    ("serving",),
    ("application",),
    ("apps",),
)
# What the flows may use: configuration, launch backends, tracking, the stage table; nothing that trains or reads data.
FLOW_ALLOWED = ("config", "schema", "errors", "launch", "tracking", "storage")


def _unit(module: str) -> str:
    """``dualtoken.training.mllm`` -> ``training``; ``dualtoken`` itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise AssertionError(f"dualtoken.{unit} is in no layer of the contract: add it to LAYERS")


def _modules(root, package: str) -> list[tuple[str, object]]:
    out = []
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append((".".join(parts), path))
    return [(m, p) for m, p in out if m.split(".")[0] == package]


def _edges(module: str, path) -> list[str]:
    """Every module ``module`` imports, by its module name (``from a.b import c`` names ``a.b``, or ``a.b.c`` when
    ``c`` is a module)."""
    names = imports_of(path, module)
    return sorted(n for n in names if (SRC / n.replace(".", "/")).with_suffix(".py").is_file()
                  or (SRC / n.replace(".", "/") / "__init__.py").is_file())


LIBRARY = _modules(SRC / "dualtoken", "dualtoken")


@pytest.mark.parametrize(("module", "path"), LIBRARY, ids=[m for m, _ in LIBRARY])
def test_library_imports_point_down(module, path):
    mine = _unit(module)
    wrong = []
    for target in _edges(module, path):
        if target.split(".")[0] != "dualtoken":
            wrong.append(f"{target} (the library never imports the stages or the flows)")
            continue
        theirs = _unit(target)
        if theirs == mine and mine != "apps":
            continue
        if mine == "apps" and theirs == "apps":
            if target != "dualtoken.apps":
                wrong.append(f"{target} (an application is a leaf: move what both need into the library)")
        elif _layer(theirs) >= _layer(mine):
            wrong.append(f"{target} (layer {_layer(theirs)} {LAYERS[_layer(theirs)]} is not below "
                         f"{module}'s layer {_layer(mine)} {LAYERS[_layer(mine)]})")
    assert not wrong, f"{module} imports upward or sideways: {wrong}"


@pytest.mark.parametrize("path", sorted((REPO / "flows").glob("*.py")), ids=lambda p: p.name)
def test_flows_never_reach_into_model_or_data_code(path):
    module = f"flows.{path.stem}"
    used = {t for t in _edges(module, path) if t.startswith("dualtoken.")}
    wrong = sorted(t for t in used if _unit(t) not in FLOW_ALLOWED)
    assert not wrong, f"{module} reaches into {wrong}: the flow runs stages (python -m stages, dvc repro) instead"
