"""Zero-shot classification and image-text retrieval, SigLIP style.

A task is a set of class names, prompt templates whose text embeddings are averaged per class (prompt
ensembling, as CLIP does), and a way to read an image's label from its metadata. The built-in ``TASKS`` use the
demo corpus' attribute vocabulary (shape, colour, digit, object count); an image enters one only when the
attribute has one value in it (a single shape; a digit; any scene for the count), so every prediction has one
right answer. ``labelled_task`` makes one for any labelled source (ImageNet-style: a class-names file, the 80
OpenAI templates, a metadata field with the class).
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
    label: Callable[[dict[str, Any]], str | None]  # an image's class name from its metadata; None: not in the task
    required: bool = False  # configured for a labelled source: no labelled image is an error, not an empty row
    template_set: str = "demo attribute prompts"  # recorded beside the accuracy

    def prompts(self, cls: str) -> list[str]:
        return [t.format(c=cls) for t in self.templates]


def _attribute_task(name: str, classes: tuple[str, ...], templates: tuple[str, ...]) -> Task:
    return Task(name, classes, templates, lambda meta: label_of(name, meta))


def labelled_task(name: str, classes: tuple[str, ...], templates: tuple[str, ...], label_key: str,
                  template_set: str) -> Task:
    """A task for a labelled source: ``label_key`` (dots reach nested fields) holds the class name or its
    0-based index into ``classes``; an image without the field sits the task out, a label that is not a class
    is an error naming it."""
    index = {c: i for i, c in enumerate(classes)}

    def label(meta: dict[str, Any]) -> str | None:
        value: Any = meta
        for part in label_key.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
            return classes[value]
        if isinstance(value, str) and value in index:
            return value
        raise ValueError(f"zero-shot task {name!r}: label {value!r} (field {label_key!r}) is neither one of its "
                         f"{len(classes)} class names nor an index below {len(classes)}")

    return Task(name, classes, templates, label, required=True, template_set=template_set)


TASKS = (
    _attribute_task("shape", SHAPES, ("a picture of a {c}", *(f"a {colour} {{c}}" for colour in COLOURS))),
    _attribute_task("colour", tuple(COLOURS), (*(f"a {{c}} {shape}" for shape in SHAPES), "a {c} handwritten digit")),
    _attribute_task("digit", NUMBER_WORDS, ("a handwritten digit {c}", "a handwritten {c}")),
    _attribute_task("count", NUMBER_WORDS[1:4], ("a picture with {c} objects", "{c} shapes",
                                                 "there are {c} shapes in the image")),
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
        labels = [task.label(meta) for task in TASKS]
        rows.append([-100 if label is None else task.classes.index(label) for task, label in zip(TASKS, labels,
                                                                                                 strict=True)])
    return torch.tensor(rows, dtype=torch.long).reshape(len(metas), len(TASKS))


@torch.no_grad()
def embed_in_batches(fn: Embed, items: torch.Tensor, batch_size: int) -> torch.Tensor:
    return F.normalize(torch.cat([fn(items[i : i + batch_size]).float() for i in range(0, len(items), batch_size)]),
                       dim=-1)


@torch.no_grad()
def class_embeddings(task: Task, embed_texts: Callable[[list[str]], torch.Tensor], batch: int = 4096
                     ) -> torch.Tensor:
    """(classes, D) unit prompt-ensemble embeddings: each class's template embeddings normalised, averaged and
    normalised again; prompts go through the text tower ``batch`` at a time (1000 classes x 80 templates)."""
    prompts = [p for c in task.classes for p in task.prompts(c)]
    embeds = torch.cat([F.normalize(embed_texts(prompts[i : i + batch]).float(), dim=-1)
                        for i in range(0, len(prompts), batch)])
    return F.normalize(embeds.view(len(task.classes), len(task.templates), -1).mean(1), dim=-1)


@torch.no_grad()
def zero_shot(image_embeds: torch.Tensor, metas: Sequence[dict[str, Any]],
              embed_texts: Callable[[list[str]], torch.Tensor], tasks: Sequence[Task] = TASKS
              ) -> dict[str, dict[str, Any]]:
    """Top-1 accuracy per task: argmax cosine between each image and the class prompt-ensemble embeddings.
    A built-in task no image belongs to is left out; a configured one (``required``) is an error."""
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        labels = [task.label(m) for m in metas]
        rows = [i for i, label in enumerate(labels) if label is not None]
        if not rows:
            if task.required:
                raise ValueError(f"zero-shot task {task.name!r}: none of the {len(metas)} images has a label")
            continue
        index = {c: i for i, c in enumerate(task.classes)}
        predicted = (image_embeds[rows] @ class_embeddings(task, embed_texts).t()).argmax(1)
        target = torch.tensor([index[labels[i]] for i in rows])
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
