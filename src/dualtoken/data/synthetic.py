"""Deterministic synthetic scenes: coloured shapes with known attributes, captions and QA pairs.

Image ``i`` of a corpus depends only on ``(seed, i)``, never on how the corpus is sharded, so the same
seed gives byte-identical images whatever the shard size or worker count. Shapes are drawn at 4x and
box-downsampled, which anti-aliases edges without any per-pixel Python loop.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 225),
    "yellow": (245, 215, 20),
    "purple": (140, 50, 190),
    "orange": (250, 130, 10),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
SIZES = {"small": 0.26, "medium": 0.36, "large": 0.47}  # half-extent as a fraction of a grid cell
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SUPERSAMPLE = 4


def position_name(row: int, col: int) -> str:
    """Human name of a 3x3 grid cell: 'top left', 'top', ..., 'center', ..., 'bottom right'."""
    if row == 1 and col == 1:
        return "center"
    if row == 1:
        return COLS[col]
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLS[col]}"


POSITIONS = tuple(position_name(r, c) for r in range(3) for c in range(3))


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    row: int
    col: int

    @property
    def position(self) -> str:
        return position_name(self.row, self.col)

    def as_dict(self) -> dict[str, object]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "position": self.position,
                "row": self.row, "col": self.col}


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str  # "plain" or "textured"
    background_level: int  # grey level of the background


@dataclass(frozen=True)
class Example:
    """One generated sample: encoded image, captions, QA pairs and the attributes behind them."""

    key: str
    png: bytes
    captions: list[str]
    qa: list[dict[str, str]]
    attributes: dict[str, object]


# ------------------------------------------------------------------------------------------- drawing
def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if shape == "cross":
        t = r * 0.33
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, size: int, textured: bool, level: int) -> np.ndarray:
    """Grey background, mid-range so that white and black objects both stand out."""
    base = np.full((size, size), float(level), dtype=np.float32)
    if textured:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        kind = rng.integers(3)
        if kind == 0:  # diagonal stripes
            period = rng.uniform(4, 10)
            base += 18.0 * np.sign(np.sin(2 * np.pi * (xx + yy) / period))
        elif kind == 1:  # checkerboard
            cell = int(rng.integers(4, 9))
            base += 16.0 * (((xx // cell + yy // cell) % 2) * 2 - 1)
        else:  # smooth noise
            coarse = rng.normal(0, 22, size=(size // 8 + 1, size // 8 + 1)).astype(np.float32)
            base += np.kron(coarse, np.ones((8, 8), np.float32))[:size, :size]
    tint = rng.integers(-6, 7, size=3).astype(np.float32)
    rgb = np.clip(base[..., None] + tint, 0, 255)
    return rgb.astype(np.uint8)


def render(scene: Scene, rng: np.random.Generator, size: int, object_scale: float = 1.0) -> Image.Image:
    canvas = Image.fromarray(_background(rng, size, scene.background == "textured", scene.background_level))
    big = canvas.resize((size * SUPERSAMPLE, size * SUPERSAMPLE), Image.NEAREST)
    mask_layer = Image.new("L", big.size, 0)
    colour_layer = Image.new("RGB", big.size, 0)
    draw_mask, draw_col = ImageDraw.Draw(mask_layer), ImageDraw.Draw(colour_layer)
    cell = big.width / 3
    for obj in scene.objects:
        jx, jy = rng.uniform(-0.08, 0.08, size=2) * cell
        r = SIZES[obj.size] * cell * object_scale
        cx, cy = (obj.col + 0.5) * cell + jx, (obj.row + 0.5) * cell + jy
        if object_scale > 1:  # kept inside the canvas: a large object "at the left" is the one against the left edge
            cx, cy = min(max(cx, r), big.width - r), min(max(cy, r), big.height - r)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            box = (cx - r, cy - r, cx + r, cy + r)
            draw_mask.ellipse(box, fill=255)
            draw_col.ellipse(box, fill=fill)
        else:
            pts = _polygon(obj.shape, cx, cy, r)
            draw_mask.polygon(pts, fill=255)
            draw_col.polygon(pts, fill=fill)
    big.paste(colour_layer, (0, 0), mask_layer)
    return big.resize((size, size), Image.BOX)


# ------------------------------------------------------------------------------------------- language
def _describe(obj: SceneObject, with_size: bool = True) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _where(obj: SceneObject) -> str:
    return "in the center" if obj.position == "center" else f"at the {obj.position}"


def captions_for(scene: Scene) -> list[str]:
    objs = scene.objects
    n = len(objs)
    bg = "textured" if scene.background == "textured" else "plain grey"
    full = [f"{_article(_describe(o))} {_where(o)}" for o in objs]
    short = [_article(_describe(o, with_size=False)) for o in objs]
    if n == 1:
        o = objs[0]
        return [
            f"{full[0]} on a {bg} background",
            f"{_article(_describe(o, with_size=False))} {_where(o)}",
            f"a picture of {_article(_describe(o))}",
            f"there is one {o.colour} {o.shape} {_where(o)}",
        ]
    word = NUMBER_WORDS[n]
    return [
        f"{word} shapes: {_join(full)}",
        f"{_join(short)} on a {bg} background",
        f"a picture with {word} objects, {_join(short)}",
        f"there are {word} shapes in the image: {_join([_describe(o) for o in objs])}",
    ]


def qa_for(scene: Scene, rng: np.random.Generator) -> list[dict[str, str]]:
    """Questions whose answers follow from the attributes alone (so they can be checked)."""
    objs = scene.objects
    qa: list[dict[str, str]] = []
    colours = [o.colour for o in objs]
    shapes = [o.shape for o in objs]
    for o in objs:
        if colours.count(o.colour) == 1:
            qa.append({"type": "shape", "question": f"what shape is the {o.colour} object?", "answer": o.shape})
        if shapes.count(o.shape) == 1:
            qa.append({"type": "colour", "question": f"what colour is the {o.shape}?", "answer": o.colour})
        if sum(1 for p in objs if (p.colour, p.shape) == (o.colour, o.shape)) == 1:
            qa.append({"type": "position", "question": f"where is the {o.colour} {o.shape}?",
                       "answer": o.position})
    qa.append({"type": "count", "question": "how many objects are there?", "answer": NUMBER_WORDS[len(objs)]})
    present = objs[int(rng.integers(len(objs)))]
    qa.append({"type": "exists", "question": f"is there {_article(_describe(present, False))}?", "answer": "yes"})
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in {(o.colour, o.shape) for o in objs}]
    c, s = absent[int(rng.integers(len(absent)))]
    qa.append({"type": "exists", "question": f"is there {_article(f'{c} {s}')}?", "answer": "no"})
    return qa


# ------------------------------------------------------------------------------------------- sampling
def sample_scene(rng: np.random.Generator, textured_fraction: float, max_objects: int = 3) -> Scene:
    n = min(int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])), max_objects)
    cells = rng.choice(9, size=n, replace=False)
    objects = tuple(
        SceneObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
            size=list(SIZES)[int(rng.integers(len(SIZES)))],
            row=int(c) // 3,
            col=int(c) % 3,
        )
        for c in sorted(cells)
    )
    background = "textured" if rng.random() < textured_fraction else "plain"
    return Scene(objects=objects, background=background, background_level=int(rng.integers(95, 166)))


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def generate_example(seed: int, index: int, size: int = 64, textured_fraction: float = 0.5, max_objects: int = 3,
                     object_scale: float = 1.0) -> Example:
    """Example ``index`` of the corpus with ``seed``: a pure function of its arguments.

    ``max_objects`` caps the scene's object count (1: one object per image) and ``object_scale`` sizes the
    objects relative to a third of the image (2: a large object fills about 60% of the width).
    """
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, textured_fraction, max_objects)
    image = render(scene, rng, size, object_scale)
    attributes = {
        "kind": "shapes",
        "count": len(scene.objects),
        "objects": [o.as_dict() for o in scene.objects],
        "background": scene.background,
    }
    return Example(
        key=f"{index:08d}",
        png=encode_png(image),
        captions=captions_for(scene),
        qa=qa_for(scene, rng),
        attributes=attributes,
    )


def write_demo_corpus(out: Path, num: int, per_shard: int, size: int = 64, seed: int = 0) -> list[Path]:
    """The first ``num`` demo examples as WebDataset shards (png, caption txt, json metadata) in ``out``, e.g.
    to try the ``webdataset`` source; returns the shards written."""
    from dualtoken.data.tarstream import RollingTarWriter

    writer = RollingTarWriter(out, "demo", per_shard)
    ok = False
    try:
        for i in range(num):
            ex = generate_example(seed, i, size)
            meta = json.dumps({"qa": ex.qa, "attributes": ex.attributes, "captions": ex.captions}).encode()
            writer.add_sample(ex.key, {"png": ex.png, "txt": ex.captions[0].encode(), "json": meta})
        ok = True
    finally:
        writer.close(ok=ok)
    return [out / name for name in writer.shards]
