"""`dvc repro` from a fresh workspace builds the stages up to the token corpus; a second one is a fast no-op; a
changed param reruns only what depends on it and `dvc metrics diff` shows the change. (The flow test runs every
stage through `dvc repro <stage>`.)"""

import json
import shutil
import subprocess
import time

import pandas as pd
import pytest
import yaml

from workspace import make_workspace, workspace_env

pytestmark = pytest.mark.e2e


def _dvc(ws, *args, env):
    return subprocess.run(["dvc", *args], cwd=ws, env=env, capture_output=True, text=True)


def _set(ws, values):
    params = yaml.safe_load((ws / "params.yaml").read_text())
    for path, value in values.items():
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_repro_builds_then_noop_then_reruns_on_param_change(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    env = workspace_env()
    first = _dvc(ws, "repro", "tokenize", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert all(f"Running stage '{s}'" in first.stdout for s in ("curate", "teacher", "tokenizer", "tokenize"))
    stats = json.loads((ws / "metrics/curate.json").read_text())
    assert stats["inputs"] == 320 and stats["accounting_ok"]
    assert stats["inputs"] == stats["accepted"] + stats["rejected"]
    manifest = pd.read_parquet(ws / "data/curated/manifest.parquet")
    assert len(manifest) == stats["accepted"] and manifest["key"].is_unique
    assert (ws / "data/curated/preview.png").is_file() and (ws / "data/curated/validation.json").is_file()
    lock = (ws / "dvc.lock").read_text()
    assert "curate:" in lock and "data/curated" in lock and "data/tokens" in lock

    t0 = time.perf_counter()
    second = _dvc(ws, "repro", "tokenize", env=env)
    assert second.returncode == 0 and "didn't change" in second.stdout + second.stderr
    assert time.perf_counter() - t0 < 30  # no work: just hashing checks
    assert json.loads(_dvc(ws, "status", "--json", "tokenize", env=env).stdout) == {}

    # How the processes run is not a result: more of them, another cadence or more loader workers rerun nothing;
    # a loss weight changes the tokenizer (and so, once it reruns, what follows it)
    original = (ws / "params.yaml").read_text()
    _set(ws, {("tokenizer", "runtime", "nproc"): 2, ("tokenizer", "runtime", "log_every"): 7,
              ("teacher", "runtime", "checkpoint_every"): 3, ("tokenize", "runtime", "loader_workers"): 1,
              ("tokenizer", "runtime", "threads"): 1, ("tokenizer", "work_dir"): "data/.work/elsewhere"})
    assert json.loads(_dvc(ws, "status", "--json", "--with-deps", "tokenize", env=env).stdout) == {}
    _set(ws, {("tokenizer", "losses", "reconstruction"): 4.0})
    changed_stages = set(json.loads(_dvc(ws, "status", "--json", "--with-deps", "tokenize", env=env).stdout))
    assert changed_stages == {"tokenizer"}, changed_stages
    (ws / "params.yaml").write_text(original)

    verified = json.loads((ws / "metrics/tokenize.json").read_text())["verify"]["images"]
    assert verified > 4
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=test", "commit", "-qm", "repro"],
                   cwd=ws, check=True)  # the baseline `dvc metrics diff` compares against (HEAD)
    changed = _dvc(ws, "exp", "run", "-S", "tokenize.verify_images=4", "tokenize", env=env)  # only tokenize reruns
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "Running stage 'tokenize'" in changed.stdout and "Running stage 'tokenizer'" not in changed.stdout
    diff = _dvc(ws, "metrics", "diff", "--json", env=env)
    assert diff.returncode == 0, diff.stderr
    images = json.loads(diff.stdout)["metrics/tokenize.json"]["verify.images"]
    assert images["old"] == verified and images["new"] == 4


def test_flow_runner_tells_ran_restored_and_up_to_date(tmp_path, monkeypatch):
    from dualtoken.launch.config import LaunchConfig
    from flows.dvc import repro

    ws = make_workspace(tmp_path / "ws")
    env = workspace_env()
    monkeypatch.setenv("PATH", env["PATH"])
    lines: list[str] = []
    here = LaunchConfig()
    ran = repro("curate", ws, env, lines.append, here)
    assert ran.status == "ran" and ran.where == "here" and "Running stage 'curate':" in lines
    assert repro("curate", ws, env, lines.append, here).status == "up to date"
    shutil.rmtree(ws / "data" / "curated")
    (ws / "dvc.lock").unlink()
    restored = repro("curate", ws, env, lines.append, here)  # same inputs as before: DVC's run cache answers
    assert restored.status == "restored" and len(restored.lock_hash) == 32
    assert (ws / "data" / "curated" / "manifest.parquet").is_file()


def test_stage_jobs_run_dvc_and_multi_node_kubernetes_pods_never_restore():
    from dualtoken.launch.config import StageLaunch
    from flows.dvc import stage_commands

    assert stage_commands("mllm", StageLaunch(), "params.yaml") == (("dvc", "repro", "mllm"), None)
    on_slurm = StageLaunch(backend="slurm", nodes=4)  # srun starts the other nodes from the first one's command
    assert stage_commands("mllm", on_slurm, "params.yaml") == (("dvc", "repro", "mllm"), None)
    pods = StageLaunch(backend="kubernetes", nodes=4, mem="64G")
    first, others = stage_commands("mllm", pods, "p.yaml")
    assert first == ("dvc", "repro", "--no-run-cache", "mllm") and others == ("python", "-m", "stages", "mllm",
                                                                              "--params", "p.yaml")
