"""The root of the configuration, read from ``params.yaml``: every section composed from the module that
owns it, and the checks that span sections.

``params.yaml`` is the single source of truth (DVC reads the same file). ``-S section.key=value`` overrides
mirror ``dvc exp run -S``; ``dualtoken.schema`` holds the base model and the YAML helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from pydantic import Field, ValidationError

from dualtoken.curation.config import CurateConfig
from dualtoken.data.config import DataConfig
from dualtoken.evaluation.config import AblationConfig, EvaluateConfig
from dualtoken.launch.config import LaunchConfig, StageName
from dualtoken.schema import ConfigError, Strict, apply_overrides, format_errors, read_mapping
from dualtoken.storage import StorageConfig
from dualtoken.tokenization.config import TokenizeConfig
from dualtoken.tracking import TrackingConfig
from dualtoken.training.config import ProcessConfig, TeacherConfig
from dualtoken.training.mllm_config import MllmConfig
from dualtoken.training.tokenizer_config import TokenizerConfig


class PipelineConfig(Strict):
    stages: list[StageName] = Field(default_factory=lambda: list(get_args(StageName)), min_length=1,
                                    description="what the flow runs, in graph order; default: every stage")
    retries: int = Field(1, ge=0, le=10)
    retry_delay_s: float = Field(5.0, ge=0.0)


class Config(Strict):
    seed: int = 0
    data: DataConfig
    curate: CurateConfig = CurateConfig()
    teacher: TeacherConfig = TeacherConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    mllm: MllmConfig = MllmConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ablation: AblationConfig = AblationConfig()
    storage: StorageConfig = StorageConfig()
    tracking: TrackingConfig = TrackingConfig()
    pipeline: PipelineConfig = PipelineConfig()
    launch: LaunchConfig = LaunchConfig()

    def curated(self, stage_input: str | None) -> str:
        """The curated corpus a stage reads: its own ``input`` (a local folder or an s3:// prefix), else the
        curate stage's output."""
        return stage_input or self.curate.output_dir


# Keys that say where a stage writes or how its processes run, never what it computes. DVC does not hash them
# (dvc.yaml lists every other key of a stage's own section, ``result_params``; tests/unit/test_dvc_params.py
# checks it), so more GPUs, another logging or checkpoint cadence or more loader workers rerun nothing. Output
# paths are DVC outs already; of a ``runtime`` block only the precision changes the numbers.
PROCESS_KEYS = frozenset({"output_dir", "metrics_path", "plots_path", "plots_dir", "metrics_dir", "work_dir",
                          "workers", "barrier_timeout_min", "image_log_every", "register_as", "device", "threads",
                          "zero_stage"})
RUNTIME_RESULT_KEYS = ("precision",)


def result_params(section: str) -> list[str]:
    """The dotted keys of ``section`` that decide its stage's outputs: what DVC hashes for it."""
    keys = []
    for name, field in Config.model_fields[section].annotation.model_fields.items():
        if name in PROCESS_KEYS:
            continue
        if isinstance(field.annotation, type) and issubclass(field.annotation, ProcessConfig):
            keys += [f"{section}.{name}.{key}" for key in RUNTIME_RESULT_KEYS]
        else:
            keys.append(f"{section}.{name}")
    return keys


def parse_config(raw: dict[str, Any], origin: str = "params") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"invalid configuration in {origin}:\n{format_errors(err)}") from None


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None,
                launch_file: str | Path | None = None) -> Config:
    """``params.yaml`` (+ ``-S`` overrides). ``launch_file`` (a YAML file with only a ``launch:`` section, e.g.
    ``infra/slurm/launch.yaml``) replaces where stages run without touching what they compute."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from the project root or pass --params PATH")
    raw = read_mapping(path)
    origin = str(path)
    if launch_file is not None:
        launch_path = Path(launch_file)
        if not launch_path.is_file():
            raise ConfigError(f"launch file {launch_path} not found")
        launch = read_mapping(launch_path)
        if set(launch) != {"launch"}:
            raise ConfigError(f"{launch_path} must hold only a `launch:` section (where the stages run), found "
                              f"{sorted(launch)}")
        raw, origin = {**raw, "launch": launch["launch"]}, f"{path} with {launch_path}"
    return parse_config(apply_overrides(raw, overrides or []), origin=origin)
