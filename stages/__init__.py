"""The pipeline's stages, declared once: what each runs, in how many processes, whether its input can be split
over an array job, and which numbers headline it.

Everything that starts a stage goes through ``stages.runner`` with this table: DVC's ``cmd:``
(``python -m stages teacher``), the flow's array tasks and the ``dualtoken`` command line. The applications
(``dualtoken.apps.<name>``) are leaves that only the runner imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dualtoken.config import Config
from dualtoken.launch.config import SLICED_STAGES, STAGE_PROCESSES


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    metrics: Callable[[Config], str]  # the metrics file the stage writes (for ablation: the last variant's)
    headline: tuple[str, ...]  # dotted keys of ``metrics`` shown in the flow's run summary
    variants: bool = False  # takes variant names (ablation): each is its own DVC stage, the CLI may run several
    finalize: bool = False  # ``--finalize``: only assemble what the array's slices wrote

    @property
    def app(self) -> str:
        return f"dualtoken.apps.{self.name}"

    @property
    def processes(self) -> str | None:
        """The section whose ``runtime.nproc`` sets the process count (None: always one process)."""
        return STAGE_PROCESSES.get(self.name)

    @property
    def sliceable(self) -> bool:
        """Whether ``--rank/--world`` (or an array task's environment) may give it one slice of its input shards."""
        return self.name in SLICED_STAGES


def _ablation_metrics(cfg: Config) -> str:
    return str(Path(cfg.ablation.metrics_dir) / f"{cfg.ablation.variants[-1]}.json")


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("curate", "curate raw sources into validated WebDataset shards, with quarantine and stats",
          lambda cfg: cfg.curate.metrics_path,
          ("inputs", "accepted", "rejected", "throughput.images_per_s")),
    Stage("teacher", "train the demo SigLIP teacher (or record a pretrained one)",
          lambda cfg: cfg.teacher.metrics_path,
          ("zero_shot.shape.accuracy", "zero_shot.colour.accuracy", "retrieval_r1.image_to_text")),
    Stage("tokenizer", "train the DualToken tokenizer from the teacher",
          lambda cfg: cfg.tokenizer.metrics_path,
          ("psnr", "ssim", "zero_shot.colour.ratio", "usage.pixel.overall", "usage.semantic.overall")),
    Stage("tokenize", "tokenise the curated corpus into dual-code shards",
          lambda cfg: cfg.tokenize.metrics_path,
          ("images", "tokens.total", "throughput.images_per_s", "verify.psnr_written",
           "codes.pixel.usage.all_depths", "codes.semantic.usage.all_depths"), finalize=True),
    Stage("mllm", "train the unified MLLM on the token shards (DeepSpeed)",
          lambda cfg: cfg.mllm.metrics_path,
          ("vqa.accuracy", "vqa.majority_baseline", "generation.shape.accuracy", "generation.colour.accuracy",
           "train_seconds")),
    Stage("ablation", "train and measure the conflict-ablation tokenizer variants (default: ablation.variants)",
          _ablation_metrics, ("reconstruction.psnr", "reconstruction.ssim"), variants=True),
    Stage("evaluate", "measure every model on the held-out split and write the HTML report",
          lambda cfg: cfg.evaluate.metrics_path,
          ("tokenizer.reconstruction.psnr", "mllm.vqa.accuracy", "mllm.captions.cider_d",
           "mllm.generation.colour.accuracy")),
)}
