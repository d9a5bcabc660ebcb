"""Training sequences for the MLLM, built on the fly from streamed token samples: captioning, VQA, text-to-image.

    caption: <s> <image> [codes x N] </image> CAPTION </s>                 loss on CAPTION </s>
    vqa:     <s> <image> [codes x N] </image> QUESTION ANSWER </s>         loss on ANSWER </s>
             ... </image> Q1 A1 </s> Q2 A2 </s> ...                   with ``vqa_turns`` > 1: loss on each A </s>
    t2i:     <s> CAPTION <image_gen_start> [codes x N] <image_gen_end> </s>   loss on the N positions' codes

This module owns that format: the special tokens (``SPECIAL_TOKENS``, added to the LM's text tokenizer) and
the prefixes generation starts from; the model (``dualtoken.models.mllm``) and the sampler read them here.

Each task reads its own streams of the token corpus (``dualtoken.data.stream``: one per data-parallel
stream, a seed per phase and task), so every task sees every sample once per epoch of that task; VQA streams
pass over samples without questions. A worker decodes the codes and tokenises one caption and up to
``vqa_turns`` questions of each sample, chosen by the sample's draw (``TokenSampleDecoder``); the main process
builds the sequences. Several turns over one image (a conversation, as in LLaVA's instruction data) give
several answers' worth of signal for one pass over the image's positions.

A step's global batch holds exactly ``task_counts(weights, batch)`` sequences of each task, spread over the
streams by ``stream_task_counts``. Each rank sorts the sequences of its streams by length and cuts them into
its micro batches (length bucketing: little padding); the trainer normalises losses by the step's global
target counts, so how sequences are grouped into micro batches and ranks does not change the update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dualtoken.data.curated import sample_meta
from dualtoken.data.pieces import RawSample
from dualtoken.data.tokens import TokenLayout, read_codes

IMAGE_START, IMAGE_END = "<image>", "</image>"
GEN_START, GEN_END = "<image_gen_start>", "<image_gen_end>"
IMAGE_TOKEN = "<image_pad>"  # the placeholder at every visual position
SPECIAL_TOKENS = (IMAGE_START, IMAGE_END, GEN_START, GEN_END, IMAGE_TOKEN)  # added to the LM's text tokenizer
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


class TokenSampleDecoder:
    """Token samples -> columns: ``pixel``/``semantic`` codes (n, h, w, depth) int32, token ids of one caption
    (``caption``), ``qa`` (up to ``vqa_turns`` (question ids, answer ids) pairs: the draw's question first,
    then those after it in the sample's order, wrapping; empty without QA), ``has_qa``, ``drop`` (a uniform
    number: the t2i prompt is dropped below ``prompt_dropout``) and ``key``. The caption, the first question and
    ``drop`` come from three independent fields of the sample's draw."""

    def __init__(self, layout: TokenLayout, tokenizer: Any, max_text_tokens: int, vqa_turns: int = 1) -> None:
        if vqa_turns < 1:
            raise ValueError(f"vqa_turns must be >= 1, got {vqa_turns}")
        self.layout, self.tokenizer, self.max_text_tokens = layout, tokenizer, max_text_tokens
        self.vqa_turns = vqa_turns

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)  # a fast tokenizer: its Rust core, batched
        if backend is not None:
            ids = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        else:
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [row[: self.max_text_tokens] for row in ids]

    def _turns(self, sample: RawSample, qa: list[Any]) -> list[tuple[str, str]]:
        first = sample.choice(1, len(qa)) if qa else 0
        turns = [qa[(first + i) % len(qa)] for i in range(min(self.vqa_turns, len(qa)))]
        for chosen in turns:
            if not isinstance(chosen, dict) or not {"question", "answer"} <= chosen.keys():
                raise ValueError(f"{sample.where}: a qa entry lacks its question or answer: {chosen!r}")
        return [(t["question"], t["answer"]) for t in turns]

    def __call__(self, samples: list[RawSample]) -> dict[str, Any]:
        codes = {"pixel": [], "semantic": []}
        captions, turns, drop = [], [], []
        for s in samples:
            for stream, array in read_codes(s.parts, self.layout, s.where).items():
                codes[stream].append(torch.from_numpy(array.astype("int32")))
            meta = sample_meta(s.parts, s.where)
            options = meta.get("captions") or []
            if not options:
                raise ValueError(f"{s.where}: no captions in its json")
            captions.append(options[s.choice(0, len(options))])
            turns.append(self._turns(s, meta.get("qa") or []))
            drop.append(s.uniform(2))
        texts = iter(self._encode([t for pairs in turns for pair in pairs for t in pair]))
        qa = [[(next(texts), next(texts)) for _ in pairs] for pairs in turns]
        return {"pixel": torch.stack(codes["pixel"]), "semantic": torch.stack(codes["semantic"]),
                "caption": self._encode(captions), "qa": qa, "has_qa": [bool(pairs) for pairs in qa], "drop": drop,
                "key": [s.key for s in samples]}


@dataclass(frozen=True)
class Sequence:
    ids: list[int]
    labels: list[int]  # next-token target at each position's *own* index (IGNORE where none)
    generates: bool  # its image is a generation target (t2i) rather than an input
    semantic: Tensor  # (positions, depth) codes of its image, reading order
    pixel: Tensor
    task: str = "caption"
    key: str = ""


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

    @property
    def text_targets(self) -> int:
        """Label tokens the text loss counts (the next-token targets of positions 0..L-2)."""
        return int((self.labels[:, 1:] != IGNORE).sum())

    @property
    def visual_target_positions(self) -> int:
        return int(self.visual_targets.sum())


def image_prefix(vocab: Vocab, positions: int) -> list[int]:
    """<s> <image> [placeholder x positions] </image>: what precedes a question or a caption."""
    return [vocab.bos, vocab.image_start, *[vocab.image] * positions, vocab.image_end]


def generation_prefix(vocab: Vocab, prompt: list[int]) -> list[int]:
    """<s> PROMPT <image_gen_start>: what precedes a generated image's first position."""
    return [vocab.bos, *prompt, vocab.gen_start]


class SequenceBuilder:
    """Sequences of every task from decoded token samples (``TokenSampleDecoder`` columns), and batches of them."""

    def __init__(self, tokenizer: Any, positions: int) -> None:
        self.vocab, self.positions = Vocab.of(tokenizer), positions

    def build(self, task: str, samples: dict[str, Any], row: int, prompt_dropout: float = 0.0) -> Sequence:
        v = self.vocab
        depth_s, depth_p = samples["semantic"].shape[-1], samples["pixel"].shape[-1]
        semantic = samples["semantic"][row].reshape(-1, depth_s).long()
        pixel = samples["pixel"][row].reshape(-1, depth_p).long()
        key = samples["key"][row]
        if task == "t2i":
            prompt = [] if samples["drop"][row] < prompt_dropout else samples["caption"][row]
            ids = [*generation_prefix(v, prompt), *[v.image] * self.positions, v.gen_end, v.eos]
            return Sequence(ids, [IGNORE] * len(ids), True, semantic, pixel, task, key)
        if task == "caption":
            turns = [([], samples["caption"][row])]
        elif task == "vqa":
            turns = samples["qa"][row]
            if not turns:
                raise ValueError(f"sample {key!r} has no question for a vqa sequence")
        else:
            raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
        ids = image_prefix(v, self.positions)
        labels = [IGNORE] * len(ids)
        for prompt, target in turns:
            ids += [*prompt, *target, v.eos]
            labels += [IGNORE] * len(prompt) + [*target, v.eos]
        return Sequence(ids, labels, False, semantic, pixel, task, key)

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
        return Batch(input_ids, mask, labels, placeholders & generates[:, None],
                     torch.cat([s.semantic for s in sequences]), torch.cat([s.pixel for s in sequences]))


def task_counts(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Exact shares of ``total`` by weight (largest remainder; ties to the earlier task)."""
    tasks = [t for t in TASKS if weights.get(t, 0) > 0]
    norm = sum(weights[t] for t in tasks)
    raw = {t: total * weights[t] / norm for t in tasks}
    counts = {t: int(raw[t]) for t in tasks}
    for t in sorted(tasks, key=lambda t: (-(raw[t] - counts[t]), TASKS.index(t)))[: total - sum(counts.values())]:
        counts[t] += 1
    return counts


def stream_task_counts(weights: Mapping[str, float], streams: int, per_stream: int) -> list[dict[str, int]]:
    """How many sequences of each task stream ``k`` contributes per step: the global counts
    ``task_counts(weights, streams * per_stream)`` laid out evenly over the batch, cut into the streams."""
    counts = task_counts(weights, streams * per_stream)
    slots = sorted(((i + 0.5) / n, TASKS.index(t), t) for t, n in counts.items() for i in range(n))
    labels = [t for *_, t in slots]
    out = []
    for k in range(streams):
        mine = labels[k * per_stream : (k + 1) * per_stream]
        out.append({t: mine.count(t) for t in counts if mine.count(t)})
    return out


def bucket(sequences: list[Sequence], micro_batches: int) -> list[list[Sequence]]:
    """Sorted by length (then task and key, so the order is total), cut into equal contiguous micro batches."""
    ordered = sorted(enumerate(sequences), key=lambda item: (len(item[1].ids), TASKS.index(item[1].task),
                                                             item[1].key, item[0]))
    per = len(ordered) // micro_batches
    return [[s for _, s in ordered[m * per : (m + 1) * per]] for m in range(micro_batches)]
