"""What the MLLM stage measures on val: VQA exact match beside the majority-answer baseline, and whether
generated images show the prompted shape and colour, judged by the teacher's zero-shot classifier beside
chance and beside the teacher's accuracy on the real images of the same prompts (its ceiling)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from dualtoken.config import SamplingConfig
from dualtoken.data.curated import from_model_output, to_model_input
from dualtoken.data.tokens import TokenSplit
from dualtoken.evaluation.zeroshot import TASKS, embed_in_batches, label_of, zero_shot
from dualtoken.models.mllm import DualTokenMLLM
from dualtoken.models.mllm_generation import answer, generate_codes
from dualtoken.models.teacher import image_embedder, text_embedder


def normalise(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".?!").split())


def spread(items: list[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced over the list (all of them when n >= len): every kind of sample, no RNG."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


@torch.no_grad()
def vqa_accuracy(model: DualTokenMLLM, tokenizer: Any, val: TokenSplit, train_meta: list[dict[str, Any]],
                 questions: int, batch_size: int) -> dict[str, Any]:
    items = spread([(i, q) for i, m in enumerate(val.meta) for q in m.get("qa", [])], questions)
    if not items:
        return {}
    by_type: dict[str, Counter] = {}
    for m in train_meta:
        for q in m.get("qa", []):
            by_type.setdefault(q["type"], Counter())[normalise(q["answer"])] += 1
    majority = {t: c.most_common(1)[0][0] for t, c in by_type.items()}
    predictions = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        rows = torch.tensor([i for i, _ in chunk])
        predictions += answer(model, tokenizer, val.semantic[rows], val.pixel[rows], [q["question"] for _, q in chunk],
                              max_new_tokens=8)
    correct = [normalise(p) == normalise(q["answer"]) for p, (_, q) in zip(predictions, items, strict=True)]
    baseline = [majority.get(q["type"]) == normalise(q["answer"]) for _, q in items]
    per_type: dict[str, list[bool]] = {}
    for ok, (_, q) in zip(correct, items, strict=True):
        per_type.setdefault(q["type"], []).append(ok)
    return {"accuracy": sum(correct) / len(items), "majority_baseline": sum(baseline) / len(items),
            "questions": len(items), "per_type": {t: sum(v) / len(v) for t, v in sorted(per_type.items())},
            "examples": [{"question": q["question"], "answer": q["answer"], "predicted": p}
                         for p, (_, q) in list(zip(predictions, items, strict=True))[:8]]}


@torch.no_grad()
def generation_accuracy(model: DualTokenMLLM, tokenizer: Any, visual_tokenizer: Any, teacher: Any,
                        teacher_tokenizer: Any, val: TokenSplit, images: int, batch_size: int,
                        sampling: SamplingConfig, seed: int) -> tuple[dict[str, Any], torch.Tensor]:
    """Shape and colour accuracy of images generated from val captions of single-object scenes; also
    returns the generated images (uint8, N x 3 x H x W)."""
    rows = spread([i for i, m in enumerate(val.meta) if label_of("shape", m) and label_of("colour", m)], images)
    if not rows:
        return {}, torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    prompts = [val.meta[i]["captions"][0] for i in rows]
    generated = []
    for start in range(0, len(rows), batch_size):
        codes = generate_codes(model, tokenizer, prompts[start : start + batch_size], sampling, generator=generator)
        generated.append(from_model_output(visual_tokenizer.decode(codes.pixel.to(device)).cpu()))
    pictures = torch.cat(generated)
    originals = from_model_output(visual_tokenizer.decode(val.pixel[rows].to(device)).cpu())
    metas = [val.meta[i] for i in rows]
    max_length = teacher.config.text_config.max_position_embeddings
    embed_texts = text_embedder(teacher, teacher_tokenizer, max_length, device)
    embed = image_embedder(teacher)

    def judged(batch: torch.Tensor) -> dict[str, dict[str, float]]:
        return zero_shot(embed_in_batches(lambda x: embed(to_model_input(x).to(device)), batch, batch_size), metas,
                         embed_texts)

    on_generated, on_real = judged(pictures), judged(originals)
    classes = {t.name: len(t.classes) for t in TASKS}
    result = {task: {"accuracy": on_generated[task]["accuracy"], "chance": 1 / classes[task],
                     "teacher_on_tokenized_real": on_real[task]["accuracy"]}
              for task in ("shape", "colour") if task in on_generated}
    result["images"] = len(rows)
    result["prompts"] = prompts[:8]
    return result, pictures
