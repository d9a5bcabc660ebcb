"""MLflow "model from code" for a registered MLLM (nothing is unpickled when it loads).

``predict`` takes a DataFrame (or list of dicts) with a ``prompt`` column and an optional ``image`` column
of PNG/JPEG bytes (empty for none): rows with an image are answered (text), rows without one become generated images
(PNG bytes; base64 in a served answer's JSON). ``params`` (the signature's, with their defaults): cfg_scale,
temperature, top_k, top_p, seed, max_new_tokens.
"""

from __future__ import annotations

import io

import mlflow


class DualTokenMLLMPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):  # untyped: MLflow derives a schema from hints
        from dualtoken.serving.inference import load_mllm

        self.loaded = load_mllm(context.artifacts["model"], context.artifacts["tokenizer"])

    def predict(self, context, model_input, params=None):
        import pandas as pd
        from PIL import Image

        from dualtoken.models.sampling import SamplingConfig
        from dualtoken.serving.inference import chat, generate_images, png_bytes
        from dualtoken.serving.registry import MAX_NEW_TOKENS

        params = dict(params or {})
        rows = pd.DataFrame(model_input).to_dict("records")
        sampling = SamplingConfig(**{k: params[k] for k in ("cfg_scale", "temperature", "top_k", "top_p")
                                     if k in params})
        out = []
        for row in rows:
            image = row.get("image")
            if isinstance(image, bytes | bytearray) and image:  # empty, missing or NaN: draw the prompt
                out.append(chat(self.loaded, Image.open(io.BytesIO(image)), row["prompt"],
                                int(params.get("max_new_tokens", MAX_NEW_TOKENS))))
            else:
                picture = generate_images(self.loaded, [row["prompt"]], sampling, int(params.get("seed", 0)))[0]
                out.append(png_bytes(picture))
        return out


mlflow.models.set_model(DualTokenMLLMPyfunc())
