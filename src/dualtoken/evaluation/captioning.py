"""Caption metrics: BLEU-4 and CIDEr-D from pycocoevalcap (the COCO caption evaluation code).

COCO runs Stanford's PTB tokenizer (Java) first; it lower-cases and drops punctuation tokens. ``coco_tokens``
does the same in Python (no JVM): identical for plain-word captions like the demo's; PTB keeps hyphenated
words whole and splits clitics ('s, n't), which this does not.
pycocoevalcap's ``Cider`` is CIDEr-D (clipped n-gram counts, Gaussian length penalty, x10), with document
frequencies taken from the references of the evaluated set, as in the COCO server.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PUNCTUATION = re.compile(r"[\"'`.,:;!?()\[\]{}-]+")


def coco_tokens(text: str) -> str:
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def caption_scores(references: Sequence[Sequence[str]], candidates: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-4 and CIDEr-D of one candidate per image against that image's reference captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if len(references) != len(candidates) or not candidates:
        raise ValueError(f"need one candidate per image and at least one image, got {len(candidates)} candidates "
                         f"for {len(references)} reference sets")
    if any(not refs for refs in references):
        raise ValueError("every image needs at least one reference caption")
    gts = {i: [coco_tokens(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [coco_tokens(c) or "<empty>"] for i, c in enumerate(candidates)}  # scorers reject empty strings
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider_d": float(cider), "images": len(candidates)}
