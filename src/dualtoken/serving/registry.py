"""Logging the tokenizer and the MLLM to MLflow as loadable models and registering them.

The registered artifact is an MLflow ``pyfunc`` (model from code, ``pyfunc_tokenizer.py``) around the
``save_pretrained`` folder, so ``mlflow.pyfunc.load_model("models:/dualtoken-tokenizer/1").predict(images)``
returns codes, and the folder itself is there for ``AutoModel.from_pretrained``. The ``dualtoken`` package
travels with the model (``code_paths``) and the requirements name public versions only, so a serving host
builds its environment from the logged model alone.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

PYFUNC_FILE = Path(__file__).with_name("pyfunc_tokenizer.py")
PACKAGE = Path(__file__).resolve().parents[1]  # src/dualtoken: copied into the logged model
SERVING_PACKAGES = ("torch", "transformers", "safetensors", "mlflow", "numpy", "pydantic", "pyyaml", "pillow",
                    "braceexpand")


def requirements() -> list[str]:
    """What a logged model needs to load: these packages at the versions that logged it, without a local
    version label (``torch==2.13.0+cpu`` is no version an index has; ``torch==2.13.0`` is)."""
    return [f"{p}=={version(p).split('+')[0]}" for p in SERVING_PACKAGES]


def log_tokenizer(model_dir: str | Path, registered_name: str | None) -> str:
    """Log the folder as a pyfunc model on the active run (and register it); returns the model URI."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                               outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1, -1))]))
    info = mlflow.pyfunc.log_model(name="tokenizer", python_model=str(PYFUNC_FILE),
                                   artifacts={"model": str(model_dir)}, pip_requirements=requirements(),
                                   code_paths=[str(PACKAGE)], signature=signature,
                                   registered_model_name=registered_name)
    return info.model_uri


MLLM_PYFUNC_FILE = Path(__file__).with_name("pyfunc_mllm.py")


def log_mllm(model_dir: str | Path, tokenizer_dir: str | Path, registered_name: str | None) -> str:
    """Log the MLLM folder and its DualToken tokenizer as one pyfunc model (chat and generate)."""
    import mlflow

    info = mlflow.pyfunc.log_model(name="mllm", python_model=str(MLLM_PYFUNC_FILE),
                                   artifacts={"model": str(model_dir), "tokenizer": str(tokenizer_dir)},
                                   pip_requirements=requirements(), code_paths=[str(PACKAGE)],
                                   registered_model_name=registered_name)
    return info.model_uri
