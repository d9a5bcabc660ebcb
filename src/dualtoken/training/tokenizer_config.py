"""The ``tokenizer`` section: what the DualToken tokenizer trainer (``training.tokenizer``) and its losses
(``training.tokenizer_losses``) read.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dualtoken.schema import Strict, curated_input
from dualtoken.training.config import OptimConfig, RuntimeConfig, eval_images_field, shuffle_buffer_field


class LossConfig(Strict):
    """Tokenizer loss weights (docs/method.md: the released stage-1 values are the defaults)."""

    semantic_tap: float = Field(5.0, ge=0.0, description="x (MSE + 1 - cos) at the semantic tap vs the teacher")
    semantic_pooled: float = Field(1.0, ge=0.0, description="x (MSE + 1 - cos) of the pooled outputs")
    commitment: float = Field(5.0, ge=0.0, description="x (pixel + semantic commitment)")
    reconstruction: float = Field(5.0, ge=0.0, description="x MSE(reconstruction, image)")
    perceptual: float = Field(1.0, ge=0.0)
    perceptual_kind: Literal["teacher", "lpips", "none"] = Field(
        "teacher", description="teacher: feature distance in the frozen teacher tower; lpips: needs lpips_weights")
    lpips_weights: str | None = Field(None, description="LPIPS-VGG weights (safetensors) for perceptual_kind=lpips")
    gan: float = Field(0.75, ge=0.0, description="x adaptive weight x hinge generator loss")
    gan_start_step: int = Field(0, ge=0)
    gan_weight_min: float = Field(0.3, ge=0.0)
    gan_weight_max: float = Field(10.0, ge=0.0)
    discriminator_channels: int = Field(64, ge=4)
    discriminator_layers: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _lpips_has_weights(self) -> LossConfig:
        if self.perceptual_kind == "lpips" and not self.lpips_weights:
            raise ValueError("perceptual_kind 'lpips' needs lpips_weights (a local path; nothing is downloaded)")
        return self


class ArchitectureOverrides(Strict):
    """``DualTokenConfig`` keys a params file changes on top of the named ``architecture``, each checked for its
    type and range when the configuration loads; how they fit together (tap order, decoder size) is checked when
    the model is built. Only the keys given are applied (``layer_shortcut: null`` removes the shortcut)."""

    layer_pixel: int = Field(None, ge=1, description="encoder layer the pixel branch taps (1-based)")
    layer_shortcut: int | None = Field(None, ge=1, description="earlier layer added to the pixel tap; null: none")
    weight_shortcut: float = Field(None, ge=0.0)
    layer_semantic: int = Field(None, ge=1, description="encoder layer the semantic branch taps and replaces")
    projection: Literal["attention", "linear"] = None  # type: ignore[assignment]
    projection_heads: int = Field(None, ge=1)
    pixel_codebook_size: int = Field(None, ge=2)
    pixel_code_dim: int = Field(None, ge=1)
    pixel_depth: int = Field(None, ge=1)
    semantic_codebook_size: int = Field(None, ge=2)
    semantic_code_dim: int = Field(None, ge=1)
    semantic_depth: int = Field(None, ge=1)
    shared_codebook: bool = None  # type: ignore[assignment]
    pixel_update: Literal["ema", "learned"] = None  # type: ignore[assignment]
    semantic_update: Literal["ema", "learned"] = None  # type: ignore[assignment]
    ema_decay: float = Field(None, gt=0.0, lt=1.0)
    restart_threshold: float = Field(None, ge=0.0)
    decoder_channels: int = Field(None, ge=1)
    decoder_channel_mult: list[int] = Field(None, min_length=1)
    decoder_res_blocks: int = Field(None, ge=0)
    decoder_attention_levels: int = Field(None, ge=0)
    latent_size: int | None = Field(None, ge=1)
    single_codebook: bool = None  # type: ignore[assignment]


class TokenizerConfig(Strict):
    input: str | None = curated_input()
    architecture: str = Field("demo", description="named DualToken config (see dualtoken.models.configuration)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="DualTokenConfig keys (ArchitectureOverrides), "
                                      "e.g. layer_pixel")
    init_from: str | None = Field(None, description="a saved DualToken model to continue from; null: the teacher")
    stage: Literal[0, 1, 2] = Field(1, description="0: semantic branch only; 1: all; 2: pixel branch frozen")
    output_dir: str = "models/tokenizer"
    metrics_path: str = "metrics/tokenizer.json"
    plots_path: str | None = Field("plots/tokenizer/train.csv", description="training curve CSV (DVC plot)")
    work_dir: str = "data/.work/tokenizer"
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    shuffle_buffer: int = shuffle_buffer_field()
    eval_batch_size: int = Field(128, ge=1)
    eval_images: int = eval_images_field()
    new_params_lr_scale: float = Field(1.0, gt=0.0, description="lr multiplier for parts the teacher lacks")
    # The released recipe: no clipping, cosine to 0; the discriminator's cosine ends at 4e-5 (5/9 of 7.2e-5)
    optim: OptimConfig = OptimConfig(grad_clip=0.0, min_lr_ratio=0.0)
    discriminator_optim: OptimConfig = OptimConfig(min_lr_ratio=5 / 9)
    losses: LossConfig = LossConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    image_log_every: int = Field(200, ge=1, description="reconstruction grid to MLflow every N steps")
    register_as: str | None = Field("dualtoken-tokenizer", description="MLflow registered model; null skips")

    @field_validator("overrides")
    @classmethod
    def _typed_overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        return ArchitectureOverrides.model_validate(overrides).model_dump(exclude_unset=True)

    def training_identity(self) -> dict[str, Any]:
        """What decides the training run (checkpoints of another one are not resumed): not where things go,
        how the processes run, what is logged or how much is evaluated."""
        return self.model_dump(mode="json", exclude={"input", "output_dir", "metrics_path", "plots_path", "work_dir",
                                                     "runtime", "register_as", "image_log_every", "eval_images",
                                                     "eval_batch_size"})
