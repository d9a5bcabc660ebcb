"""Per-sample curation: decode and check the image, normalise the captions, or say why not.

``curate_sample`` never raises for bad data: it returns either a :class:`Curated` sample or a
:class:`Rejected` one whose ``reason`` is one of :data:`REASONS` and whose ``detail`` says what was seen.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dualtoken.curation.config import CurateConfig
from dualtoken.curation.phash import phash
from dualtoken.data.sources import IMAGE_EXTENSIONS, RawSample

REASONS = {
    "container_unreadable": "the input file is not a readable archive or cannot be opened",
    "container_truncated": "the archive ends in the middle of a member",
    "non_regular_member": "a symlink, hard link, device or fifo inside an archive",
    "unsafe_member_path": "an archive member named with an absolute path or '..'",
    "duplicate_member": "the same extension twice within one sample",
    "file_too_large": "a member or image file over the size limit",
    "bad_manifest_row": "a manifest row that is not valid JSON/CSV or lacks a path",
    "missing_image": "no image in the sample, or the image file does not exist",
    "decode_error": "the image bytes do not decode (corrupt or truncated)",
    "decompression_bomb": "the header claims more pixels than max_pixels",
    "too_small": "the shorter side is below min_side",
    "bad_aspect_ratio": "the longer side exceeds max_aspect_ratio x the shorter",
    "bad_metadata": "the json part is not a JSON object",
    "caption_not_utf8": "caption bytes are not valid UTF-8",
    "caption_missing": "no caption at all",
    "caption_empty": "the caption is empty after normalisation",
    "caption_too_short": "the caption is shorter than caption.min_chars",
    "caption_too_long": "the caption is longer than caption.max_chars",
    "duplicate_key": "a sample key already taken by an earlier sample of the same source",
    "duplicate_exact": "decoded pixels identical to an earlier sample",
    "duplicate_near": "perceptual hash within near_dup_hamming bits of an earlier sample",
}

_WHITESPACE = re.compile(r"\s+")
# The pixel limit is enforced from the header against cfg.max_pixels (below), not by PIL's global default.
Image.MAX_IMAGE_PIXELS = None
_CONTROL = {"Cc", "Cf", "Cs", "Co", "Cn"}


@dataclass
class Curated:
    source: str
    source_key: str
    origin: str
    image: np.ndarray  # uint8 (H, W, 3) at the target resolution
    png: bytes  # the same pixels, PNG-encoded
    pixel_sha256: str
    phash: str  # hex
    captions: list[str]
    meta: dict
    original_size: tuple[int, int]
    originals: dict[str, bytes] = field(repr=False, default_factory=dict)


@dataclass
class Rejected:
    source: str
    source_key: str
    origin: str
    reason: str
    detail: str
    originals: dict[str, bytes] = field(repr=False, default_factory=dict)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(detail)
        self.reason = reason


# ------------------------------------------------------------------------------------------- captions
def normalise_caption(raw: bytes | str, min_chars: int, max_chars: int) -> str:
    """NFC, control characters removed, whitespace collapsed; raises _Reject with the reason."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _Reject("caption_not_utf8", f"byte {err.start}: {raw[max(0, err.start - 8):err.end + 8]!r}") from None
    else:
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise _Reject("caption_not_utf8", f"undecodable bytes in {raw!r}") from None
        text = raw
    text = unicodedata.normalize("NFC", text)
    if not text.isprintable():  # rare: the per-character scan only runs when something needs replacing
        text = "".join(ch if unicodedata.category(ch) not in _CONTROL else " " for ch in text)
    text = _WHITESPACE.sub(" ", text).strip()
    if not text:
        raise _Reject("caption_empty", "caption is empty after normalisation")
    if len(text) < min_chars:
        raise _Reject("caption_too_short", f"{len(text)} chars < {min_chars}: {text!r}")
    if len(text) > max_chars:
        raise _Reject("caption_too_long", f"{len(text)} chars > {max_chars}: {text[:60]!r}...")
    return text


def _parse_meta(parts: dict[str, bytes]) -> dict:
    if "json" not in parts:
        return {}
    try:
        meta = json.loads(parts["json"].decode("utf-8", "surrogateescape"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _Reject("bad_metadata", f"json part does not parse: {err}") from None
    if not isinstance(meta, dict):
        raise _Reject("bad_metadata", f"json part is a {type(meta).__name__}, not an object")
    return meta


def _captions(parts: dict[str, bytes], meta: dict, cfg: CurateConfig) -> tuple[list[str], list[dict]]:
    """Valid captions (txt first, then json 'captions'/'caption'); invalid ones are kept with a reason."""
    candidates: list[bytes | str] = []
    for ext in ("txt", "caption"):
        if ext in parts:
            candidates.append(parts[ext])
    listed = meta.get("captions", meta.get("caption", []))
    candidates.extend([listed] if isinstance(listed, str) else [c for c in listed if isinstance(c, str)])
    if not candidates:
        raise _Reject("caption_missing", "no txt part and no 'captions' in the json part")
    good: list[str] = []
    dropped: list[dict] = []
    first_error: _Reject | None = None
    for cand in candidates:
        try:
            text = normalise_caption(cand, cfg.caption.min_chars, cfg.caption.max_chars)
        except _Reject as err:
            first_error = first_error or err
            shown = cand.decode("utf-8", "replace") if isinstance(cand, bytes) else cand
            dropped.append({"caption": shown[:200], "reason": err.reason})
            continue
        if text not in good:
            good.append(text)
    if not good:
        assert first_error is not None
        raise first_error
    return good, dropped


# ------------------------------------------------------------------------------------------- images
def _image_part(parts: dict[str, bytes]) -> bytes:
    for ext in (*IMAGE_EXTENSIONS, "img"):
        if ext in parts:
            return parts[ext]
    raise _Reject("missing_image", f"no image part among {sorted(parts) or 'no parts'}")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Composite transparency on white: dropping alpha would turn transparent pixels black."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # lossless; level 1 costs a third of the default
    return buf.getvalue()


def load_image(data: bytes, cfg: CurateConfig) -> tuple[np.ndarray, tuple[int, int], bytes]:
    """Decode, check, resize + centre-crop to ``cfg.resolution``; returns pixels, original size, PNG bytes.

    Header checks come before decoding. An input that already is an RGB PNG at the target size keeps its
    own bytes (identical pixels; no re-encoding), which is most of a pre-sized corpus's cost.
    """
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
    except Image.DecompressionBombError as err:
        raise _Reject("decompression_bomb", str(err)) from None
    except UnidentifiedImageError as err:
        raise _Reject("decode_error", f"cannot identify image: {err}") from None
    except Exception as err:  # hostile bytes make PIL raise all sorts (struct.error, IndexError, ...)
        raise _Reject("decode_error", f"image header fails to parse: {type(err).__name__}: {err}") from None
    if width * height > cfg.max_pixels:
        raise _Reject("decompression_bomb", f"{width}x{height} = {width * height} pixels > {cfg.max_pixels}")
    if min(width, height) < cfg.min_side:
        raise _Reject("too_small", f"{width}x{height}, shorter side < {cfg.min_side}")
    if max(width, height) > cfg.max_aspect_ratio * min(width, height):
        raise _Reject("bad_aspect_ratio", f"{width}x{height} beyond {cfg.max_aspect_ratio}:1")
    try:
        if img.format == "JPEG":
            img.draft("RGB", (cfg.resolution, cfg.resolution))  # DCT-domain downscale: decodes far less
        img.load()
        rgb = _to_rgb(img)
    except Exception as err:  # see above: any decoder failure is this sample's problem, not the stage's
        raise _Reject("decode_error", f"{img.format or 'image'} {width}x{height} fails to decode: "
                                      f"{type(err).__name__}: {err}") from None
    target = (cfg.resolution, cfg.resolution)
    if rgb.size == target:
        return np.asarray(rgb, dtype=np.uint8), (width, height), data if _plain_png(img) else encode_png(rgb)
    fitted = ImageOps.fit(rgb, target, method=Image.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8), (width, height), encode_png(fitted)


def _plain_png(img: Image.Image) -> bool:
    return img.format == "PNG" and img.mode == "RGB" and "transparency" not in img.info


def pixel_digest(image: np.ndarray) -> str:
    """SHA-256 over shape and pixels: identical decoded content, whatever the encoding."""
    h = hashlib.sha256(f"{image.shape}".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def curate_sample(raw: RawSample, cfg: CurateConfig) -> Curated | Rejected:
    if raw.reject is not None:
        return Rejected(raw.source, raw.key, raw.origin, raw.reject[0], raw.reject[1], raw.parts)
    try:
        data = _image_part(raw.parts)
        if len(data) > cfg.max_file_mb * 2**20:
            raise _Reject("file_too_large", f"{len(data)} bytes > {cfg.max_file_mb} MiB")
        meta = _parse_meta(raw.parts)
        captions, dropped = _captions(raw.parts, meta, cfg)
        image, size, png = load_image(data, cfg)
    except _Reject as err:
        return Rejected(raw.source, raw.key, raw.origin, err.reason, str(err), raw.parts)
    meta = {k: v for k, v in meta.items() if k not in ("captions", "caption")}
    if dropped:
        meta["dropped_captions"] = dropped
    return Curated(raw.source, raw.key, raw.origin, image, png, pixel_digest(image), phash(image, cfg.phash_size),
                   captions, meta, size, raw.parts)
