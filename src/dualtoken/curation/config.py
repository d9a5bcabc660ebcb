"""The ``curate`` section: filtering, deduplication, splitting and validation rules of curation.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from dualtoken.schema import S3Prefix, Strict


class CaptionRules(Strict):
    min_chars: int = Field(3, ge=1)
    max_chars: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> CaptionRules:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must not exceed max_chars ({self.max_chars})")
        return self


class SplitFractions(Strict):
    train: float = Field(0.9, ge=0.0, le=1.0)
    val: float = Field(0.05, ge=0.0, le=1.0)
    test: float = Field(0.05, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


class ValidationRules(Strict):
    min_rows: int = Field(1, ge=0)
    max_rows: int = Field(10_000_000, ge=1)
    split_tolerance: float = Field(0.03, ge=0.0, le=1.0)


class CurateConfig(Strict):
    output_dir: str = "data/curated"
    metrics_path: str = "metrics/curate.json"
    work_dir: str = Field("data/.work/curate", description="resumable per-input-shard results")
    resolution: int = Field(64, ge=8, le=4096)
    workers: int = Field(2, ge=1, le=512)
    samples_per_shard: int = Field(1000, ge=1)
    min_side: int = Field(16, ge=1)
    max_pixels: int = Field(64_000_000, ge=1, description="decompression-bomb guard, checked on the header")
    max_file_mb: int = Field(64, ge=1, description="largest image file or tar member read into memory")
    max_aspect_ratio: float = Field(3.0, ge=1.0)
    phash_size: int = Field(16, ge=4, le=32, description="pHash side: 8 -> classic 64 bits, 16 -> 256 bits")
    near_dup_hamming: int = Field(4, ge=-1, description="max differing pHash bits; -1 disables")

    caption: CaptionRules = CaptionRules()
    split: SplitFractions = SplitFractions()
    validation: ValidationRules = ValidationRules()
    preview_images: int = Field(64, ge=0, le=1024)
    publish_uri: S3Prefix | None = Field(None, description="optional s3:// prefix the shards are uploaded to")

    @model_validator(mode="after")
    def _threshold_fits_hash(self) -> CurateConfig:
        if self.near_dup_hamming >= self.phash_size**2:
            raise ValueError(f"near_dup_hamming ({self.near_dup_hamming}) must be below the hash length "
                             f"phash_size**2 = {self.phash_size**2} bits")
        return self
