"""What a module of this repository imports, read from its source (no import runs): the dvc.yaml deps test and
the layer contract both walk these edges."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ROOTS = ("stages", "dualtoken", "flows")


def module_file(module: str) -> Path | None:
    base = (REPO if module.split(".")[0] in ("stages", "flows") else SRC) / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module.split(".")[0] == "stages" else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules imported by name
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".py")
              and (path.parent / node.value).is_file()):  # a sibling run by path (MLflow's models from code)
            found.add(f"{module.rsplit('.', 1)[0]}.{node.value[:-3]}")
    return {name for name in found if name.split(".")[0] in ROOTS}
