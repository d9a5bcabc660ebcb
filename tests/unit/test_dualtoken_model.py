import pytest
import torch
from transformers import AutoConfig, AutoModel

from dualtoken.models.configuration import DualTokenConfig, named_config
from dualtoken.models.dualtoken import DualTokenModel


@pytest.fixture(scope="module")
def demo_model():
    torch.manual_seed(0)
    return DualTokenModel(named_config("demo")).eval()


def test_demo_forward_shapes_and_gradients():
    torch.manual_seed(0)
    model = DualTokenModel(named_config("demo")).train()
    images = torch.randn(2, 3, 64, 64)
    out = model(images)
    assert out.reconstruction.shape == (2, 3, 64, 64)
    assert out.pixel.codes.shape == (2, 8, 8, 4) and out.semantic.codes.shape == (2, 8, 8, 4)
    assert out.semantic_features.shape == (2, 64, 128) and out.pooled.shape == (2, 128)
    loss = (out.reconstruction - images).pow(2).mean() + out.pooled.pow(2).mean() + out.pixel.commitment_loss
    loss.backward()
    patch = model.vision.embeddings.patch_embedding.weight.grad
    assert patch is not None and patch.abs().sum() > 0  # through both straight-through estimators
    assert model.vision.encoder.layers[-1].mlp.fc1.weight.grad.abs().sum() > 0  # semantic path runs the rest


def test_encode_decode_embed(demo_model):
    images = torch.randn(3, 3, 64, 64)
    codes = demo_model.encode(images)
    assert codes.pixel.shape == (3, 8, 8, 4) and codes.pixel.dtype == torch.long
    assert int(codes.pixel.min()) >= 0 and int(codes.pixel.max()) < 512
    assert demo_model.decode(codes.pixel).shape == (3, 3, 64, 64)
    emb = demo_model.embed_codes(pixel=codes.pixel, semantic=codes.semantic)
    assert emb["pixel"].shape == (3, 8, 8, 16) and emb["semantic"].shape == (3, 8, 8, 16)
    assert torch.allclose(demo_model.reconstruct(images), demo_model.decode(codes.pixel))
    forward = demo_model(images)  # eval mode: same codes as encode()
    assert torch.equal(forward.pixel.codes, codes.pixel) and torch.equal(forward.semantic.codes, codes.semantic)
    assert torch.allclose(demo_model.semantic_embedding(images), forward.pooled, atol=1e-5)


def test_save_and_load_are_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = DualTokenModel(named_config("demo")).train()
    model(torch.randn(4, 3, 64, 64))  # initialise codebooks from data and move the EMA state
    model.eval()
    model.save_pretrained(tmp_path / "tok")
    assert (tmp_path / "tok" / "model.safetensors").is_file()
    loaded = AutoModel.from_pretrained(tmp_path / "tok").eval()
    assert isinstance(loaded, DualTokenModel)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert bool(loaded.pixel_quantizer.initialized)
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.reconstruct(images), loaded.reconstruct(images))
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "tok"), DualTokenConfig)


def _siglip_vision_params(h: int, i: int, layers: int, patch: int, image: int) -> int:
    """Parameter count of a SigLIP vision tower with a pooling head, from its shape alone."""
    layer = 2 * h + 4 * (h * h + h) + 2 * h + (h * i + i + i * h + h)
    embeddings = 3 * patch * patch * h + h + (image // patch) ** 2 * h
    head = h + (3 * h * h + 3 * h) + (h * h + h) + 2 * h + (h * i + i + i * h + h)
    return embeddings + layers * layer + 2 * h + head


@pytest.mark.parametrize(("name", "grid", "depth", "image", "tower_shape", "billions"), [
    ("so400m-patch14-384", 27, 8, 384, (1152, 4304, 27, 14), (0.40, 0.44)),  # SigLIP-So400m's vision tower
    ("siglip2-so400m-patch16-256", 16, 4, 256, (1152, 4304, 27, 16), (0.40, 0.44)),
    ("siglip-l16-256", 16, 4, 256, (1024, 4096, 24, 16), (0.30, 0.33))])  # SigLIP-L/16's: ~0.32 B
def test_full_size_configs_on_meta_device(name, grid, depth, image, tower_shape, billions):
    config = named_config(name)
    with torch.device("meta"):
        model = DualTokenModel(config).eval()  # eval: no data-dependent codebook initialisation
        out = model(torch.empty(2, 3, image, image))
    assert config.grid_size == grid
    assert out.pixel.codes.shape == (2, grid, grid, depth) and out.semantic.codes.shape == (2, grid, grid, depth)
    assert out.reconstruction.shape == (2, 3, image, image)
    assert model.pixel_quantizer.codebooks.shape == (1, 16384, 32)
    tower = sum(p.numel() for p in model.vision.parameters())
    assert tower == _siglip_vision_params(*tower_shape, image)
    assert billions[0] * 1e9 < tower < billions[1] * 1e9


def test_bad_layouts_are_errors():
    with pytest.raises(ValueError, match="layer_pixel"):
        named_config("demo", layer_pixel=6, layer_semantic=5)
    with pytest.raises(ValueError, match="decoder gives"):
        named_config("demo", decoder_channel_mult=[1, 2])
    with pytest.raises(ValueError, match="unknown tokenizer config"):
        named_config("so400m")


def test_gan_pieces():
    from dualtoken.models.discriminator import (
        PatchDiscriminator,
        ResNetDiscriminator,
        adaptive_gan_weight,
        hinge_d_loss,
        hinge_g_loss,
    )

    logits = PatchDiscriminator(channels=16, layers=3)(torch.randn(2, 3, 64, 64))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # one logit per patch
    # the released discriminator at 256 px: three halvings to 32 x 32 patch logits; its parameters counted by
    # hand (3x3 conv 3->64; residual steps 64->128, 128->256 (stride 2), 256->512 (stride 1), each GroupNorm +
    # 3x3 conv + 1x1 shortcut; 3x3 conv 512->1)
    released = ResNetDiscriminator(channels=64, layers=3)
    assert released(torch.randn(1, 3, 256, 256)).shape == (1, 1, 32, 32)
    assert sum(p.numel() for p in released.parameters()) == 1_729_409
    assert all(m.num_groups == 32 for m in released.modules() if isinstance(m, torch.nn.GroupNorm))
    assert ResNetDiscriminator(channels=8, layers=2)(torch.randn(1, 3, 32, 32)).shape == (1, 1, 8, 8)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1 - real) = [0, 0.5] -> 0.25; relu(1 + fake) = [0, 1] -> 0.5; half of the sum
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.375)
    # leaky (slope 0.01): a logit past its margin adds -0.01 instead of 0: 0.5 (0.245 + 0.495)
    assert hinge_d_loss(real, fake, leaky=True).item() == pytest.approx(0.37)
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    w = torch.nn.Parameter(torch.ones(3))
    big = adaptive_gan_weight((w * 100).sum(), (w * 0.001).sum(), w)  # ratio 1e5 -> clamped to 10
    small = adaptive_gan_weight((w * 0.001).sum(), (w * 100).sum(), w)  # ratio 1e-5 -> clamped to 0.3
    mid = adaptive_gan_weight((w * 2).sum(), (w * 1).sum(), w)
    assert big.item() == 10.0 and small.item() == pytest.approx(0.3) and mid.item() == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize("kind", ["attention", "linear"])
def test_token_projection_shapes(kind):
    from dualtoken.models.layers import TokenProjection

    down, up = TokenProjection(64, 8, kind, heads=4), TokenProjection(8, 64, kind, heads=4)
    x = torch.randn(2, 10, 64)
    assert down(x).shape == (2, 10, 8) and up(down(x)).shape == (2, 10, 64)
    assert (down.attention is None) == (kind == "linear")


@pytest.mark.parametrize("causal", [False, True])
def test_the_released_projection_by_hand(causal):
    """Down (64 -> 8): 8 heads of 8 read the wide input and are averaged; up (8 -> 64): the narrow input makes
    8 heads of 8, concatenated. Both: linear path + attention path, then a residual GeGLU MLP. Causal: token n
    attends to tokens 0..n only."""
    from dualtoken.models.layers import ReleasedProjection

    torch.manual_seed(0)
    x = torch.randn(2, 5, 64)
    down, up = ReleasedProjection(64, 8, causal), ReleasedProjection(8, 64, causal)
    later = torch.ones(5, 5, dtype=torch.bool).triu(1)  # (n, m): m after n
    for proj, inp, wide in ((down, x, 64), (up, down(x), 64)):
        q, k, v = proj.qkv(proj.norm_attention(inp)).view(2, 5, 3, 8, 8).unbind(2)  # (b, n, heads, 8)
        scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / 8**0.5
        weights = torch.softmax(scores.masked_fill(later, float("-inf")) if causal else scores, dim=-1)
        heads = torch.einsum("bhnm,bmhd->bnhd", weights, v)
        attended = heads.mean(2) if proj.down else heads.reshape(2, 5, wide)
        y = proj.linear(proj.norm_linear(inp)) + proj.out(attended)
        m = proj.mlp.norm(proj.norm_mlp(y))
        by_hand = y + proj.mlp.w2(torch.nn.functional.gelu(proj.mlp.w0(m), approximate="tanh") * proj.mlp.w1(m))
        assert torch.allclose(proj(inp), by_hand, atol=1e-5)
    assert down(x).shape == (2, 5, 8) and up(down(x)).shape == (2, 5, 64)
    if causal:  # a later token does not change an earlier one's output
        changed = x.clone()
        changed[:, 3:] += 1
        assert torch.allclose(down(changed)[:, :3], down(x)[:, :3], atol=1e-6)
    # parameters: LN + linear, LN + qkv (3 x wide) + out, LN + GeGLU (LN, 2 x (out -> 2 out), 2 out -> out)
    for proj, i, o in ((down, 64, 8), (up, 8, 64)):
        count = 2 * i + i * o + o + 2 * i + i * 3 * 64 + 3 * 64 + o * o + o + 2 * o + 2 * o + 2 * (o * 2 * o + 2 * o) \
            + 2 * o * o + o
        assert sum(p.numel() for p in proj.parameters()) == count
    with pytest.raises(ValueError, match="divide"):
        ReleasedProjection(64, 12)


@pytest.mark.parametrize("space", ["code", "width"])
def test_the_shortcut_joins_the_pixel_tap_in_code_or_width_space(space):
    from tiny import VISION, tiny_tokenizer_config

    base = tiny_tokenizer_config().to_dict()
    for key in ("vision_config", "model_type", "transformers_version", "architectures"):
        base.pop(key, None)
    config = DualTokenConfig(vision_config=VISION, **{**base, "layer_pixel": 2, "layer_semantic": 3,
                                                      "layer_shortcut": 1, "shortcut_space": space})
    torch.manual_seed(0)
    model = DualTokenModel(config).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    pixel, shortcut, _ = model._taps(images)
    with torch.no_grad():
        hidden = model.vision.embeddings(images)
        h1 = model.layers[0](hidden, attention_mask=None)
        h2 = model.layers[1](h1, attention_mask=None)
        if space == "code":  # its own projection, added to the projected tap
            by_hand = model.pixel_down(h2) + 0.6 * model.shortcut_down(h1)
        else:
            by_hand = model.pixel_down(h2 + 0.6 * h1)
            assert not hasattr(model, "shortcut_down")
        assert torch.allclose(model._pixel_latent(pixel, shortcut), by_hand, atol=1e-5)


def test_the_released_structure_is_the_paper_configs_and_the_decoder_input_block_runs():
    from dualtoken.models.layers import PixelDecoder, ReleasedProjection, ResBlock

    config = named_config("so400m-patch14-384")
    assert (config.projection, config.shortcut_space, config.decoder_input_block) == ("released", "code", True)
    demo = named_config("demo-32px")
    assert (demo.projection, demo.shortcut_space, demo.decoder_input_block) == ("attention", "width", False)
    with torch.device("meta"):
        model = DualTokenModel(config)
    assert all(isinstance(getattr(model, n), ReleasedProjection) for n in ("pixel_down", "shortcut_down", "pixel_up",
                                                                            "semantic_down", "semantic_up"))
    # the up projections attend causally, the down ones do not (the released code's latest version)
    assert [getattr(model, n).causal for n in ("pixel_down", "shortcut_down", "semantic_down")] == [False] * 3
    assert model.pixel_up.causal and model.semantic_up.causal
    with pytest.raises(ValueError, match="up_projection_causal needs projection 'released'"):
        named_config("demo-32px", up_projection_causal=True)
    decoder = PixelDecoder(64, 8, [1, 2], 1, input_block=True)
    assert isinstance(decoder.conv_in[0], ResBlock) and decoder(torch.randn(1, 64, 4, 4)).shape == (1, 3, 8, 8)
    assert decoder.conv_in[0].body[2].kernel_size == (1, 1)  # PostQuantResnetBlock: a 1x1, then a 3x3 convolution


def test_the_conv_projection_is_a_residual_block_on_the_token_grid_by_hand():
    """The first released checkpoint's ProjectResnetBlock: GroupNorm(32), SiLU, 1x1 conv, GroupNorm, SiLU, 3x3 conv,
    plus a 1x1 shortcut, on the tokens laid out as their square grid (row-major)."""
    import torch.nn.functional as F

    from dualtoken.models.layers import ConvProjection

    torch.manual_seed(0)
    proj = ConvProjection(128, 256)
    for p in proj.parameters():  # not the default init: every weight matters
        p.data.normal_(0, 0.1)
    x = torch.randn(2, 9, 128)
    grid = x.transpose(1, 2).reshape(2, 128, 3, 3)
    b = proj.block.body
    h = F.conv2d(F.silu(F.group_norm(grid, 32, b[0].weight, b[0].bias, 1e-6)), b[2].weight, b[2].bias)
    h = F.conv2d(F.silu(F.group_norm(h, 32, b[3].weight, b[3].bias, 1e-6)), b[5].weight, b[5].bias, padding=1)
    by_hand = (F.conv2d(grid, proj.block.skip.weight, proj.block.skip.bias) + h).flatten(2).transpose(1, 2)
    assert b[2].kernel_size == (1, 1) and torch.allclose(proj(x), by_hand, atol=1e-5)
    assert proj(x).shape == (2, 9, 256)
