"""Import the released DualToken tokenizer checkpoint (the README's DualToken-256) into ``DualTokenModel``.

The release is a training checkpoint (``{"state_dict": ..., "optimizer": ..., "epoch": ...}``) of the official
model class in its first version: a SigLIP model (vision and text towers), residual-convolution projections, two
residual quantizers whose shared codebook is listed once per depth (with a padding row), and a VQGAN decoder
behind a residual input block. ``named_config("dualtoken-256")`` is that structure; ``convert`` renames and
reshapes its tensors:

* ``siglip_model.vision_model.*`` -> ``vision.*`` (the same transformers layout);
* ``prequant_visual`` / ``prequant_semantic`` / ``postquant_visual`` / ``postquant_semantic`` -> ``pixel_down`` /
  ``semantic_down`` / ``pixel_up`` / ``semantic_up``; ``post_quant_conv`` -> the decoder's input block;
* ``quantizer`` / ``quantizer_semantic`` -> ``pixel_quantizer`` / ``semantic_quantizer``: the codebook without its
  padding row, the EMA counts and sums, marked initialised (else the first training step would re-seed it);
* the decoder's levels, counted from the finest (``up.0``) there and from the coarsest here, and each attention
  block's separate q, k, v convolutions joined into one.

The text tower and the logit scale and bias are left out: they are the original SigLIP's (frozen in training);
use that SigLIP as the teacher. The discriminator was never saved.

    python -m dualtoken.models.released_checkpoint epoch_8.pt models/dualtoken-256
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from dualtoken.models.configuration import DualTokenConfig, named_config
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.storage import save_folder_atomically

RELEASED = "dualtoken-256"
TOWER = "siglip_model.vision_model"
# the text tower and logit scale/bias (the original SigLIP's), and position indices if an older transformers saved them
LEFT_OUT = ("siglip_model.text_model.", "siglip_model.logit_scale", "siglip_model.logit_bias",
            f"{TOWER}.embeddings.position_ids")
_RESNET = {"norm1": "body.0", "conv1": "body.2", "norm2": "body.3", "conv2": "body.5", "nin_shortcut": "skip"}
_PROJECTIONS = {"prequant_visual": "pixel_down.block", "prequant_semantic": "semantic_down.block",
                "postquant_visual": "pixel_up.block", "postquant_semantic": "semantic_up.block",
                "post_quant_conv": "decoder.conv_in.0"}
_QUANTIZERS = {"quantizer": "pixel_quantizer", "quantizer_semantic": "semantic_quantizer"}


class _Source:
    """The released tensors, each taken once; what is never taken is reported."""

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        self.state, self.taken = state, set[str]()

    def take(self, key: str) -> Tensor:
        if key not in self.state:
            raise ValueError(f"the released checkpoint lacks {key!r}: is it the DualToken-256 release?")
        self.taken.add(key)
        return self.state[key]

    def under(self, prefix: str) -> list[str]:
        return sorted(k for k in self.state if k.startswith(prefix + "."))


def _resnet(src: _Source, official: str, ours: str) -> dict[str, Tensor]:
    out = {}
    for key in src.under(official):
        layer, param = key[len(official) + 1:].split(".")
        if layer not in _RESNET:
            raise ValueError(f"unexpected tensor {key!r} in a residual block of the released checkpoint")
        out[f"{ours}.{_RESNET[layer]}.{param}"] = src.take(key)
    return out


def _attention(src: _Source, official: str, ours: str) -> dict[str, Tensor]:
    out = {f"{ours}.norm.{p}": src.take(f"{official}.norm.{p}") for p in ("weight", "bias")}
    out |= {f"{ours}.out.{p}": src.take(f"{official}.proj_out.{p}") for p in ("weight", "bias")}
    for p in ("weight", "bias"):
        out[f"{ours}.qkv.{p}"] = torch.cat([src.take(f"{official}.{m}.{p}") for m in ("q", "k", "v")])
    return out


def _quantizer(src: _Source, official: str, ours: str, depth: int) -> dict[str, Tensor]:
    """The shared codebook, which the release lists under every depth, once; its last row pads and is dropped."""
    first = {name: src.take(f"{official}.codebooks.0.{name}") for name in ("weight", "cluster_size_ema", "embed_ema")}
    for d in range(1, depth):
        for name, value in first.items():
            copy = src.take(f"{official}.codebooks.{d}.{name}")
            if copy is not value and not torch.equal(copy, value):
                raise ValueError(f"{official}.codebooks.{d}.{name} differs from depth 0's: this importer reads "
                                 "one codebook shared across depths, as the release has")
    return {f"{ours}.codebooks": first["weight"][:-1].unsqueeze(0),
            f"{ours}.cluster_size": first["cluster_size_ema"].unsqueeze(0),
            f"{ours}.embed_sum": first["embed_ema"].unsqueeze(0),
            f"{ours}.initialized": torch.tensor(True), f"{ours}.updates": torch.zeros((), dtype=torch.long)}


def _decoder(src: _Source, config: DualTokenConfig) -> dict[str, Tensor]:
    out = {f"decoder.conv_in.1.{p}": src.take(f"decoder.conv_in.{p}") for p in ("weight", "bias")}
    out |= _resnet(src, "decoder.mid.block_1", "decoder.mid.0") | _resnet(src, "decoder.mid.block_2", "decoder.mid.2")
    out |= _attention(src, "decoder.mid.attn_1", "decoder.mid.1")
    levels, blocks = len(config.decoder_channel_mult), config.decoder_res_blocks + 1
    for level in range(levels):  # ours: 0 is the coarsest; the release's up.0 is the finest
        up, attended = f"decoder.up.{levels - 1 - level}", level < config.decoder_attention_levels
        step = 2 if attended else 1
        for b in range(blocks):
            out |= _resnet(src, f"{up}.block.{b}", f"decoder.levels.{level}.{step * b}")
            if attended:
                out |= _attention(src, f"{up}.attn.{b}", f"decoder.levels.{level}.{step * b + 1}")
        if level < levels - 1:  # after the blocks: the nearest upsampling (no weights), then its convolution
            out |= {f"decoder.levels.{level}.{step * blocks + 1}.{p}": src.take(f"{up}.upsample.conv.{p}")
                    for p in ("weight", "bias")}
    out |= {f"decoder.conv_out.0.{p}": src.take(f"decoder.norm_out.{p}") for p in ("weight", "bias")}
    out |= {f"decoder.conv_out.2.{p}": src.take(f"decoder.conv_out.{p}") for p in ("weight", "bias")}
    return out


def convert(state: Mapping[str, Tensor], config: DualTokenConfig) -> tuple[dict[str, Tensor], list[str]]:
    """Our state dict from the released one (keys without ``module.``), and the released keys left out (the
    text tower, logit scale and bias). A missing or unexpected tensor is an error naming it."""
    src = _Source(state)
    ours = {f"vision.{k[len(TOWER) + 1:]}": src.take(k) for k in src.under(TOWER) if not k.startswith(LEFT_OUT)}
    for official, mine in _PROJECTIONS.items():
        ours |= _resnet(src, official, mine)
    for official, mine in _QUANTIZERS.items():
        depth = config.pixel_depth if mine == "pixel_quantizer" else config.semantic_depth
        ours |= _quantizer(src, official, mine, depth)
    ours |= _decoder(src, config)
    rest = sorted(set(state) - src.taken)
    unexpected = [k for k in rest if not k.startswith(LEFT_OUT)]
    if unexpected:
        raise ValueError(f"{len(unexpected)} tensors of the checkpoint have no place in {RELEASED}: {unexpected[:5]}")
    return ours, rest


def load_released(path: str | Path, config: DualTokenConfig | None = None) -> tuple[DualTokenModel, list[str]]:
    """The released checkpoint as a ``DualTokenModel`` (fp32), and the released keys left out."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    state = {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in state.items()}
    config = config or named_config(RELEASED)
    ours, left_out = convert(state, config)
    model = DualTokenModel(config)
    model.load_state_dict(ours, strict=True)  # names any tensor that is missing or misshapen
    return model, left_out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Import the released DualToken-256 tokenizer checkpoint.")
    parser.add_argument("checkpoint", help="the release's .pt file (a training checkpoint with a state_dict)")
    parser.add_argument("output", help="folder to write the DualToken model to (tokenizer.init_from, evaluate)")
    args = parser.parse_args(argv)
    model, left_out = load_released(args.checkpoint)
    save_folder_atomically(args.output, model.save_pretrained)
    print(f"wrote {args.output} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters); left out "
          f"{len(left_out)} tensors of the text tower and logit scale/bias (the original SigLIP's)")


if __name__ == "__main__":
    main()
