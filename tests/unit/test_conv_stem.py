"""The optional convolutional stem: declared in the vision config, saved and loaded with the teacher and the
tokenizer, carried from one to the other, and absent from the paper configs."""

import pytest
import torch

from dualtoken.models.configuration import named_config
from dualtoken.models.conv_stem import ConvStem
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.teacher import load_teacher, new_teacher, scratch_config, vision_config_of
from dualtoken.text import train_bpe


def _stem_teacher():
    torch.manual_seed(0)
    tokenizer = train_bpe(["a red circle", "a blue square at the left"] * 20, vocab_size=300)
    config = scratch_config(vision_config_of("demo-32px"), len(tokenizer), 8, 32, 64, 1, 2,
                            tokenizer.pad_token_id)
    return new_teacher(config, batch_size=8), tokenizer


def test_teacher_with_a_stem_saves_and_loads_exactly(tmp_path):
    model, tokenizer = _stem_teacher()
    assert isinstance(model.vision_model.embeddings.patch_embedding, ConvStem)
    model.train()(pixel_values=torch.randn(4, 3, 32, 32), input_ids=torch.ones(4, 8, dtype=torch.long))  # BN stats
    model.eval()
    model.save_pretrained(tmp_path / "t")
    tokenizer.save_pretrained(tmp_path / "t")
    loaded, _ = load_teacher(tmp_path / "t")
    assert not loaded.training
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.get_image_features(pixel_values=images).pooler_output,
                           loaded.get_image_features(pixel_values=images).pooler_output)


def test_tokenizer_starts_from_the_stem_tower_and_round_trips(tmp_path):
    teacher, _ = _stem_teacher()
    model = DualTokenModel.from_siglip(teacher.vision_model, named_config("demo-32px"))
    tower = model.vision.embeddings.patch_embedding
    assert isinstance(tower, ConvStem)
    assert torch.equal(tower.proj.weight, teacher.vision_model.embeddings.patch_embedding.proj.weight)
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert out.reconstruction.shape == (2, 3, 32, 32) and out.pixel.codes.shape == (2, 8, 8, 4)
    out.reconstruction.pow(2).mean().backward()
    assert tower.convs[0].weight.grad.abs().sum() > 0
    model.eval().save_pretrained(tmp_path / "tok")
    loaded = DualTokenModel.from_pretrained(tmp_path / "tok").eval()
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.reconstruct(images), loaded.reconstruct(images))


def test_paper_configs_keep_the_patchify_convolution_and_bad_stems_are_errors():
    for name in ("so400m-patch14-384", "siglip2-so400m-patch16-256", "siglip-l16-256"):
        assert "conv_stem" not in vision_config_of(name)
    vision = vision_config_of("demo-32px")
    for bad in ([16, 32, 64], [-16, -32], [16, 0]):  # 8x downsampling for patch 4; channels not positive
        with pytest.raises(ValueError, match="conv_stem"):
            DualTokenModel(named_config("demo-32px", vision_config={**vision, "conv_stem": bad}))
