"""Prompt templates for zero-shot classification, ``{c}`` standing for the class name.

``openai-imagenet`` is the 80-template ensemble that CLIP's authors published for ImageNet and that OpenCLIP's
zero-shot evaluation (the paper's protocol) averages over; ``photo`` is the single prompt "a photo of a {c}.".
A task may instead name a text file with one template per line.
"""

from __future__ import annotations

from pathlib import Path

from dualtoken.schema import repeated

OPENAI_IMAGENET = (
    "a bad photo of a {c}.", "a photo of many {c}.", "a sculpture of a {c}.", "a photo of the hard to see {c}.",
    "a low resolution photo of the {c}.", "a rendering of a {c}.", "graffiti of a {c}.", "a bad photo of the {c}.",
    "a cropped photo of the {c}.", "a tattoo of a {c}.", "the embroidered {c}.", "a photo of a hard to see {c}.",
    "a bright photo of a {c}.", "a photo of a clean {c}.", "a photo of a dirty {c}.", "a dark photo of the {c}.",
    "a drawing of a {c}.", "a photo of my {c}.", "the plastic {c}.", "a photo of the cool {c}.",
    "a close-up photo of a {c}.", "a black and white photo of the {c}.", "a painting of the {c}.",
    "a painting of a {c}.", "a pixelated photo of the {c}.", "a sculpture of the {c}.", "a bright photo of the {c}.",
    "a cropped photo of a {c}.", "a plastic {c}.", "a photo of the dirty {c}.", "a jpeg corrupted photo of a {c}.",
    "a blurry photo of the {c}.", "a photo of the {c}.", "a good photo of the {c}.", "a rendering of the {c}.",
    "a {c} in a video game.", "a photo of one {c}.", "a doodle of a {c}.", "a close-up photo of the {c}.",
    "a photo of a {c}.", "the origami {c}.", "the {c} in a video game.", "a sketch of a {c}.", "a doodle of the {c}.",
    "a origami {c}.", "a low resolution photo of a {c}.", "the toy {c}.", "a rendition of the {c}.",
    "a photo of the clean {c}.", "a photo of a large {c}.", "a rendition of a {c}.", "a photo of a nice {c}.",
    "a photo of a weird {c}.", "a blurry photo of a {c}.", "a cartoon {c}.", "art of a {c}.", "a sketch of the {c}.",
    "a embroidered {c}.", "a pixelated photo of a {c}.", "itap of the {c}.", "a jpeg corrupted photo of the {c}.",
    "a good photo of a {c}.", "a plushie {c}.", "a photo of the nice {c}.", "a photo of the small {c}.",
    "a photo of the weird {c}.", "the cartoon {c}.", "art of the {c}.", "a drawing of the {c}.",
    "a photo of the large {c}.", "a black and white photo of a {c}.", "the plushie {c}.", "a dark photo of a {c}.",
    "itap of a {c}.", "graffiti of the {c}.", "a toy {c}.", "itap of my {c}.", "a photo of a cool {c}.",
    "a photo of a small {c}.", "a tattoo of the {c}.",
)

TEMPLATE_SETS = {"openai-imagenet": OPENAI_IMAGENET, "photo": ("a photo of a {c}.",)}


def read_templates(name_or_path: str) -> tuple[str, ...]:
    """A named set, or a file with one template per line (blank lines skipped), each holding ``{c}``."""
    if name_or_path in TEMPLATE_SETS:
        return TEMPLATE_SETS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"templates {name_or_path!r}: neither a named set ({', '.join(TEMPLATE_SETS)}) "
                                "nor a file")
    templates = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    missing = [t for t in templates if "{c}" not in t]
    if not templates or missing:
        raise ValueError(f"templates file {path}: every line needs '{{c}}' for the class name"
                         + (f", not {missing[:3]}" if missing else " (the file is empty)"))
    return templates


def read_classes(path: str | Path) -> tuple[str, ...]:
    """Class names, one per line: line i (0-based, blank lines kept out) is class i."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file {path} not found")
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    duplicated = repeated(names)
    if len(names) < 2 or duplicated:
        raise ValueError(f"class-names file {path}: needs two or more distinct names"
                         + (f"; repeated: {duplicated[:5]}" if duplicated else ""))
    return names
