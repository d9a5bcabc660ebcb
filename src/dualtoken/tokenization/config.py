"""The ``tokenize`` section: corpus tokenisation (``tokenization.job``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from dualtoken.schema import S3Prefix, Strict, curated_input
from dualtoken.training.config import ProcessConfig


class TokenizeConfig(Strict):
    """Corpus tokenisation: curated shards -> dual-code shards, one output shard per input shard."""

    input: str | None = curated_input()
    tokenizer: str | None = Field(None, description="saved DualToken model; null: tokenizer.output_dir")
    output_dir: str = "data/tokens"
    metrics_path: str = "metrics/tokenize.json"
    plots_dir: str = "plots/tokenize"
    work_dir: str = Field("data/.work/tokenize", description="finished shards + completion markers (resume)")
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["train", "val", "test"],
                                                          min_length=1)
    batch_size: int = Field(128, ge=1)
    verify_images: int = Field(512, ge=0, description="val images decoded back from written codes for PSNR")
    psnr_tolerance_db: float = Field(0.1, ge=0.0)
    barrier_timeout_min: int = Field(360, ge=1, description="how long finished ranks wait for the slowest one")
    publish_uri: S3Prefix | None = Field(None, description="optional s3:// prefix the token shards are uploaded to")
    runtime: ProcessConfig = ProcessConfig()

    def usage_plot(self, suffix: Literal["csv", "png"]) -> Path:
        """The ranked code-usage curve (``plots_dir/code_usage.{csv,png}``), which the report shows too."""
        return Path(self.plots_dir) / f"code_usage.{suffix}"

    @field_validator("splits")
    @classmethod
    def _unique_splits(cls, splits: list[str]) -> list[str]:
        if len(set(splits)) != len(splits):
            raise ValueError(f"splits must not repeat, got {splits}")
        return splits
