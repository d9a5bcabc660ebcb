"""The ``tokenizer`` section: what the DualToken tokenizer trainer (``training.tokenizer``) and its losses
(``training.tokenizer_losses``) read.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dualtoken.schema import Strict, curated_input
from dualtoken.training.config import OptimConfig, RuntimeConfig, eval_images_field, shuffle_buffer_field

LPIPS_WEIGHTS = "weights/lpips_vgg.safetensors"  # where python -m dualtoken.models.lpips is told to write


class StageLosses(Strict):
    """The terms that differ between the paper's stages: the semantic distillation weights and whether the GAN
    runs. The pixel terms (reconstruction, perceptual, pixel commitment) apply whenever the stage trains the pixel
    branch (``training.tokenizer_losses.stage_plan``)."""

    semantic_tap: float = Field(ge=0.0, description="x distance to the teacher's hidden state at the semantic tap")
    semantic_tap_form: Literal["mse_cos", "cos"] = Field(
        "mse_cos", description="mse_cos: MSE + (1 - cos); cos: 1 - cos only (the released stage 2)")
    semantic_pooled: float = Field(ge=0.0, description="x (MSE + 1 - cos) of the pooled outputs")
    gan: bool = Field(description="the GAN term (from gan_start_step) in this stage")


class LossConfig(Strict):
    """Tokenizer loss weights; the defaults are the released code's (docs/method.md). Per stage: stage 0 distils
    only the pooled output (5x) while the pixel branch learns to decode frozen features; stage 1 distils the tap
    (5x) and the pooled output (1x) with the GAN; stage 2 the tap by cosine alone (1x) and the pooled output (5x)."""

    stage_0: StageLosses = StageLosses(semantic_tap=0.0, semantic_pooled=5.0, gan=False)
    stage_1: StageLosses = StageLosses(semantic_tap=5.0, semantic_pooled=1.0, gan=True)
    stage_2: StageLosses = StageLosses(semantic_tap=1.0, semantic_tap_form="cos", semantic_pooled=5.0, gan=False)
    commitment: float = Field(5.0, ge=0.0, description="x (pixel + semantic commitment)")
    reconstruction: float = Field(5.0, ge=0.0, description="x MSE(reconstruction, image)")
    perceptual: float = Field(1.0, ge=0.0)
    perceptual_kind: Literal["lpips", "teacher", "none"] = Field(
        "lpips", description="lpips: LPIPS-VGG from lpips_weights; teacher: feature distance in the frozen teacher "
                             "tower (no weights needed)")
    lpips_weights: str | None = Field(LPIPS_WEIGHTS, description="LPIPS-VGG weights (safetensors) for "
                                      "perceptual_kind=lpips; python -m dualtoken.models.lpips writes them")
    gan: float = Field(0.75, ge=0.0, description="x adaptive weight x hinge generator loss")
    gan_start_step: int | None = Field(None, ge=0, description="the GAN's first step; null: half an epoch of the "
                                       "training split in, as released")
    gan_weight_min: float = Field(0.3, ge=0.0)
    gan_weight_max: float = Field(10.0, ge=0.0)
    discriminator: Literal["resnet", "patchgan"] = Field(
        "resnet", description="resnet: the released 3x3 pre-activation residual PatchGAN (GroupNorm); patchgan: "
                              "pix2pix's 4x4 convolutions")
    discriminator_hinge: Literal["leaky", "relu"] = Field(
        "leaky", description="the discriminator's hinge: leaky (slope 0.01, as released) or relu (VQGAN's)")
    discriminator_channels: int = Field(64, ge=4)
    discriminator_layers: int = Field(3, ge=1)
    discriminator_loss: float = Field(0.75, gt=0.0, description="x the discriminator's hinge loss after the epoch "
                                      "the GAN starts in (1x within it), as released")
    discriminator_restart_epochs: int | None = Field(
        None, ge=1, description="a fresh discriminator (weights, optimizer moments, lr warm-up) every N epochs after "
                                "the GAN's first; null: never (the released runs set restart_gan to their epoch count)")

    @model_validator(mode="after")
    def _consistent(self) -> LossConfig:
        if self.perceptual_kind == "lpips" and not self.lpips_weights:
            raise ValueError("perceptual_kind 'lpips' needs lpips_weights (a local path; nothing is downloaded)")
        if self.stage_2.gan:
            raise ValueError("stage_2.gan: stage 2 freezes the decoder, so there is no generator for a GAN to train")
        return self

    def for_stage(self, stage: int) -> StageLosses:
        return {0: self.stage_0, 1: self.stage_1, 2: self.stage_2}[stage]


class ArchitectureOverrides(Strict):
    """``DualTokenConfig`` keys a params file changes on top of the named ``architecture``, each checked for its
    type and range when the configuration loads; how they fit together (tap order, decoder size) is checked when
    the model is built. Only the keys given are applied (``layer_shortcut: null`` removes the shortcut)."""

    layer_pixel: int = Field(None, ge=1, description="encoder layer the pixel branch taps (1-based)")
    layer_shortcut: int | None = Field(None, ge=1, description="earlier layer added to the pixel tap; null: none")
    weight_shortcut: float = Field(None, ge=0.0)
    layer_semantic: int = Field(None, ge=1, description="encoder layer the semantic branch taps and replaces")
    projection: Literal["released", "conv", "attention", "linear"] = None  # type: ignore[assignment]
    up_projection_causal: bool = None  # type: ignore[assignment]
    projection_heads: int = Field(None, ge=1, description="heads of the attention projection (released: wide/narrow)")
    shortcut_space: Literal["width", "code"] = None  # type: ignore[assignment]
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
    ema_updates: Literal["depth", "step"] = None  # type: ignore[assignment]
    decoder_channels: int = Field(None, ge=1)
    decoder_channel_mult: list[int] = Field(None, min_length=1)
    decoder_res_blocks: int = Field(None, ge=0)
    decoder_attention_levels: int = Field(None, ge=0)
    latent_size: int | None = Field(None, ge=1)
    decoder_input_block: bool = None  # type: ignore[assignment]
    single_codebook: bool = None  # type: ignore[assignment]


class TokenizerConfig(Strict):
    input: str | None = curated_input()
    architecture: str = Field("demo", description="named DualToken config (see dualtoken.models.configuration)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="DualTokenConfig keys (ArchitectureOverrides), "
                                      "e.g. layer_pixel")
    init_from: str | None = Field(None, description="a saved DualToken model to continue from; null: the teacher")
    stage: Literal[0, 1, 2] = Field(1, description="0: the tower frozen through the semantic tap; 1: all; 2: the "
                                    "pixel branch, decoder and the layers below the pixel tap frozen")
    output_dir: str = "models/tokenizer"
    metrics_path: str = "metrics/tokenizer.json"
    plots_path: str | None = Field("plots/tokenizer/train.csv", description="training curve CSV (DVC plot)")
    work_dir: str = "data/.work/tokenizer"
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    shuffle_buffer: int = shuffle_buffer_field()
    eval_batch_size: int = Field(128, ge=1)
    eval_images: int = eval_images_field()
    random_crop_scale: float = Field(0.9, gt=0.0, le=1.0, description="RandomResizedCrop's smallest area fraction "
                                     "(as released, 0.9); 1: no augmentation")
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
        how the processes run, what is logged or how much is evaluated, nor the other stages' loss weights."""
        ignored = ("input", "output_dir", "metrics_path", "plots_path", "work_dir", "runtime", "register_as",
                   "image_log_every", "eval_images", "eval_batch_size")
        other_stages = {f"stage_{k}": True for k in (0, 1, 2) if k != self.stage}
        return self.model_dump(mode="json", exclude={"losses": other_stages, **dict.fromkeys(ignored, True)})
