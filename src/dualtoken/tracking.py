"""MLflow conventions shared by every stage: where runs go, how they nest, what lineage they carry.

A pipeline run is one parent MLflow run; each stage runs in its own process and opens a nested run under
it when ``DUALTOKEN_PARENT_RUN_ID`` is set (the orchestrator sets it). Run on its own (``dvc repro``,
the CLI), a stage opens a top-level run. Lineage is recorded as tags: git commit, DVC stage, parent
pipeline run and Prefect flow-run id, plus the stage's dvc.lock hash once DVC has committed it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import subprocess
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from dualtoken.errors import DualtokenError
from dualtoken.schema import Strict

ENV_PARENT_RUN = "DUALTOKEN_PARENT_RUN_ID"
ENV_FLOW_RUN = "DUALTOKEN_FLOW_RUN_ID"
STAGE_TAG = "dualtoken.stage"


class TrackingConfig(Strict):
    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLFLOW_TRACKING_URI overrides it")
    experiment: str = "dualtoken"


class TrackingError(DualtokenError, RuntimeError):
    """The tracking server cannot be reached; the message says which and how to fix it."""


def tracking_uri(cfg: TrackingConfig) -> str:
    return in_workspace(os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri)


def in_workspace(uri: str, env: Mapping[str, str] | None = None) -> str:
    """A relative SQLite store, where a DVC experiment runs in a temporary copy of the workspace (``dvc exp run
    --temp``, queued experiments: DVC_ROOT names the workspace), would vanish with the copy and its runs with
    it: it is the workspace's store instead, and a warning says so."""
    env = os.environ if env is None else env
    prefix = "sqlite:///"
    root = env.get("DVC_ROOT")
    if not uri.startswith(prefix) or uri[len(prefix):].startswith("/") or not root:
        return uri
    if Path(root).resolve() == Path.cwd().resolve():
        return uri
    store = (Path(root) / uri[len(prefix):]).resolve()
    warnings.warn(f"tracking_uri {uri} is relative and this DVC experiment runs in a temporary copy of the "
                  f"workspace: its runs go to the workspace's store, {store}", stacklevel=2)
    return f"{prefix}{store}"


@functools.lru_cache(maxsize=8)
def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a tracking server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (OSError, ValueError) as err:
        problem = str(getattr(err, "reason", err))
    raise TrackingError(f"MLflow tracking server {uri} is not reachable ({problem}): start it "
                        "(infra/local/mlflow.sh) or unset MLFLOW_TRACKING_URI to use the local SQLite store")


def _mlflow(cfg: TrackingConfig) -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri, user_setting = tracking_uri(cfg), os.environ.get("MLFLOW_TRACKING_URI")
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; left there, it would override the next config
    # this process loads (tracking_uri() lets the variable win). Only the user's own setting stays.
    if user_setting is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_setting
    mlflow.set_experiment(cfg.experiment)
    # MLflow 3's UI opens an experiment of unknown kind on its GenAI traces page; these are training runs
    mlflow.set_experiment_tag("mlflow.experimentKind", "custom_model_development")
    return mlflow


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD commit, with ``-dirty`` when the work tree has uncommitted changes; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"curate.caption.min_chars": 3, ...}`` for ``mlflow.log_params``."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{name}.{i}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def numeric_metrics(stats: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number in a nested stats dict, keyed by its dotted path."""
    out: dict[str, float] = {}
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool | int | float):
            out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(numeric_metrics(value, f"{name}."))
    return out


@contextlib.contextmanager
def stage_run(stage: str, cfg: TrackingConfig, params: Mapping[str, Any]) -> Iterator[Any]:
    """Open the stage's MLflow run (nested under the pipeline run if there is one) and log its params
    (the configuration sections the stage reads, flattened to dotted keys)."""
    mlflow = _mlflow(cfg)
    parent = os.environ.get(ENV_PARENT_RUN) or None
    tags = {STAGE_TAG: stage, "dvc.stage": stage, "git.commit": git_commit()}
    if parent:
        tags["dualtoken.pipeline_run_id"] = parent
    if os.environ.get(ENV_FLOW_RUN):
        tags["prefect.flow_run_id"] = os.environ[ENV_FLOW_RUN]
    with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=tags, log_system_metrics=True) as run:
        mlflow.log_params(flatten(params))
        yield run


def log_dataset(name: str, source: str, digest: str, context: str, frame: Any | None = None) -> None:
    """Record a dataset on the active run: its name, where it lives, and a content digest."""
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    # MLflow warns that a local path matches two identical source classes, and that int columns cannot
    # hold NaN (advice for model signatures): neither concerns a dataset record.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if source.startswith(("demo:", "mnist:")):
            resolved = CodeDatasetSource({"generator": source})
        else:
            resolved = resolve_dataset_source(source)
        if frame is not None:
            dataset = mlflow.data.from_pandas(frame, source=resolved, name=name, digest=digest)
        else:
            dataset = MetaDataset(source=resolved, name=name, digest=digest)
        mlflow.log_input(dataset, context=context)


def digest_of(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def start_pipeline_run(cfg: TrackingConfig, name: str, tags: Mapping[str, str]) -> str:
    """Create the parent run (left RUNNING so stage processes can nest under it); returns its id."""
    mlflow = _mlflow(cfg)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(cfg.experiment)
    run = client.create_run(experiment.experiment_id, run_name=name,
                            tags={"git.commit": git_commit(), STAGE_TAG: "pipeline", **tags})
    return run.info.run_id


def finish_pipeline_run(cfg: TrackingConfig, run_id: str, status: str, summary_md: str) -> None:
    mlflow = _mlflow(cfg)
    client = mlflow.MlflowClient()
    client.log_text(run_id, summary_md, "pipeline_summary.md")
    client.set_terminated(run_id, status=status)


def stage_runs(cfg: TrackingConfig, parent_run_id: str) -> dict[str, str]:
    """Stage name -> run id of the stage runs nested under a pipeline run."""
    mlflow = _mlflow(cfg)
    runs = mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name(cfg.experiment).experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r.data.tags.get(STAGE_TAG, "?"): r.info.run_id for r in runs}


def tag_run(cfg: TrackingConfig, run_id: str, tags: Mapping[str, str]) -> None:
    client = _mlflow(cfg).MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def run_url(cfg: TrackingConfig, run_id: str) -> str:
    """A link for humans: the UI URL for an http(s) server, else how to open the local store."""
    mlflow = _mlflow(cfg)
    uri = tracking_uri(cfg)
    experiment = mlflow.get_experiment_by_name(cfg.experiment).experiment_id
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
    return f"run {run_id} in {uri} (browse: mlflow ui --backend-store-uri {uri})"
