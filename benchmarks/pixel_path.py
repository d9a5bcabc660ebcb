"""Where a trained tokenizer loses reconstruction quality: the encoder + decoder, or the pixel quantizer.

Decodes the pixel features of a saved tokenizer three ways on a curated split: unquantized (the decoder
applied to the down-projected tap itself), after each residual depth (the partial sums of the code
vectors), and the full codes (what ``reconstruct`` and the stages measure). When the unquantized PSNR is
no better than the full codes, more or larger codebooks cannot help: the encoder and decoder are the limit.

    python benchmarks/pixel_path.py [--tokenizer models/tokenizer] [--curated data/curated] [--split val]
"""

from __future__ import annotations

import argparse

import torch

from dualtoken.data.curated import from_model_output, read_images, to_model_input
from dualtoken.metrics.reconstruction import psnr
from dualtoken.models.dualtoken import DualTokenModel


@torch.no_grad()
def pixel_path(model: DualTokenModel, images: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB) of uint8 ``images`` decoded unquantized, after each depth, and from the full codes."""
    x = to_model_input(images)
    pixel_features, _ = model._taps(x)
    latent = model._grid(model.pixel_down(pixel_features))
    out = model.pixel_quantizer(latent)
    b = x.shape[0]

    def decoded(vectors: torch.Tensor) -> float:
        tokens = model.pixel_up(vectors.reshape(b, -1, vectors.shape[-1]))
        return psnr(images, from_model_output(model.decoder(model._to_map(tokens)))).mean().item()

    result = {"unquantized": decoded(latent)}
    for depth in range(out.partial_sums.shape[-2]):
        result[f"depth {depth + 1}"] = decoded(out.partial_sums[..., depth, :])
    result["codes (reconstruct)"] = psnr(images, from_model_output(model.reconstruct(x))).mean().item()
    residual = (latent - out.quantized).pow(2).sum(-1) / latent.pow(2).sum(-1).clamp_min(1e-12)
    result["residual energy %"] = 100 * residual.mean().item()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="models/tokenizer")
    parser.add_argument("--curated", default="data/curated")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    model = DualTokenModel.from_pretrained(args.tokenizer).eval()
    images = read_images(args.curated, args.split, args.images).images
    print(f"{args.tokenizer}: {len(images)} {args.split} images")
    for name, value in pixel_path(model, images).items():
        print(f"  {name:20s} {value:6.2f}")


if __name__ == "__main__":
    main()
