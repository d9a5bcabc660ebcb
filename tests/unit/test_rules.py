import io

import numpy as np
import pytest
from PIL import Image

from badinputs import huge_png_header, jpeg_bytes, noise_png, png_bytes
from dualtoken.curation.config import CurateConfig
from dualtoken.curation.rules import REASONS, Curated, Rejected, curate_sample, normalise_caption
from dualtoken.data.sources import RawSample

CFG = CurateConfig(min_side=16, max_aspect_ratio=3.0, max_pixels=10_000_000)


def _run(parts, cfg=CFG, reject=None):
    return curate_sample(RawSample("src", "k", parts, "test", reject), cfg)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ({"png": huge_png_header(), "txt": b"bomb"}, "decompression_bomb"),
        ({"png": png_bytes((10, 40)), "txt": b"small"}, "too_small"),
        ({"png": png_bytes((200, 50)), "txt": b"wide"}, "bad_aspect_ratio"),
        ({"jpg": b"\xff\xd8\xff" + b"x" * 100, "txt": b"corrupt"}, "decode_error"),
        ({"png": noise_png(1)[:300], "txt": b"truncated"}, "decode_error"),
        ({"txt": b"no image"}, "missing_image"),
        ({"png": noise_png(1), "txt": b"\xff\xfe"}, "caption_not_utf8"),
        ({"png": noise_png(1), "txt": b" \n\t "}, "caption_empty"),
        ({"png": noise_png(1), "txt": b"ab"}, "caption_too_short"),
        ({"png": noise_png(1), "txt": b"x" * 600}, "caption_too_long"),
        ({"png": noise_png(1)}, "caption_missing"),
        ({"png": noise_png(1), "txt": b"ok caption", "json": b"[1, 2]"}, "bad_metadata"),
    ],
)
def test_each_rule_rejects_with_its_reason(parts, reason):
    result = _run(parts)
    assert isinstance(result, Rejected) and result.reason == reason, result
    assert result.originals == parts  # the original bytes travel with the reject
    assert reason in REASONS


def test_file_size_limit():
    cfg = CurateConfig(max_file_mb=1)
    result = _run({"png": b"\x89PNG" + b"0" * (2 * 2**20), "txt": b"big"}, cfg)
    assert isinstance(result, Rejected) and result.reason == "file_too_large"


def test_upstream_reject_passes_through():
    result = _run({"bin": b"x"}, reject=("unsafe_member_path", "../x"))
    assert isinstance(result, Rejected) and result.reason == "unsafe_member_path" and result.originals == {"bin": b"x"}


def test_resize_centre_crop_and_rgb_conversion():
    img = Image.new("RGBA", (200, 100), (0, 0, 0, 0))  # fully transparent: must become white, not black
    img.paste((255, 0, 0, 255), (75, 25, 125, 75))  # red square in the centre
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    result = _run({"png": buf.getvalue(), "txt": "  caf\u0065\u0301  au\tlait  ".encode()})
    assert isinstance(result, Curated)
    assert result.image.shape == (64, 64, 3) and result.image.dtype == np.uint8
    assert result.original_size == (200, 100)
    assert tuple(result.image[2, 2]) == (255, 255, 255)
    assert tuple(result.image[32, 32]) == (255, 0, 0)
    assert result.captions == ["caf\u00e9 au lait"]  # NFC + whitespace collapsed


def test_jpeg_and_grayscale_inputs_become_rgb():
    gray = Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64) % 251, mode="L")
    buf = io.BytesIO()
    gray.save(buf, format="PNG")
    for data, ext in ((buf.getvalue(), "png"), (jpeg_bytes(0, (300, 200)), "jpg")):
        result = _run({ext: data, "txt": b"fine"})
        assert isinstance(result, Curated) and result.image.shape == (64, 64, 3)


def test_bad_extra_captions_are_recorded_not_lost():
    result = _run({"png": noise_png(2), "txt": b"a good caption",
                   "json": b'{"captions": ["a good caption", "", "another one"], "qa": []}'})
    assert isinstance(result, Curated)
    assert result.captions == ["a good caption", "another one"]
    assert result.meta["dropped_captions"] == [{"caption": "", "reason": "caption_empty"}]
    assert result.meta["qa"] == []


def test_identical_pixels_give_identical_digest_across_encodings():
    arr = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    png, bmp = io.BytesIO(), io.BytesIO()
    Image.fromarray(arr).save(png, format="PNG")
    Image.fromarray(arr).save(bmp, format="WEBP", lossless=True)
    a, b = _run({"png": png.getvalue(), "txt": b"one"}), _run({"webp": bmp.getvalue(), "txt": b"two"})
    assert a.pixel_sha256 == b.pixel_sha256 and a.phash == b.phash


def test_normalise_caption_strips_control_characters():
    assert normalise_caption("a\x00b\u200bc  d", 1, 100) == "a b c d"


def test_mutated_images_never_crash_the_stage():
    """Random byte flips and cuts of valid files: every outcome is a sample or a reasoned reject."""
    rng = np.random.default_rng(0)
    originals = [noise_png(3), jpeg_bytes(4), png_bytes((40, 30))]
    reasons = set()
    for i in range(300):
        data = bytearray(originals[i % 3])
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        if i % 4 == 0:
            data = data[: int(rng.integers(8, len(data)))]
        result = _run({"jpg" if i % 3 == 1 else "png": bytes(data), "txt": b"mutated"})
        assert isinstance(result, Curated | Rejected)
        if isinstance(result, Rejected):
            reasons.add(result.reason)
    assert reasons <= {"decode_error", "too_small", "bad_aspect_ratio", "decompression_bomb"}
    assert "decode_error" in reasons
