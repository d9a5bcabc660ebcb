"""LPIPS-VGG (Zhang et al. 2018) in plain torch, for when its weights are on local disk.

No torchvision here: the VGG16 trunk is spelled out with torchvision's layer indices, so one merged state
dict loads strictly: torchvision ``vgg16().features.*`` keys as ``features.*``, plus the LPIPS linear heads
``lin0.model.1.weight`` .. ``lin4.model.1.weight`` from the authors' ``vgg.pth``. Nothing is downloaded: with
torchvision's ``vgg16-397923af.pth`` and the ``lpips`` package's ``weights/v0.1/vgg.pth`` on disk,

    python -m dualtoken.models.lpips vgg16-397923af.pth vgg.pth weights/lpips_vgg.safetensors

writes the merged file where ``tokenizer.losses.lpips_weights`` looks by default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's numbering
WIDTHS = (64, 128, 256, 512, 512)
CONVERT = "python -m dualtoken.models.lpips VGG16.pth LPIPS_VGG.pth OUT.safetensors"


class _Linear(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers[: TAPS[-1] + 1])
        for i, width in enumerate(WIDTHS):
            self.add_module(f"lin{i}", _Linear(width))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | Path) -> LPIPS:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS weights {path} not found: write them with `{CONVERT}` from torchvision's "
                                    "vgg16-397923af.pth and the lpips package's weights/v0.1/vgg.pth (see "
                                    "dualtoken.models.lpips), or choose perceptual_kind 'teacher' (no weights)")
        model = cls()
        model.load_state_dict(load_file(str(path)), strict=True)
        return model.eval().requires_grad_(False)

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        x = (x - self.shift) / self.scale
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, images: Tensor, reconstruction: Tensor) -> Tensor:
        """Mean LPIPS distance of images in [-1, 1]."""
        total = images.new_zeros(())
        for i, (a, b) in enumerate(zip(self._taps(images), self._taps(reconstruction), strict=True)):
            total = total + getattr(self, f"lin{i}").model((a - b).pow(2)).mean()
        return total


def merge_reference_weights(vgg16: dict[str, Tensor], heads: dict[str, Tensor]) -> dict[str, Tensor]:
    """One strict state dict from torchvision's VGG16 (its ``features`` up to relu5_3) and the LPIPS heads."""
    keep = {f"features.{i}.{kind}" for i in range(TAPS[-1] + 1) for kind in ("weight", "bias")}
    keep |= {f"lin{i}.model.1.weight" for i in range(len(WIDTHS))}  # not the package's ``lins.*`` aliases
    merged = {k: v for k, v in (vgg16 | heads).items() if k in keep}
    LPIPS().load_state_dict(merged, strict=True)  # names what is missing or misshapen
    return {k: v.contiguous() for k, v in merged.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Merge torchvision's VGG16 and the LPIPS heads into one file.")
    parser.add_argument("vgg16", help="torchvision's vgg16-397923af.pth")
    parser.add_argument("heads", help="the lpips package's weights/v0.1/vgg.pth")
    parser.add_argument("output", help="the safetensors file to write (tokenizer.losses.lpips_weights)")
    args = parser.parse_args(argv)
    merged = merge_reference_weights(*(torch.load(p, map_location="cpu", weights_only=True)
                                       for p in (args.vgg16, args.heads)))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    save_file(merged, str(partial))
    partial.replace(output)  # a killed run leaves no half-written weights under the real name
    print(f"wrote {args.output} ({len(merged)} tensors)")


if __name__ == "__main__":
    main()
