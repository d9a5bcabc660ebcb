"""Zero-shot attribute classification and image-text retrieval, SigLIP style.

Class prompts come from the corpus' attribute vocabulary (shape, colour, digit, object count) with a few templates per
class whose text embeddings are averaged (prompt ensembling, as CLIP does). An image enters a task only
when the attribute has one value in it (a single shape; a digit; any scene for the count), so every prediction
has one right answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dualtoken.data.synthetic import COLOURS, NUMBER_WORDS, SHAPES

Embed = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]  # formatted with {c}

    def prompts(self, cls: str) -> list[str]:
        return [t.format(c=cls) for t in self.templates]


TASKS = (
    Task("shape", SHAPES, ("a picture of a {c}", *(f"a {colour} {{c}}" for colour in COLOURS))),
    Task("colour", tuple(COLOURS), (*(f"a {{c}} {shape}" for shape in SHAPES), "a {c} handwritten digit")),
    Task("digit", NUMBER_WORDS, ("a handwritten digit {c}", "a handwritten {c}")),
    Task("count", NUMBER_WORDS[1:4], ("a picture with {c} objects", "{c} shapes", "there are {c} shapes in the image")),
)


def label_of(task: str, meta: dict[str, Any]) -> str | None:
    """The attribute's value when the image has exactly one (else None: the image sits this task out)."""
    attrs = meta.get("attributes", {})
    kind = attrs.get("kind")
    if kind == "shapes" and task == "count" and attrs.get("count") in (1, 2, 3):
        return NUMBER_WORDS[attrs["count"]]
    if kind == "shapes" and attrs.get("count") == 1:
        obj = attrs["objects"][0]
        return {"shape": obj["shape"], "colour": obj["colour"]}.get(task)
    if kind == "digit":
        return {"colour": attrs.get("colour"), "digit": NUMBER_WORDS[attrs["digit"]]}.get(task)
    return None


def attribute_targets(metas: Sequence[dict[str, Any]]) -> torch.Tensor:
    """(N, len(TASKS)) class index of each task's label per image, -100 where the image sits the task out."""
    rows = []
    for meta in metas:
        labels = [label_of(task.name, meta) for task in TASKS]
        rows.append([-100 if label is None else task.classes.index(label) for task, label in zip(TASKS, labels,
                                                                                                 strict=True)])
    return torch.tensor(rows, dtype=torch.long).reshape(len(metas), len(TASKS))


@torch.no_grad()
def embed_in_batches(fn: Embed, items: torch.Tensor, batch_size: int) -> torch.Tensor:
    return F.normalize(torch.cat([fn(items[i : i + batch_size]).float() for i in range(0, len(items), batch_size)]),
                       dim=-1)


@torch.no_grad()
def zero_shot(image_embeds: torch.Tensor, metas: Sequence[dict[str, Any]],
              embed_texts: Callable[[list[str]], torch.Tensor]) -> dict[str, dict[str, float]]:
    """Accuracy per task: argmax cosine between each image and the class prompt-ensemble embeddings."""
    results: dict[str, dict[str, float]] = {}
    for task in TASKS:
        labels = [label_of(task.name, m) for m in metas]
        rows = [i for i, label in enumerate(labels) if label is not None]
        if not rows:
            continue
        prompts = [p for c in task.classes for p in task.prompts(c)]
        per_class = F.normalize(embed_texts(prompts).float(), dim=-1).view(len(task.classes), len(task.templates), -1)
        class_embeds = F.normalize(per_class.mean(1), dim=-1)
        predicted = (image_embeds[rows] @ class_embeds.t()).argmax(1)
        target = torch.tensor([task.classes.index(labels[i]) for i in rows])
        results[task.name] = {"accuracy": float((predicted == target).float().mean()), "images": len(rows)}
    return results


@torch.no_grad()
def retrieval_r1(image_embeds: torch.Tensor, text_embeds: torch.Tensor, captions: Sequence[str]) -> dict[str, float]:
    """Recall@1 both ways for paired rows; retrieving a different item with the identical caption counts."""
    sims = image_embeds @ text_embeds.t()
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    caption_id = torch.tensor([ids[c] for c in captions])
    i2t = caption_id[sims.argmax(1)] == caption_id
    t2i = caption_id[sims.argmax(0)] == caption_id
    return {"image_to_text": float(i2t.float().mean()), "text_to_image": float(t2i.float().mean())}
