"""The root of the configuration, read from ``params.yaml``: every section composed from the module that
owns it, and the checks that span sections.

``params.yaml`` is the single source of truth (DVC reads the same file). ``-S section.key=value`` overrides
mirror ``dvc exp run -S``; ``dualtoken.schema`` holds the base model and the YAML helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from pydantic import Field, ValidationError, model_validator

from dualtoken.curation.config import CurateConfig
from dualtoken.data.config import DataConfig
from dualtoken.evaluation.config import AblationConfig, EvaluateConfig
from dualtoken.launch.config import STAGE_PROCESSES, LaunchConfig, StageName
from dualtoken.schema import ConfigError, Strict, apply_overrides, format_errors, read_mapping
from dualtoken.storage import StorageConfig
from dualtoken.tokenization.config import TokenizeConfig
from dualtoken.tracking import TrackingConfig
from dualtoken.training.config import TeacherConfig
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

    @model_validator(mode="after")
    def _one_process_per_gpu(self) -> Config:
        for stage, launch in self.launch.stages.items():
            section = STAGE_PROCESSES.get(stage)
            nproc = getattr(self, section).runtime.nproc if section else None
            if launch.gpus_per_node and nproc is not None and nproc != launch.gpus_per_node:
                raise ValueError(f"launch.stages.{stage}.gpus_per_node={launch.gpus_per_node} but {section}.runtime."
                                 f"nproc={nproc}: the stage runs one process per GPU, set both to the same count")
        return self


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
