"""``DualTokenModel.encode`` against the bare SigLIP vision tower forward, same weights, same batch.

encode = tower up to the semantic tap + attention projections + two residual quantizers (chunked search);
the baseline is the full tower forward with its pooling head. Ratio > 1 is overhead.

    python benchmarks/encode_overhead.py [--config demo] [--batch 64] [--repeats 5]
    python benchmarks/encode_overhead.py --config so400m-patch14-384 --batch 2 --repeats 2   # paper scale
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per function, alternating them so machine noise hits both alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    from dualtoken.models.configuration import named_config
    from dualtoken.models.dualtoken import DualTokenModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = named_config(args.config)
    model = DualTokenModel(config).to(args.device).eval()
    size = config.vision_config.image_size
    images = torch.randn(args.batch, 3, size, size, device=args.device)
    with torch.no_grad():
        model.train()(images[: max(1, args.batch // 2)])  # initialise the codebooks from data, as training does
        model.eval()

        def sync() -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        medians = interleaved_medians({"tower": lambda: (model.vision(images), sync()),
                                       "encode": lambda: (model.encode(images), sync())}, args.repeats)
    tower, encode = medians["tower"], medians["encode"]
    print(f"{args.config}: batch {args.batch} at {size}px on {args.device}, "
          f"{config.grid_size}x{config.grid_size} tokens, taps {config.layer_pixel}/{config.layer_semantic} "
          f"of {config.vision_config.num_hidden_layers} layers")
    print(f"  vision tower forward {tower * 1000:9.1f} ms  ({args.batch / tower:8.1f} images/s)")
    print(f"  encode               {encode * 1000:9.1f} ms  ({args.batch / encode:8.1f} images/s)")
    print(f"  encode / tower: {encode / tower:.3f}x  (overhead {100 * (encode / tower - 1):+.1f}%)")


if __name__ == "__main__":
    main()
