"""MLflow "model from code" for a registered tokenizer: MLflow executes this file when loading the model,
so nothing is unpickled. uint8 images (N, H, W, 3) -> int64 codes (N, h, w, pixel_depth + semantic_depth)."""

from __future__ import annotations

import mlflow
import numpy as np


class DualTokenPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):  # untyped: MLflow derives a schema from hints
        from transformers import AutoModel

        import dualtoken.models.dualtoken  # noqa: F401  (registers the architecture with AutoModel)

        self.model = AutoModel.from_pretrained(context.artifacts["model"], local_files_only=True).eval()

    def predict(self, context, model_input, params=None):
        import torch

        from dualtoken.data.curated import to_model_input

        images = torch.from_numpy(np.asarray(model_input, dtype=np.uint8)).permute(0, 3, 1, 2)
        codes = self.model.encode(to_model_input(images))
        return torch.cat([codes.pixel, codes.semantic], dim=-1).numpy()


mlflow.models.set_model(DualTokenPyfunc())
