"""The ``mllm`` section: the LM, the visual heads, the training phases and the validation run of
``training.mllm``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dualtoken.models.sampling import SamplingConfig
from dualtoken.schema import Strict
from dualtoken.training.config import AdamWConfig, RuntimeConfig, shuffle_buffer_field

MllmTask = Literal["caption", "vqa", "t2i"]
MllmPart = Literal["projector", "llm", "heads"]


class LLMConfig(Strict):
    """Where the causal LM comes from: a local pretrained folder, or built from ``mllm.architecture``'s shape with
    random weights and a BPE tokenizer trained on the corpus."""

    pretrained: str | None = Field(None, description="local LM folder (save_pretrained + tokenizer); its width must "
                                                     "be the architecture's; null: built from the architecture")
    vocab_size: int = Field(1024, ge=64, description="BPE vocabulary trained on the corpus text (no pretrained LM)")
    bpe_samples: int = Field(100_000, ge=1, description="the BPE is trained on the texts of the first N train "
                                                        "samples (only the shards they are in are read)")


class MllmShapeOverrides(Strict):
    """``MllmShape`` keys a params file changes on top of the named ``mllm.architecture``, each checked for its
    type and range when the configuration loads; the name, and how the keys fit together, are checked when the
    mllm stage starts (``apps.mllm.mllm_shape``), as the tokenizer's architecture is when its model is built."""

    model_type: str = None  # type: ignore[assignment]
    hidden_size: int = Field(None, ge=8)
    layers: int = Field(None, ge=1)
    heads: int = Field(None, ge=1)
    kv_heads: int = Field(None, ge=1)
    intermediate_size: int = Field(None, ge=8)
    max_positions: int = Field(None, ge=16)
    rope_theta: float = Field(None, gt=0.0)
    tie_word_embeddings: bool = None  # type: ignore[assignment]
    projector_hidden: int = Field(None, ge=8, description="hidden width of the input projector MLP")
    head_width: int = Field(None, ge=8, description="depth-transformer width")
    head_layers: int = Field(None, ge=1, description="depth-transformer layers (the paper's 3)")
    head_heads: int = Field(None, ge=1)
    input_code_dim: int | None = Field(None, ge=1, description="width of the input code tables (lifted from the "
                                       "tokenizer's codebooks); null: the code vectors themselves")


class MllmPhase(Strict):
    """One training phase: which parts train, on which task mixture, at which learning rate."""

    name: str
    steps: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    batch_size: int | None = Field(None, ge=1, description="this phase's global batch; null: mllm.batch_size")
    train: list[MllmPart] = Field(min_length=1)
    tasks: dict[MllmTask, float] = Field(min_length=1, description="mixture weights of the task sequences")

    @field_validator("tasks")
    @classmethod
    def _positive(cls, tasks: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in tasks.values()) or sum(tasks.values()) <= 0:
            raise ValueError(f"task weights must be >= 0 with a positive sum, got {tasks}")
        return tasks


def _paper_phases() -> list[MllmPhase]:
    """The paper's learning rates and batch sizes per phase (its last phase goes from 512 to 256: 256 here)."""
    return [MllmPhase(name="align", steps=1000, lr=1e-3, batch_size=64, train=["projector"], tasks={"caption": 1.0}),
            MllmPhase(name="understand", steps=1000, lr=2e-5, batch_size=256, train=["projector", "llm"],
                      tasks={"caption": 1.0, "vqa": 2.0}),
            MllmPhase(name="generate", steps=1000, lr=1e-4, batch_size=128, train=["heads"], tasks={"t2i": 1.0}),
            MllmPhase(name="joint", steps=1000, lr=1e-5, batch_size=256, train=["projector", "llm", "heads"],
                      tasks={"caption": 1.0, "vqa": 1.0, "t2i": 2.0})]


class MllmEvalConfig(Strict):
    images: int = Field(512, ge=1, description="val images read (the split's first N); the questions and prompts "
                                               "below come from them")
    vqa_questions: int = Field(512, ge=0, description="val questions answered greedily (exact match)")
    generated_images: int = Field(64, ge=0, description="val captions turned into images and classified")
    batch_size: int = Field(64, ge=1)
    sampling: SamplingConfig = SamplingConfig()


class MllmConfig(Strict):
    tokens: str | None = Field(None, description="token corpus (local or s3://); null: tokenize.output_dir")
    tokenizer: str | None = Field(None, description="DualToken tokenizer folder; null: tokenizer.output_dir")
    output_dir: str = "models/mllm"
    metrics_path: str = "metrics/mllm.json"
    plots_path: str | None = Field("plots/mllm/train.csv", description="training curve CSV (DVC plot)")
    work_dir: str = Field("data/.work/mllm", description="DeepSpeed checkpoints (resume)")
    architecture: str = Field("qwen2.5-3b", description="named MLLM shape (dualtoken.models.mllm_shapes): the LM "
                                                        "and the visual heads; demo, qwen2.5-0.5b/3b/7b")
    overrides: dict[str, Any] = Field(default_factory=dict, description="MllmShape keys (MllmShapeOverrides), "
                                      "e.g. head_layers")
    llm: LLMConfig = LLMConfig()
    phases: list[MllmPhase] = Field(default_factory=_paper_phases, min_length=1)
    run_phases: list[str] | None = Field(None, description="names of the phases to run, in order; null: all")
    batch_size: int = Field(32, ge=1, description="global batch (sequences per optimizer step) of a phase that "
                                                  "sets none")
    shuffle_buffer: int = shuffle_buffer_field("task stream")
    max_text_tokens: int = Field(48, ge=4, description="captions, questions and answers are cut to this length")
    vqa_turns: int = Field(1, ge=1, description="questions asked per VQA sequence: a conversation over one image, "
                                                "several answers' signal for one pass over its positions")
    text_loss_weight: float = Field(1.0, ge=0.0)
    visual_loss_weight: float = Field(1.0, ge=0.0, description="x (sum over depths of both streams' CE)")
    prompt_dropout: float = Field(0.1, ge=0.0, le=1.0, description="t2i prompts dropped (for CFG)")
    optim: AdamWConfig = Field(AdamWConfig(betas=(0.9, 0.95), weight_decay=0.0, warmup_steps=10),
                               description="every phase's optimizer; its learning rate is the phase's lr")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    runtime: RuntimeConfig = RuntimeConfig()
    eval: MllmEvalConfig = MllmEvalConfig()
    register_as: str | None = Field("dualtoken-mllm", description="MLflow registered model; null skips")

    @field_validator("overrides")
    @classmethod
    def _typed_overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        return MllmShapeOverrides.model_validate(overrides).model_dump(exclude_unset=True)

    @model_validator(mode="after")
    def _phases_known(self) -> MllmConfig:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        for name in self.run_phases or []:
            if name not in names:
                raise ValueError(f"run_phases: unknown phase {name!r}; phases are {names}")
        return self

    def phase_batch(self, phase: MllmPhase) -> int:
        """The phase's global batch: its own, else ``batch_size``."""
        return phase.batch_size or self.batch_size

    def selected_phases(self) -> list[MllmPhase]:
        if self.run_phases is None:
            return list(self.phases)
        by_name = {p.name: p for p in self.phases}
        return [by_name[n] for n in self.run_phases]
