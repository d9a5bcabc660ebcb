"""Settings every trainer shares (optimiser, processes, runtime) and the ``teacher`` section (``training.teacher``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from dualtoken.schema import Strict, curated_input


class AdamWConfig(Strict):
    """AdamW with linear warm-up and cosine decay to ``min_lr_ratio`` x the learning rate, which is set by
    ``OptimConfig.lr`` or, for the MLLM, by each phase."""

    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, ge=0.0, description="max gradient norm; 0 disables clipping")
    decay_biases_and_norms: bool = Field(False, description="weight decay on 1-D parameters (biases, norm "
                                                            "scales) too; the released code exempts them")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(betas)}")
        return betas


class OptimConfig(AdamWConfig):
    lr: float = Field(7.2e-5, gt=0.0)


def shuffle_buffer_field(streams: str = "training stream") -> Any:
    """The ``shuffle_buffer`` key of every trainer: how far each of its streams shuffles (``data.stream``)."""
    return Field(1000, ge=0, description=f"samples each {streams} shuffles over (held decoded in memory); 0: "
                                         "corpus order within the shuffled shards")


def eval_images_field() -> Any:
    """The ``eval_images`` key of the teacher and the tokenizer: how much of the val split they measure."""
    return Field(512, ge=2, description="val images measured (the split's first N)")


class ProcessConfig(Strict):
    """Where a stage's processes run: how many on this node, on which device, in which precision."""

    nproc: int = Field(1, ge=1, le=1024, description="processes on this node; > 1 relaunches under torchrun (a "
                       "Slurm or Kubernetes job with GPUs runs one per GPU instead)")
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


class TeacherTextConfig(Strict):
    """Text tower and BPE tokenizer of the from-scratch demo teacher."""

    vocab_size: int = Field(1024, ge=64)
    bpe_samples: int = Field(100_000, ge=1, description="the BPE is trained on the captions of the first N train "
                                                        "samples (only the shards they are in are read)")
    max_length: int = Field(32, ge=4, description="captions are padded/truncated to this many tokens")
    hidden_size: int = Field(128, ge=8)
    intermediate_size: int = Field(512, ge=8)
    layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)


class TeacherConfig(Strict):
    input: str | None = curated_input()
    pretrained: str | None = Field(None, description="local SigLIP checkpoint; null trains a tiny one from scratch")
    architecture: str = Field("demo", description="named tokenizer config whose vision tower the teacher trains")
    output_dir: str = "models/teacher"
    metrics_path: str = "metrics/teacher.json"
    work_dir: str = "data/.work/teacher"
    text: TeacherTextConfig = TeacherTextConfig()
    steps: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=2)
    shuffle_buffer: int = shuffle_buffer_field()
    eval_batch_size: int = Field(256, ge=1)
    eval_images: int = eval_images_field()
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
