"""Logging the tokenizer and the MLLM to MLflow as servable models, registering them, and moving their aliases.

A logged model is an MLflow ``pyfunc`` (model from code: ``pyfunc_tokenizer.py``, ``pyfunc_mllm.py``) around the
``save_pretrained`` folder, so ``mlflow.pyfunc.load_model("models:/dualtoken-tokenizer@champion").predict(images)``
returns codes and the folder itself is there for ``from_pretrained``. It loads outside this repository:
its requirements name public versions only (an index has ``torch==2.13.0``, not ``2.13.0+cpu``) and the
``dualtoken`` package itself, as a wheel inside the model (``serving.wheel``).

Each registered version is tagged with the git commit, the ``dvc.lock`` it was trained under and its
checkpoint's SHA-256; training points the alias ``candidate`` at it, and the evaluate stage moves ``champion``
to the versions it measured when the configured bars pass (``promote``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from dualtoken.models.sampling import SamplingConfig
from dualtoken.models.teacher import checkpoint_digest
from dualtoken.serving.wheel import build_wheel
from dualtoken.tracking import git_commit

SERVING_PACKAGES = ("torch", "transformers", "safetensors", "mlflow", "numpy", "pandas", "pydantic", "pyyaml",
                    "pillow", "braceexpand")
CANDIDATE, CHAMPION = "candidate", "champion"
CHECKPOINT_TAG = "checkpoint.sha256"  # how the evaluate stage finds the version of the folder it measured
MAX_NEW_TOKENS = 32  # an answer's default length, where the request names none


def requirements() -> list[str]:
    """What a logged model needs to load, besides the package's wheel: these packages at the versions that
    logged it, without a local version label."""
    return [f"{p}=={version(p).split('+')[0]}" for p in SERVING_PACKAGES]


def version_tags(folder: str | Path) -> dict[str, str]:
    """Where a registered version came from: git commit, the pipeline's lock file, the checkpoint's identity."""
    lock = Path("dvc.lock")  # stages run at the repository root
    return {"git.commit": git_commit(),
            "dvc.lock.sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else "none",
            CHECKPOINT_TAG: checkpoint_digest(folder)}


def _input_size(tokenizer_dir: str | Path) -> int:
    """The DualToken tokenizer's input resolution, from its saved config (for the input examples)."""
    return json.loads((Path(tokenizer_dir) / "config.json").read_text())["vision_config"]["image_size"]


def _log_and_register(name: str, python_model: Path, artifacts: dict[str, str], registered_name: str | None,
                      **example_and_signature: Any) -> str:
    """Log a pyfunc with the package wheel among its artifacts and requirements; register it as ``candidate``."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(tmp)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(python_model), artifacts={**artifacts, "package": str(wheel)},
            pip_requirements=[*requirements(), f"artifacts/{wheel.name}"], registered_model_name=registered_name,
            **example_and_signature)
    if registered_name:
        client = mlflow.MlflowClient()
        number = info.registered_model_version
        for key, value in version_tags(artifacts["model"]).items():
            client.set_model_version_tag(registered_name, number, key, value)
        client.set_registered_model_alias(registered_name, CANDIDATE, number)
        return f"models:/{registered_name}/{number}"
    return info.model_uri


def log_tokenizer(model_dir: str | Path, registered_name: str | None) -> str:
    """Log the folder as a pyfunc model on the active run (and register it); returns the model URI.
    uint8 images (N, H, W, 3) -> int64 codes (N, h, w, pixel_depth + semantic_depth)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = _input_size(model_dir)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                               outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1, -1))]))
    example = np.full((1, size, size, 3), 128, np.uint8)
    return _log_and_register("tokenizer", Path(__file__).with_name("pyfunc_tokenizer.py"),
                             {"model": str(model_dir)}, registered_name, signature=signature, input_example=example)


def mllm_signature() -> Any:
    """Rows of ``prompt`` and an optional ``image`` (PNG/JPEG bytes; empty: draw the prompt); the sampling
    knobs as request params, with the defaults the pyfunc applies."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    sampling = SamplingConfig()
    params = [ParamSpec("cfg_scale", "double", sampling.cfg_scale), ParamSpec("temperature", "double",
                                                                              sampling.temperature),
              ParamSpec("top_k", "long", sampling.top_k), ParamSpec("top_p", "double", sampling.top_p),
              ParamSpec("seed", "long", 0), ParamSpec("max_new_tokens", "long", MAX_NEW_TOKENS)]
    return ModelSignature(inputs=Schema([ColSpec("string", "prompt"), ColSpec("binary", "image", required=False)]),
                          params=ParamSchema(params))


def mllm_example(tokenizer_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """A question about a grey image and a prompt to draw, with one request param."""
    import pandas as pd
    from PIL import Image

    from dualtoken.serving.inference import png_bytes

    size = _input_size(tokenizer_dir)
    grey = png_bytes(Image.new("RGB", (size, size), (128, 128, 128)))
    rows = pd.DataFrame({"prompt": ["what colour is the shape?", "a small red circle"], "image": [grey, b""]})
    return rows, {"max_new_tokens": 8}


def log_mllm(model_dir: str | Path, tokenizer_dir: str | Path, registered_name: str | None) -> str:
    """Log the MLLM folder and its DualToken tokenizer as one pyfunc model (chat and generate)."""
    return _log_and_register("mllm", Path(__file__).with_name("pyfunc_mllm.py"),
                             {"model": str(model_dir), "tokenizer": str(tokenizer_dir)}, registered_name,
                             signature=mllm_signature(), input_example=mllm_example(tokenizer_dir))


def promote(registered_name: str, folder: str | Path) -> str:
    """Point ``champion`` at the registered version holding this checkpoint; returns ``models:/NAME/N``.
    A checkpoint no version holds (trained against another tracking store) is an error naming it."""
    import mlflow

    client = mlflow.MlflowClient()
    digest = checkpoint_digest(folder)
    found = client.search_model_versions(f"name = '{registered_name}' and tags.`{CHECKPOINT_TAG}` = '{digest}'")
    if not found:
        raise LookupError(f"no version of {registered_name} holds the checkpoint {folder} (SHA-256 {digest[:12]}): "
                          "it was trained against another tracking store, or not registered")
    number = max(int(v.version) for v in found)  # a retrained identical checkpoint: its newest version
    client.set_registered_model_alias(registered_name, CHAMPION, str(number))
    return f"models:/{registered_name}/{number}"
