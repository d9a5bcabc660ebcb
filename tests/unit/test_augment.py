"""The tokenizer's RandomResizedCrop: same size out, zooms in by at most 1/sqrt(min_scale) per side, is the
identity at area 1 and ratio 1, and is fixed by (seed, step, micro batch, rank) alone, so a resumed run crops as
the uninterrupted one."""

import math

import pytest
import torch

from dualtoken.training.augment import crop_boxes, crop_generator, random_resized_crop, resample


def test_crops_zoom_within_the_scale_and_keep_the_size():
    ramp = torch.linspace(-1, 1, 64).expand(8, 3, 64, 64).contiguous()  # x coordinate as the pixel value
    out = random_resized_crop(ramp, 0.9, crop_generator(0, 0, 0, 0))
    assert out.shape == ramp.shape
    span = out[..., -1] - out[..., 0]  # the horizontal extent of each crop, in [-1, 1] units (less a pixel)
    full = ramp[0, 0, 0, -1] - ramp[0, 0, 0, 0]
    assert bool((span <= full + 1e-5).all()) and bool((span >= full * math.sqrt(0.9 * 3 / 4) - 0.05).all())
    assert not torch.allclose(out, ramp)  # some image was cropped
    flat = torch.full((2, 3, 16, 16), 0.25)
    assert torch.allclose(random_resized_crop(flat, 0.5, crop_generator(0, 1, 0, 0)), flat)


def test_boxes_cover_the_area_asked_and_the_full_box_is_the_identity():
    boxes = crop_boxes(10_000, 0.9, crop_generator(0, 0, 0, 0))
    width, height, shift_x, shift_y = boxes.unbind(1)
    assert float((width * height).min()) >= 0.9 * 3 / 4 and float((width * height).max()) <= 1.0  # clamped ones
    assert bool((shift_x.abs() <= 1 - width + 1e-6).all()) and bool((shift_y.abs() <= 1 - height + 1e-6).all())
    images = torch.rand(2, 3, 16, 16)
    assert torch.allclose(resample(images, torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2)), images, atol=1e-6)
    rows = torch.rand(2, 3, 1, 16).expand(2, 3, 16, 16)  # constant down each column
    left = resample(rows, torch.tensor([[0.5, 1.0, -0.5, 0.0]] * 2))  # the left half, stretched 2x
    # output column 2k + 1 samples source position k + 0.25 (pixel centres, align_corners=False)
    by_hand = 0.75 * rows[..., :7] + 0.25 * rows[..., 1:8]
    assert torch.allclose(left[..., 1::2][..., :7], by_hand, atol=1e-5)


def test_crops_depend_on_the_step_and_rank_only():
    images = torch.rand(4, 3, 16, 16)
    one = random_resized_crop(images, 0.9, crop_generator(3, 10, 1, 0))
    assert torch.equal(one, random_resized_crop(images, 0.9, crop_generator(3, 10, 1, 0)))
    for other in (crop_generator(3, 11, 1, 0), crop_generator(3, 10, 0, 0), crop_generator(3, 10, 1, 1)):
        assert not torch.equal(one, random_resized_crop(images, 0.9, other))


@pytest.mark.parametrize("scale", [0.0, 1.5])
def test_the_scale_is_checked(scale):
    from pydantic import ValidationError

    from dualtoken.training.tokenizer_config import TokenizerConfig

    with pytest.raises(ValidationError, match="random_crop_scale"):
        TokenizerConfig(random_crop_scale=scale)
