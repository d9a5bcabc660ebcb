"""The ``evaluate`` and ``ablation`` sections: what is measured on the held-out split, and the conflict
ablation's budget.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dualtoken.models.sampling import SamplingConfig
from dualtoken.schema import Strict, curated_input, repeated


class ZeroShotTaskConfig(Strict):
    """Zero-shot classification on a labelled source, as the paper's ImageNet protocol (OpenCLIP's): one
    prompt-ensemble embedding per class, top-1 accuracy through the teacher, the teacher with the tokenizer's
    semantic quantizer and the tokenizer."""

    name: str = Field(min_length=1, description="the task's name in the metrics, e.g. imagenet")
    classes: str = Field(description="class-names file: one name per line, line i is class i")
    label_key: str = Field("label", description="sample metadata field with the class name or its 0-based index; "
                                                "dots reach nested fields (attributes.label)")
    templates: str = Field("openai-imagenet", description="openai-imagenet (the 80 OpenAI ImageNet prompts), photo "
                                                          "('a photo of a {c}.') or a file, one template per line")


class BarConfig(Strict):
    """One bar a measurement must clear for the evaluated models to become the registry's ``champion``."""

    metric: str = Field(min_length=1, description="dotted path into metrics/evaluate.json, e.g. mllm.vqa.accuracy")
    min: float | str | None = Field(None, description="lowest passing value: a number or another metric's path "
                                                      "(mllm.vqa.majority_baseline)")
    max: float | str | None = Field(None, description="highest passing value: a number or another metric's path")

    @model_validator(mode="after")
    def _bounded(self) -> BarConfig:
        if self.min is None and self.max is None:
            raise ValueError(f"bar on {self.metric} sets neither min nor max")
        return self


class FidConfig(Strict):
    """How reconstruction FID is measured; the defaults are the released evaluation's (clean-fid)."""

    resize: Literal["clean", "bilinear"] = Field(
        "clean", description="to Inception's 299 px: clean = antialiased bicubic (clean-fid); bilinear = "
                             "pytorch-fid's")
    jpeg_quality: int | None = Field(95, ge=1, le=100, description="both sides saved as JPEG at this quality and "
                                     "read back first, as the released evaluation; null: none")
    images: int | None = Field(None, ge=2, description="held-out images (the split's first N), streamed; null: "
                                                       "the whole split")


class EvaluateConfig(Strict):
    """The evaluation stage: every model on a held-out split, one report."""

    input: str | None = curated_input()
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
    fid: FidConfig = FidConfig()
    zero_shot: list[ZeroShotTaskConfig] = Field(
        default_factory=list, description="labelled-source tasks, besides the demo attribute tasks (which run "
                                          "where images carry the demo attributes)")
    retrieval: bool = Field(True, description="image-text R@1 over the held-out images' first captions, through "
                                              "the teacher and the tokenizer's semantic path")

    vqa_questions: int = Field(512, ge=0)
    caption_images: int = Field(256, ge=0, description="images captioned greedily (BLEU-4, CIDEr-D)")
    generated_images: int = Field(64, ge=0, description="images generated from captions (one each)")
    report_prompts: int = Field(6, ge=0, description="prompts shown in the report, each sampled report_samples times")
    report_samples: int = Field(4, ge=1)
    sampling: SamplingConfig = SamplingConfig()
    seed: int = Field(0, description="seeds every sampled image")
    champion_bars: list[BarConfig] = Field(
        default_factory=list, description="when every bar holds, the stage points the registry alias champion at "
                                          "the tokenizer and MLLM versions it measured; none: champion never moves")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null keeps torch's choice")

    @field_validator("zero_shot")
    @classmethod
    def _distinct_names(cls, tasks: list[ZeroShotTaskConfig]) -> list[ZeroShotTaskConfig]:
        if names := repeated(t.name for t in tasks):
            raise ValueError(f"task names must be distinct, repeated: {names}")
        return tasks


AblationVariant = Literal["a_one_codebook", "b_recon_semantic_layer", "c_recon_pixel_layer", "d_dualtoken"]


class AblationConfig(Strict):
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
