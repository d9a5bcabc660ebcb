"""The search for a demo profile whose teacher learns shape and colour within the demo's time: one table.

Each row is a candidate profile (scene data, tower, objective), trained from scratch for a short budget on
the same kind of corpus the demo curates (``--shapes`` scenes + ``--digits`` MNIST digits, a held-out 400),
and scored by the teacher stage's own evaluation (``dualtoken.metrics.zeroshot``: prompt-ensembled
zero-shot per attribute, chance 1/6 shape, 1/8 colour, 1/10 digit, 1/3 count). Objectives:

* ``contrastive`` - the teacher stage's sigmoid loss on (image, one of its captions), as trained in the demo;
* ``+attributes`` - the same plus cross-entropy heads on the pooled image embedding for the attributes the
  metadata carries (shape, colour, digit), a candidate recipe for the demo teacher;
* ``probe`` - supervised shape classification only (no text tower): how fast the tower *can* learn shapes,
  the ceiling for the rows above. Its "shape" column is classification accuracy, not zero-shot.

The optimiser and text tower are the teacher stage's (params.yaml ``teacher``), batch 32. Times are this
machine's, for ``--steps`` steps with the given torch threads.

    python benchmarks/demo_sweep.py [--steps 400] [--rows NAME ...] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Profile:
    name: str
    size: int = 32
    patch: int = 4
    conv_stem: tuple[int, ...] | None = (16, 32)
    max_objects: int = 1
    object_scale: float = 2.0
    textured_fraction: float = 0.0
    objective: str = "contrastive"
    extra: dict[str, Any] = field(default_factory=dict)


ROWS = {p.name: p for p in (
    Profile("demo-64px (committed)", size=64, patch=8, conv_stem=None, max_objects=3, object_scale=1.0,
            textured_fraction=0.5),
    Profile("32px-1obj-patchify", conv_stem=None),
    Profile("32px-1obj-stem"),
    Profile("32px-1obj-stem +attributes", objective="+attributes"),
    Profile("32px-1obj-patchify probe", conv_stem=None, objective="probe"),
    Profile("32px-1obj-stem probe", objective="probe"),
)}


def corpus(p: Profile, shapes: int, digits: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    from PIL import Image

    from dualtoken.data.mnist import generate_digit
    from dualtoken.data.synthetic import generate_example

    examples = [generate_example(0, i, p.size, p.textured_fraction, p.max_objects, p.object_scale)
                for i in range(shapes)] + [generate_digit(0, i, p.size) for i in range(digits)]
    images = torch.stack([torch.from_numpy(np.array(Image.open(io.BytesIO(e.png)).convert("RGB"))).permute(2, 0, 1)
                          for e in examples])
    return images, [{"captions": e.captions, "attributes": e.attributes} for e in examples]


def attribute_labels(metas: list[dict[str, Any]]) -> torch.Tensor:
    """(N, 3) shape / colour / digit class per image, -100 where the image has no single value."""
    from dualtoken.data.synthetic import COLOURS, SHAPES

    rows = []
    for m in metas:
        a = m["attributes"]
        if a.get("kind") == "shapes" and a["count"] == 1:
            obj = a["objects"][0]
            rows.append((SHAPES.index(obj["shape"]), list(COLOURS).index(obj["colour"]), -100))
        elif a.get("kind") == "digit":
            rows.append((-100, list(COLOURS).index(a["colour"]), a["digit"]))
        else:
            rows.append((-100, -100, -100))
    return torch.tensor(rows)


def run(p: Profile, steps: int, shapes: int, digits: int, seed: int = 0) -> dict[str, Any]:
    from dualtoken.config import load_config
    from dualtoken.data.curated import to_model_input
    from dualtoken.metrics.zeroshot import embed_in_batches, zero_shot
    from dualtoken.models.teacher import image_embedder, new_teacher, scratch_config, text_embedder, tokenize
    from dualtoken.text import train_bpe
    from dualtoken.training.schedule import build_optimizer
    from dualtoken.training.teacher import sigmoid_loss

    torch.manual_seed(seed)
    images, metas = corpus(p, shapes, digits)
    order = np.random.default_rng(seed).permutation(len(metas))
    val, train = order[:400], order[400:]
    labels = attribute_labels(metas)
    teacher = load_config(Path(__file__).resolve().parents[1] / "params.yaml").teacher
    text = teacher.text
    tokenizer = train_bpe((c for i in train for c in metas[i]["captions"]), text.vocab_size)
    vision = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True,
              "image_size": p.size, "patch_size": p.patch, "hidden_size": 128, "intermediate_size": 512,
              "num_hidden_layers": 6, "num_attention_heads": 4,
              **({"conv_stem": list(p.conv_stem)} if p.conv_stem else {})}
    model = new_teacher(scratch_config(vision, len(tokenizer), text.max_length, text.hidden_size,
                                       text.intermediate_size, text.layers, text.heads, tokenizer.pad_token_id), 32)
    heads = torch.nn.ModuleList([torch.nn.Linear(128, n) for n in (6, 8, 10)])
    params = list(model.vision_model.parameters()) if p.objective == "probe" else list(model.parameters())
    optimizer, scheduler = build_optimizer([{"params": params + list(heads.parameters())}], teacher.optim, steps)
    draw = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = train[torch.randint(len(train), (32,), generator=draw).numpy()]
        pixels = to_model_input(images[batch])
        if p.objective == "probe":
            pooled = model.vision_model(pixel_values=pixels).pooler_output
            loss = F.cross_entropy(heads[0](pooled), labels[batch, 0], ignore_index=-100)
        else:
            picks = torch.randint(4, (len(batch),), generator=draw)
            ids = tokenize(tokenizer, [metas[i]["captions"][int(k) % len(metas[i]["captions"])]
                                       for i, k in zip(batch, picks, strict=True)], text.max_length)
            out = model(input_ids=ids, pixel_values=pixels)
            loss = sigmoid_loss(out.image_embeds, out.text_embeds, model.logit_scale, model.logit_bias, ids)
            if p.objective == "+attributes":
                pooled = out.vision_model_output.pooler_output
                for k, head in enumerate(heads):
                    if (labels[batch, k] >= 0).any():
                        loss = loss + F.cross_entropy(head(pooled), labels[batch, k], ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, teacher.optim.grad_clip)
        optimizer.step()
        scheduler.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        if p.objective == "probe":
            rows = [i for i in val if labels[i, 0] >= 0]
            pooled = model.vision_model(pixel_values=to_model_input(images[rows])).pooler_output
            scores = {"shape": float((heads[0](pooled).argmax(1) == labels[rows, 0]).float().mean())}
        else:
            embeds = embed_in_batches(lambda x: image_embedder(model)(to_model_input(x)), images[val], 256)
            found = zero_shot(embeds, [metas[i] for i in val],
                              text_embedder(model, tokenizer, text.max_length, torch.device("cpu")))
            scores = {k: v["accuracy"] for k, v in found.items()}
    return {"row": p.name, "objective": p.objective, "steps": steps, "train_s": round(seconds, 1),
            **{k: round(v, 3) for k, v in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help=f"any of {list(ROWS)}")
    parser.add_argument("--shapes", type=int, default=3000)
    parser.add_argument("--digits", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for name in args.rows:
        if name not in ROWS:
            parser.error(f"unknown row {name!r}; known: {list(ROWS)}")
    torch.set_num_threads(args.threads)
    results = []
    print("| profile | objective | steps | train s | shape | colour | digit | count |\n" + "|---" * 8 + "|")
    for name in args.rows:
        r = run(ROWS[name], args.steps, args.shapes, args.digits)
        results.append(r)
        cells = [r.get(k, "") for k in ("shape", "colour", "digit", "count")]
        print(f"| {name} | {r['objective']} | {r['steps']} | {r['train_s']} | " + " | ".join(map(str, cells)) + " |",
              flush=True)
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
