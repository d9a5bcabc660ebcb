"""The texts of the corpus (captions, question/answer pairs) and what a token corpus records about them.

The tokenize stage counts, per split, captions, questions and normalised answers per question type and
writes them into the token corpus' ``shards.json``: the MLLM checks its task mixture against those counts
and the evaluation takes the majority-answer baseline from them, so neither reads the training split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

TOP_ANSWERS = 20  # per question type, in shards.json


def normalise(text: str) -> str:
    """Lower case, single spaces, no trailing punctuation: how answers are compared."""
    return " ".join(text.lower().strip().rstrip(".?!").split())


def texts_of(meta: dict[str, Any]) -> Iterator[str]:
    """Every caption, question and answer of a sample, in order (what the demo BPE is trained on)."""
    yield from meta.get("captions", [])
    for qa in meta.get("qa", []):
        yield qa["question"]
        yield qa["answer"]


def corpus_texts(metas: Iterable[dict[str, Any]]) -> Iterator[str]:
    for meta in metas:
        yield from texts_of(meta)


@dataclass
class TextStats:
    samples: int = 0
    captions: int = 0
    questions: int = 0
    samples_with_qa: int = 0
    answers: dict[str, Counter] = field(default_factory=dict)  # question type -> normalised answer counts

    def add(self, meta: dict[str, Any]) -> None:
        qa = meta.get("qa", [])
        self.samples += 1
        self.captions += len(meta.get("captions", []))
        self.questions += len(qa)
        self.samples_with_qa += bool(qa)
        for q in qa:
            self.answers.setdefault(q.get("type", "any"), Counter())[normalise(q["answer"])] += 1

    def merge(self, other: TextStats) -> TextStats:
        merged = TextStats(self.samples + other.samples, self.captions + other.captions,
                           self.questions + other.questions, self.samples_with_qa + other.samples_with_qa,
                           {t: Counter(c) for t, c in self.answers.items()})
        for kind, counts in other.answers.items():
            merged.answers.setdefault(kind, Counter()).update(counts)
        return merged

    def majority(self) -> dict[str, str]:
        """Question type -> its most common normalised answer (ties: the answer first in sort order)."""
        return {t: min(c.items(), key=lambda item: (-item[1], item[0]))[0] for t, c in self.answers.items() if c}

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        """JSON-ready; ``top`` keeps the most common answers per type (all when None)."""
        answers = {t: dict(sorted(c.items(), key=lambda item: (-item[1], item[0]))[:top])
                   for t, c in sorted(self.answers.items())}
        return {"samples": self.samples, "captions": self.captions, "questions": self.questions,
                "samples_with_qa": self.samples_with_qa, "answers": answers}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TextStats:
        return cls(int(raw["samples"]), int(raw["captions"]), int(raw["questions"]), int(raw["samples_with_qa"]),
                   {t: Counter(c) for t, c in raw.get("answers", {}).items()})
