"""dvc.yaml's code ``deps`` against what each stage really imports: a module a stage runs but DVC does not hash
means a change DVC never reruns for; a code dep holding nothing the stage imports reruns it for nothing.

A stage's closure starts at ``python -m stages <name>`` (the ``stages`` package: table, CLI, runner) and at its
application, ``dualtoken.apps.<name>``, which the runner imports by name. It follows every ``dualtoken`` import
anywhere in a library module (a function's lazy import runs too), but in ``stages`` only module-level imports:
the other commands' lazy imports (chat, generate, ...) never run in a stage. A sibling ``.py`` file named in a
string (MLflow's models from code, logged by path) counts as imported."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from imports import REPO, SRC, imports_of, module_file

from stages import STAGES


def closure(*start: str) -> set[Path]:
    files: set[Path] = set()
    todo = list(start)
    while todo:
        module = todo.pop()
        path = module_file(module)
        if path is None or path in files:
            continue
        files.add(path)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b.c runs a and a.b
        todo.extend(imports_of(path, module))
    return files


def _python_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def suggested_deps(files: set[Path]) -> list[str]:
    """A compact dep list covering ``files``: a package folder where the stage imports at least half of its
    modules (DVC then reruns the stage for a change to the rest too), its files one by one otherwise."""
    folders: list[Path] = []
    candidates = {p for f in files for p in f.parents if REPO in p.parents and p not in (SRC, SRC / "dualtoken")}
    for folder in sorted(candidates, key=lambda p: len(p.parts)):
        if any(f in folder.parents for f in folders):
            continue
        inside = _python_files(folder)
        if inside and 2 * len(inside & files) >= len(inside):
            folders.append(folder)
    singles = [f for f in files if not any(d in f.parents for d in folders)]
    return sorted(str(p.relative_to(REPO)) for p in [*folders, *singles])


def _code_deps(stage: dict) -> list[Path]:
    deps = [REPO / d for d in stage.get("deps", [])]
    return [d for d in deps if d.suffix == ".py" or any(d == REPO / r or (REPO / r) in d.parents
                                                         for r in ("src", "stages"))]


def _dvc_stages() -> dict[str, dict]:
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in raw.items()}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_cover_the_stage_import_closure_and_nothing_else(name):
    stage = _dvc_stages()[name]
    deps = _code_deps(stage)
    files = closure("stages", "stages.__main__", "stages.cli", "stages.runner", STAGES[name].app)
    uncovered = sorted(str(f.relative_to(REPO)) for f in files
                       if not any(f == d or d in f.parents for d in deps))
    hint = "\n      - ".join(["suggested code deps:", *suggested_deps(files)])
    assert not uncovered, f"dvc.yaml stage {name} imports these but does not list them in deps: {uncovered}\n{hint}"
    unused = sorted(str(d.relative_to(REPO)) for d in deps if not any(f == d or d in f.parents for f in files))
    assert not unused, f"dvc.yaml stage {name} lists code deps it never imports: {unused}\n{hint}"


def test_every_declared_stage_is_in_dvc_yaml_and_runs_through_the_runner():
    stages = _dvc_stages()
    assert set(stages) == set(STAGES)
    for name, stage in stages.items():
        assert stage["cmd"].split()[:4] == ["python", "-m", "stages", name], stage["cmd"]


def test_paths_in_dvc_yaml_come_from_params():
    """Every output, metrics and plots location is written once, in params.yaml; dvc.yaml interpolates it."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    text = (REPO / "dvc.yaml").read_text()
    path_keys = ("output_dir", "metrics_path", "metrics_dir", "plots_path", "plots_dir")
    for section, body in params.items():
        for key, value in (body.items() if isinstance(body, dict) else ()):
            if key in path_keys:
                assert f"${{{section}.{key}}}" in text, f"dvc.yaml never uses {section}.{key}"
                assert f" {value}" not in text and f" {value}/" not in text, f"dvc.yaml spells out {section}.{key}"
