"""The released DualToken-256 checkpoint's importer, on state dicts laid out as the release (its names and shapes,
written out here from the official model's structure): every tensor finds its place at the real size (on the
meta device), and at a small size the imported projections and decoder compute what the release's blocks
compute, by hand from the release's own tensors."""

import pytest
import torch
import torch.nn.functional as F
from transformers import SiglipVisionConfig, SiglipVisionModel

from dualtoken.models.configuration import DualTokenConfig, named_config
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.released_checkpoint import convert, load_released

SMALL = DualTokenConfig(  # widths >= 128: GroupNorm has the release's 32 groups
    vision_config=SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=128, intermediate_size=256,
                                     num_hidden_layers=3, num_attention_heads=2, vision_use_head=True),
    layer_pixel=1, layer_shortcut=None, layer_semantic=2, projection="conv", pixel_codebook_size=16,
    pixel_code_dim=256, pixel_depth=2, semantic_codebook_size=16, semantic_code_dim=256, semantic_depth=2,
    decoder_channels=128, decoder_channel_mult=[1, 1, 1, 1], decoder_res_blocks=1, decoder_input_block=True)


def _resblock(prefix, cin, cout, first_kernel):
    """The release's ResnetBlock / ProjectResnetBlock / PostQuantResnetBlock: names and shapes."""
    shapes = {f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
              f"{prefix}.conv1.weight": (cout, cin, first_kernel, first_kernel), f"{prefix}.conv1.bias": (cout,),
              f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
              f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,)}
    if cin != cout:
        shapes |= {f"{prefix}.nin_shortcut.weight": (cout, cin, 1, 1), f"{prefix}.nin_shortcut.bias": (cout,)}
    return shapes


def _attention(prefix, c):
    shapes = {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,)}
    for m in ("q", "k", "v", "proj_out"):
        shapes |= {f"{prefix}.{m}.weight": (c, c, 1, 1), f"{prefix}.{m}.bias": (c,)}
    return shapes


def released_state(config: DualTokenConfig, make):
    """A state dict with the release's keys and shapes for ``config``; ``make(shape)`` fills each tensor."""
    width, d, k = config.vision_config.hidden_size, config.pixel_code_dim, config.pixel_codebook_size
    with torch.device("meta"):
        tower = SiglipVisionModel(config.vision_config).state_dict()  # transformers 5: the layout without a wrapper
    shapes = {f"siglip_model.vision_model.{n}": tuple(t.shape) for n, t in tower.items()}
    shapes |= {"siglip_model.text_model.embeddings.token_embedding.weight": (10, width),
               "siglip_model.logit_scale": (1,), "siglip_model.logit_bias": (1,)}
    for name, cin, cout in (("prequant_visual", width, d), ("prequant_semantic", width, d),
                            ("postquant_visual", d, width), ("postquant_semantic", d, width)):
        shapes |= _resblock(name, cin, cout, 1)
    ch = [config.decoder_channels * m for m in config.decoder_channel_mult]
    shapes |= _resblock("post_quant_conv", width, ch[-1], 1)
    shapes |= {"decoder.conv_in.weight": (ch[-1], ch[-1], 3, 3), "decoder.conv_in.bias": (ch[-1],)}
    shapes |= _resblock("decoder.mid.block_1", ch[-1], ch[-1], 3) | _attention("decoder.mid.attn_1", ch[-1])
    shapes |= _resblock("decoder.mid.block_2", ch[-1], ch[-1], 3)
    current = ch[-1]
    for il in reversed(range(len(ch))):  # up.{n-1} is the coarsest level, the only one with attention here
        for b in range(config.decoder_res_blocks + 1):
            shapes |= _resblock(f"decoder.up.{il}.block.{b}", current, ch[il], 3)
            current = ch[il]
            if il == len(ch) - 1:
                shapes |= _attention(f"decoder.up.{il}.attn.{b}", current)
        if il:
            shapes |= {f"decoder.up.{il}.upsample.conv.weight": (current, current, 3, 3),
                       f"decoder.up.{il}.upsample.conv.bias": (current,)}
    shapes |= {"decoder.norm_out.weight": (ch[0],), "decoder.norm_out.bias": (ch[0],),
               "decoder.conv_out.weight": (3, ch[0], 3, 3), "decoder.conv_out.bias": (3,)}
    state = {n: make(s) for n, s in shapes.items()}
    for q, depth in (("quantizer", config.pixel_depth), ("quantizer_semantic", config.semantic_depth)):
        book = {"weight": make((k + 1, d)), "cluster_size_ema": make((k,)).abs(), "embed_ema": make((k, d))}
        for j in range(depth):  # one shared codebook, listed under every depth
            state |= {f"{q}.codebooks.{j}.{n}": t for n, t in book.items()}
    return state


def test_every_released_tensor_has_its_place_at_the_real_size():
    config = named_config("dualtoken-256")
    state = released_state(config, lambda shape: torch.empty(shape, device="meta"))
    ours, left_out = convert(state, config)
    with torch.device("meta"):
        model = DualTokenModel(config)
    model.load_state_dict(ours, strict=True, assign=True)  # every name and shape of ours, none left over
    assert left_out == ["siglip_model.logit_bias", "siglip_model.logit_scale",
                        "siglip_model.text_model.embeddings.token_embedding.weight"]
    assert tuple(ours["pixel_quantizer.codebooks"].shape) == (1, 32768, 256)  # the padding row dropped
    assert sum(p.numel() for p in model.vision.parameters()) == 428_225_600  # So400m/14-384: 428M


def _official_resblock(x, s, prefix):
    h = F.silu(F.group_norm(x, 32, s[f"{prefix}.norm1.weight"], s[f"{prefix}.norm1.bias"], 1e-6))
    w = s[f"{prefix}.conv1.weight"]
    h = F.conv2d(h, w, s[f"{prefix}.conv1.bias"], padding=w.shape[-1] // 2)
    h = F.silu(F.group_norm(h, 32, s[f"{prefix}.norm2.weight"], s[f"{prefix}.norm2.bias"], 1e-6))
    h = F.conv2d(h, s[f"{prefix}.conv2.weight"], s[f"{prefix}.conv2.bias"], padding=1)
    if f"{prefix}.nin_shortcut.weight" in s:
        x = F.conv2d(x, s[f"{prefix}.nin_shortcut.weight"], s[f"{prefix}.nin_shortcut.bias"])
    return x + h


def _official_attention(x, s, prefix):
    b, c, hh, ww = x.shape
    h = F.group_norm(x, 32, s[f"{prefix}.norm.weight"], s[f"{prefix}.norm.bias"], 1e-6)
    q, k, v = (F.conv2d(h, s[f"{prefix}.{m}.weight"], s[f"{prefix}.{m}.bias"]).reshape(b, c, -1) for m in "qkv")
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c**-0.5, dim=-1)
    out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, hh, ww)
    return x + F.conv2d(out, s[f"{prefix}.proj_out.weight"], s[f"{prefix}.proj_out.bias"])


def _official_decoder(latent, s, levels, blocks):
    x = _official_resblock(latent, s, "post_quant_conv")
    x = F.conv2d(x, s["decoder.conv_in.weight"], s["decoder.conv_in.bias"], padding=1)
    x = _official_resblock(x, s, "decoder.mid.block_1")
    x = _official_resblock(_official_attention(x, s, "decoder.mid.attn_1"), s, "decoder.mid.block_2")
    for il in reversed(range(levels)):
        for b in range(blocks):
            x = _official_resblock(x, s, f"decoder.up.{il}.block.{b}")
            if f"decoder.up.{il}.attn.{b}.norm.weight" in s:
                x = _official_attention(x, s, f"decoder.up.{il}.attn.{b}")
        if il:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = F.conv2d(x, s[f"decoder.up.{il}.upsample.conv.weight"], s[f"decoder.up.{il}.upsample.conv.bias"],
                         padding=1)
    x = F.silu(F.group_norm(x, 32, s["decoder.norm_out.weight"], s["decoder.norm_out.bias"], 1e-6))
    return F.conv2d(x, s["decoder.conv_out.weight"], s["decoder.conv_out.bias"], padding=1)


def test_the_imported_model_computes_what_the_release_computes(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = released_state(SMALL, lambda shape: torch.randn(shape, generator=generator) * 0.05)
    state["module.decoder.conv_out.bias"] = state.pop("decoder.conv_out.bias")  # as a DDP-wrapped model saved it
    torch.save({"state_dict": state, "epoch": 8}, tmp_path / "epoch_8.pt")
    model, left_out = load_released(tmp_path / "epoch_8.pt", SMALL)
    state["decoder.conv_out.bias"] = state.pop("module.decoder.conv_out.bias")
    assert len(left_out) == 3 and model.pixel_quantizer.initialized and model.semantic_quantizer.initialized
    assert torch.equal(model.pixel_quantizer.codebooks[0], state["quantizer.codebooks.0.weight"][:-1])
    assert torch.equal(model.semantic_quantizer.embed_sum[0], state["quantizer_semantic.codebooks.0.embed_ema"])
    assert torch.equal(model.vision.encoder.layers[0].mlp.fc1.weight,
                       state["siglip_model.vision_model.encoder.layers.0.mlp.fc1.weight"])
    model.eval()
    with torch.no_grad():
        blocks = (("pixel_down", "prequant_visual", 128), ("semantic_up", "postquant_semantic", 256))
        for ours, official, width in blocks:
            tokens = torch.randn(2, 16, width, generator=generator)  # a 4 x 4 grid, row-major
            grid = tokens.transpose(1, 2).reshape(2, width, 4, 4)
            by_hand = _official_resblock(grid, state, official).flatten(2).transpose(1, 2)
            assert torch.allclose(getattr(model, ours)(tokens), by_hand, atol=1e-4)
        latent = torch.randn(1, 128, 4, 4, generator=generator)
        assert torch.allclose(model.decoder(latent), _official_decoder(latent, state, 4, 2), atol=1e-4)

    model.save_pretrained(tmp_path / "imported")
    again = DualTokenModel.from_pretrained(tmp_path / "imported", local_files_only=True)
    assert again.config.projection == "conv" and torch.equal(again.pixel_down.block.skip.weight,
                                                             state["prequant_visual.nin_shortcut.weight"])


def test_a_checkpoint_of_another_layout_is_refused_with_the_tensor_named():
    generator = torch.Generator().manual_seed(0)
    state = released_state(SMALL, lambda shape: torch.randn(shape, generator=generator))
    with pytest.raises(ValueError, match=r"lacks 'decoder\.conv_in\.weight'"):
        convert({k: v for k, v in state.items() if k != "decoder.conv_in.weight"}, SMALL)
    with pytest.raises(ValueError, match=r"no place in dualtoken-256: \['prequant_shortcut\.proj\.weight'\]"):
        convert(state | {"prequant_shortcut.proj.weight": torch.zeros(1)}, SMALL)
    unshared = dict(state)
    unshared["quantizer.codebooks.1.weight"] = state["quantizer.codebooks.1.weight"] + 1
    with pytest.raises(ValueError, match="differs from depth 0's"):
        convert(unshared, SMALL)


def test_the_command_writes_a_model_folder(tmp_path, monkeypatch, capsys):
    import dualtoken.models.released_checkpoint as released

    monkeypatch.setattr(released, "named_config", lambda name: SMALL)  # the real size takes 4 GB
    generator = torch.Generator().manual_seed(0)
    torch.save({"state_dict": released_state(SMALL, lambda shape: torch.randn(shape, generator=generator))},
               tmp_path / "release.pt")
    released.main([str(tmp_path / "release.pt"), str(tmp_path / "out")])
    assert "left out 3 tensors" in capsys.readouterr().out
    model = DualTokenModel.from_pretrained(tmp_path / "out", local_files_only=True)
    assert model.pixel_quantizer.initialized and not any(tmp_path.glob(".out.*"))  # written atomically
