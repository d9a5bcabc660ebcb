"""What the MLLM is measured on: VQA exact match (overall and per question type) beside the majority-answer
baseline, captions (BLEU-4, CIDEr-D against every reference caption of the image), and images generated from
captions: a Fréchet distance to the real images of those captions, and whether the teacher's zero-shot
classifier sees the prompted shape, colour and object count (beside chance and beside the teacher on the
tokenizer's reconstructions of the real images, its ceiling). Sampling is seeded; the seed is reported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dualtoken.data.curated import from_model_output, to_model_input
from dualtoken.data.texts import normalise
from dualtoken.data.tokens import TokenSplit
from dualtoken.evaluation.captioning import caption_scores
from dualtoken.evaluation.distance import frechet_distance
from dualtoken.evaluation.features import FeatureExtractor
from dualtoken.metrics.zeroshot import TASKS, embed_in_batches, label_of, zero_shot
from dualtoken.models.mllm import DualTokenMLLM
from dualtoken.models.mllm_generation import answer, generate_codes
from dualtoken.models.sampling import SamplingConfig
from dualtoken.models.teacher import image_embedder, text_embedder

EXAMPLES = 8


def spread(items: list[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced over the list (all of them when n >= len): every kind of sample, no RNG."""
    if n <= 0:
        return []
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def score_answers(predictions: Sequence[str], qas: Sequence[dict[str, str]], majority: dict[str, str]
                  ) -> dict[str, Any]:
    """Exact match after normalisation, overall and per type, each beside the majority baseline."""
    correct = [normalise(p) == normalise(q["answer"]) for p, q in zip(predictions, qas, strict=True)]
    baseline = [majority.get(q["type"]) == normalise(q["answer"]) for q in qas]
    per_type: dict[str, dict[str, Any]] = {}
    for ok, base, q in zip(correct, baseline, qas, strict=True):
        t = per_type.setdefault(q["type"], {"right": 0, "baseline": 0, "questions": 0})
        t["right"], t["baseline"], t["questions"] = t["right"] + ok, t["baseline"] + base, t["questions"] + 1
    return {"accuracy": sum(correct) / len(qas), "majority_baseline": sum(baseline) / len(qas), "questions": len(qas),
            "per_type": {k: {"accuracy": v["right"] / v["questions"], "questions": v["questions"],
                             "majority_baseline": v["baseline"] / v["questions"]} for k, v in sorted(per_type.items())},
            "correct": correct}


@torch.no_grad()
def vqa_accuracy(model: DualTokenMLLM, tokenizer: Any, split: TokenSplit, majority: dict[str, str],
                 questions: int, batch_size: int) -> dict[str, Any]:
    """Greedy answers to questions spread over the split; ``majority``: question type -> the training split's
    most common answer (the baseline that reads no image). Examples right and wrong (with their row) kept."""
    items = spread([(i, q) for i, m in enumerate(split.meta) for q in m.get("qa", [])], questions)
    if not items:
        return {}
    predictions: list[str] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        rows = torch.tensor([i for i, _ in chunk])
        predictions += answer(model, tokenizer, split.semantic[rows], split.pixel[rows],
                              [q["question"] for _, q in chunk], max_new_tokens=8)
    result = score_answers(predictions, [q for _, q in items], majority)
    correct = result.pop("correct")
    examples = [{"row": i, "type": q["type"], "question": q["question"], "answer": q["answer"], "predicted": p}
                for p, (i, q) in zip(predictions, items, strict=True)]
    result["examples"] = {"right": spread([e for e, ok in zip(examples, correct, strict=True) if ok], EXAMPLES),
                          "wrong": spread([e for e, ok in zip(examples, correct, strict=True) if not ok], EXAMPLES)}
    return result


@torch.no_grad()
def caption_quality(model: DualTokenMLLM, tokenizer: Any, split: TokenSplit, images: int, batch_size: int,
                    max_new_tokens: int = 32) -> dict[str, Any]:
    """Greedy captions (the caption layout: the image, then no prompt) scored against all references."""
    rows = spread([i for i, m in enumerate(split.meta) if m.get("captions")], images)
    if not rows:
        return {}
    captions: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = torch.tensor(rows[start : start + batch_size])
        captions += answer(model, tokenizer, split.semantic[chunk], split.pixel[chunk], [""] * len(chunk),
                           max_new_tokens=max_new_tokens)
    references = [split.meta[i]["captions"] for i in rows]
    return {**caption_scores(references, captions),
            "examples": [{"row": i, "predicted": c, "references": r}
                         for i, c, r in spread(list(zip(rows, captions, references, strict=True)), EXAMPLES)]}


def generation_rows(split: TokenSplit, images: int) -> list[int]:
    """Scenes whose prompted attributes the teacher can judge (any with a shape, colour or count label)."""
    return spread([i for i, m in enumerate(split.meta) if m.get("captions")
                   and any(label_of(t.name, m) for t in TASKS)], images)


@torch.no_grad()
def generation_quality(model: DualTokenMLLM, tokenizer: Any, visual_tokenizer: Any, teacher: Any,
                       teacher_tokenizer: Any, split: TokenSplit, rows: list[int], batch_size: int,
                       sampling: SamplingConfig, seed: int, extractor: FeatureExtractor | None = None,
                       real_images: Tensor | None = None) -> tuple[dict[str, Any], Tensor]:
    """One image per row's first caption; with an extractor, the Fréchet distance to ``real_images`` (uint8, the
    curated images of those rows). Returns the metrics and the generated images (uint8, N x 3 x H x W)."""
    if not rows:
        return {}, torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    prompts = [split.meta[i]["captions"][0] for i in rows]
    generated = []
    for start in range(0, len(rows), batch_size):
        codes = generate_codes(model, tokenizer, prompts[start : start + batch_size], sampling, generator=generator)
        generated.append(from_model_output(visual_tokenizer.decode(codes.pixel.to(device)).cpu()))
    pictures = torch.cat(generated)
    reconstructed = from_model_output(visual_tokenizer.decode(split.pixel[rows].to(device)).cpu())
    metas = [split.meta[i] for i in rows]
    embed_texts = text_embedder(teacher, teacher_tokenizer, teacher.config.text_config.max_position_embeddings, device)
    embed = image_embedder(teacher)

    def judged(batch: Tensor) -> dict[str, dict[str, float]]:
        return zero_shot(embed_in_batches(lambda x: embed(to_model_input(x).to(device)), batch, batch_size), metas,
                         embed_texts)

    on_generated, on_real = judged(pictures), judged(reconstructed)
    classes = {t.name: len(t.classes) for t in TASKS}
    result: dict[str, Any] = {
        task: {"accuracy": r["accuracy"], "chance": 1 / classes[task], "images": r["images"],
               "teacher_on_tokenized_real": on_real[task]["accuracy"]} for task, r in on_generated.items()}
    if extractor is not None and real_images is not None and len(rows) >= 2:
        result[extractor.name] = frechet_distance(extractor.features(pictures, batch_size),
                                                  extractor.features(real_images, batch_size))
        result[f"{extractor.name}_tokenized_real"] = frechet_distance(extractor.features(reconstructed, batch_size),
                                                                      extractor.features(real_images, batch_size))
    # one generator across batches: the images depend on the seed and on the batch size, both recorded
    result.update({"images": len(rows), "seed": seed, "batch_size": batch_size, "sampling": sampling.model_dump(),
                   "prompts": prompts})
    return result, pictures
