"""Trying the trained MLLM: load it (stage output folder or MLflow model URI), answer a question about an
image, generate images from text. Used by ``dualtoken chat`` / ``dualtoken generate`` and the MLflow pyfunc."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dualtoken.data.curated import from_model_output, to_model_input
from dualtoken.errors import DualtokenError
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.mllm import DualTokenMLLM
from dualtoken.models.mllm_generation import answer, generate_codes
from dualtoken.models.sampling import SamplingConfig
from dualtoken.training.distributed import pick_device


class ModelNotFound(DualtokenError, FileNotFoundError):
    """No MLLM (or its DualToken tokenizer) where one was expected; says how to get one."""


@dataclass
class LoadedMLLM:
    model: DualTokenMLLM
    tokenizer: Any  # text tokenizer
    visual: DualTokenModel  # the DualToken tokenizer: images -> codes -> images


def resolve(source: str) -> tuple[Path, Path | None]:
    """(MLLM folder, DualToken tokenizer folder if the source carries one) for a folder or an MLflow URI."""
    if source.startswith(("models:/", "runs:/")):
        import mlflow
        import yaml

        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
        try:
            logged = yaml.safe_load((root / "MLmodel").read_text())["flavors"]["python_function"]["artifacts"]
            return root / logged["model"]["path"], root / logged["tokenizer"]["path"]
        except (OSError, KeyError, TypeError) as err:
            raise ModelNotFound(f"{source} is not a logged dualtoken MLLM (no model/tokenizer artifacts: "
                                f"{err})") from None
    return Path(source), None


def load_mllm(source: str = "models/mllm", visual_tokenizer: str | None = None, device: str = "auto") -> LoadedMLLM:
    from transformers import AutoTokenizer

    folder, carried = resolve(source)
    if not (folder / "config.json").is_file():
        raise ModelNotFound(f"no MLLM in {folder}: run the mllm stage (dvc repro mllm) or pass --model with a "
                            "folder or an MLflow URI such as models:/dualtoken-mllm/1")
    model = DualTokenMLLM.from_pretrained(folder, local_files_only=True)
    visual_path = Path(visual_tokenizer or carried or model.config.tokenizer_path or "")
    if not (visual_path / "config.json").is_file():
        raise ModelNotFound(f"the DualToken tokenizer {visual_path} (recorded in {folder}/config.json) is missing: "
                            "pass --tokenizer PATH")
    dev = pick_device(device)
    visual = DualTokenModel.from_pretrained(visual_path, local_files_only=True).eval().to(dev)
    return LoadedMLLM(model.eval().to(dev), AutoTokenizer.from_pretrained(folder, local_files_only=True), visual)


def image_codes(loaded: LoadedMLLM, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB images, resized to the tokenizer's input size -> (semantic, pixel) codes."""
    size = loaded.visual.config.vision_config.image_size
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) for im in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    codes = loaded.visual.encode(to_model_input(pixels).to(loaded.visual.device))
    return codes.semantic, codes.pixel


def chat(loaded: LoadedMLLM, image: Image.Image, question: str, max_new_tokens: int = 32) -> str:
    semantic, pixel = image_codes(loaded, [image])
    return answer(loaded.model, loaded.tokenizer, semantic, pixel, [question], max_new_tokens)[0]


def generate_images(loaded: LoadedMLLM, prompts: list[str], sampling: SamplingConfig, seed: int = 0
                    ) -> list[Image.Image]:
    generator = torch.Generator(device=loaded.model.device).manual_seed(seed)
    codes = generate_codes(loaded.model, loaded.tokenizer, prompts, sampling, guided=sampling.cfg_scale != 1.0,
                           generator=generator)
    pictures = from_model_output(loaded.visual.decode(codes.pixel.to(loaded.visual.device)).cpu())
    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pictures]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
