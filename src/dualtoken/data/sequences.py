"""Training sequences for the MLLM, cut from a token split: captioning, VQA and text-to-image.

    caption: <s> <image> [codes x N] </image> CAPTION </s>                 loss on CAPTION </s>
    vqa:     <s> <image> [codes x N] </image> QUESTION ANSWER </s>         loss on ANSWER </s>
    t2i:     <s> CAPTION <image_gen_start> [codes x N] <image_gen_end> </s>   loss on the N positions' codes

Texts are tokenised once up front. A global batch is a pure function of (seed, phase, step): the task
counts follow the mixture weights exactly (largest remainder), items are drawn with a seeded generator, and
a resumed run sees the same batches. The batch is sorted by length and cut into contiguous micro batches
(length bucketing: little padding), one per (micro step, rank).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dualtoken.data.tokens import TokenSplit
from dualtoken.models.mllm import GEN_END, GEN_START, IMAGE_END, IMAGE_START, IMAGE_TOKEN

TASKS = ("caption", "vqa", "t2i")
IGNORE = -100


@dataclass(frozen=True)
class Vocab:
    """The token ids the layouts use, read from the text tokenizer."""

    bos: int
    eos: int
    pad: int
    image_start: int
    image_end: int
    gen_start: int
    gen_end: int
    image: int

    @classmethod
    def of(cls, tokenizer: Any) -> Vocab:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_START, IMAGE_END, GEN_START, GEN_END, IMAGE_TOKEN)}
        missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"the text tokenizer lacks the special tokens {missing}")
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(bos, tokenizer.eos_token_id, pad, ids[IMAGE_START], ids[IMAGE_END], ids[GEN_START],
                   ids[GEN_END], ids[IMAGE_TOKEN])


@dataclass(frozen=True)
class Sequence:
    ids: list[int]
    labels: list[int]  # next-token target at each position's *own* index (IGNORE where none)
    generates: bool  # its image is a generation target (t2i) rather than an input
    image: int  # row of the token split


@dataclass
class Batch:
    input_ids: Tensor  # (B, L)
    attention_mask: Tensor  # (B, L)
    labels: Tensor  # (B, L)
    visual_targets: Tensor  # (B, L) bool
    semantic: Tensor  # (placeholders, depth), reading order
    pixel: Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in
                       (self.input_ids, self.attention_mask, self.labels, self.visual_targets, self.semantic,
                        self.pixel)))

    def model_inputs(self) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels,
                "semantic": self.semantic, "pixel": self.pixel, "visual_targets": self.visual_targets}

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def image_prefix(vocab: Vocab, positions: int) -> list[int]:
    """<s> <image> [placeholder x positions] </image>: what precedes a question or a caption."""
    return [vocab.bos, vocab.image_start, *[vocab.image] * positions, vocab.image_end]


def generation_prefix(vocab: Vocab, prompt: list[int]) -> list[int]:
    """<s> PROMPT <image_gen_start>: what precedes a generated image's first position."""
    return [vocab.bos, *prompt, vocab.gen_start]


class SequenceCorpus:
    """A token split with its captions, questions and answers tokenised, ready to build sequences from."""

    def __init__(self, split: TokenSplit, tokenizer: Any, max_text_tokens: int) -> None:
        self.split, self.vocab = split, Vocab.of(tokenizer)
        self.positions = int(split.pixel.shape[1] * split.pixel.shape[2])
        captions = [(i, c) for i, m in enumerate(split.meta) for c in m.get("captions", [])]
        qa = [(i, q["question"], q["answer"]) for i, m in enumerate(split.meta) for q in m.get("qa", [])]
        if not captions:
            raise ValueError("the token split has no captions: nothing to train on")

        def encode(texts: list[str]) -> list[list[int]]:
            if not texts:
                return []
            return [ids[:max_text_tokens] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

        self.captions = list(zip([i for i, _ in captions], encode([c for _, c in captions]), strict=True))
        self.qa = list(zip([i for i, _, _ in qa], encode([q for _, q, _ in qa]), encode([a for _, _, a in qa]),
                           strict=True))

    def items(self, task: str) -> int:
        return len(self.qa) if task == "vqa" else len(self.captions)

    def build(self, task: str, item: int, drop_prompt: bool = False) -> Sequence:
        v = self.vocab
        if task == "t2i":
            image, caption = self.captions[item]
            prefix = generation_prefix(v, [] if drop_prompt else caption)
            ids = [*prefix, *[v.image] * self.positions, v.gen_end, v.eos]
            return Sequence(ids, [IGNORE] * len(ids), True, image)
        if task == "caption":
            image, caption = self.captions[item]
            prompt, target = [], caption
        elif task == "vqa":
            image, prompt, target = self.qa[item]
        else:
            raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
        prefix = [*image_prefix(v, self.positions), *prompt]
        ids = [*prefix, *target, v.eos]
        return Sequence(ids, [IGNORE] * len(prefix) + [*target, v.eos], False, image)

    def collate(self, sequences: list[Sequence]) -> Batch:
        """Right-padded tensors; codes of every sequence's image in reading order."""
        length = max(len(s.ids) for s in sequences)
        n = len(sequences)
        input_ids = torch.full((n, length), self.vocab.pad, dtype=torch.long)
        labels = torch.full((n, length), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.long)
        for row, s in enumerate(sequences):
            input_ids[row, : len(s.ids)] = torch.tensor(s.ids)
            labels[row, : len(s.labels)] = torch.tensor(s.labels)
            mask[row, : len(s.ids)] = 1
        placeholders = input_ids == self.vocab.image
        generates = torch.tensor([s.generates for s in sequences])
        images = torch.tensor([s.image for s in sequences])
        return Batch(input_ids, mask, labels, placeholders & generates[:, None],
                     self.split.semantic[images].reshape(-1, self.split.semantic.shape[-1]),
                     self.split.pixel[images].reshape(-1, self.split.pixel.shape[-1]))


def task_counts(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Exact shares of ``total`` by weight (largest remainder; ties to the earlier task)."""
    tasks = [t for t in TASKS if weights.get(t, 0) > 0]
    norm = sum(weights[t] for t in tasks)
    raw = {t: total * weights[t] / norm for t in tasks}
    counts = {t: int(raw[t]) for t in tasks}
    for t in sorted(tasks, key=lambda t: (-(raw[t] - counts[t]), TASKS.index(t)))[: total - sum(counts.values())]:
        counts[t] += 1
    return counts


def step_generator(seed: int, phase: str, step: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{phase}/{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def global_batch(corpus: SequenceCorpus, weights: Mapping[str, float], size: int, seed: int, phase: str, step: int,
                 prompt_dropout: float) -> list[Sequence]:
    """The step's global batch, sorted by length (then task and item, so the order is total)."""
    gen = step_generator(seed, phase, step)
    out = []
    for task, count in task_counts(weights, size).items():
        if corpus.items(task) == 0:
            raise ValueError(f"task {task!r} has a positive weight but the corpus has no {task} items")
        items = torch.randint(corpus.items(task), (count,), generator=gen).tolist()
        drops = (torch.rand(count, generator=gen) < prompt_dropout).tolist()
        out.extend((len(seq.ids), TASKS.index(task), item, seq) for item, drop in zip(items, drops, strict=True)
                   for seq in [corpus.build(task, item, drop)])
    return [seq for *_, seq in sorted(out, key=lambda row: row[:3])]


def micro_slice(batch: list[Sequence], micro: int, rank: int, micro_steps: int, world: int) -> list[Sequence]:
    """Contiguous chunk ``micro * world + rank`` of ``micro_steps * world`` equal chunks."""
    per = len(batch) // (micro_steps * world)
    start = (micro * world + rank) * per
    return batch[start : start + per]
