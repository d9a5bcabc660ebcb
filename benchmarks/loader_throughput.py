"""The curated-shard training loader against a bare loop, same shards, same run: images/s.

bare = one process reads each shard front to back (our ustar reader) and decodes every image with PIL into a
uint8 array: the least work that gets the pixels. loader = ``StreamLoader`` exactly as the trainers use it
(one stream, shuffle buffer 1,000, pieces of 64 read through the offset index, batches of 32 stacked in the
main process) with 0, 1 or 2 DataLoader workers, timed over its second epoch (steady state; the time to the
first batch, worker start-up included, is printed apart). Ratio = loader / (bare x max(workers, 1)),
i.e. per decoding process; the target is >= 0.9 at 1 worker. Two corpora: 64 px PNG (the demo) and 384 px
JPEG (the paper's resolution), whose scenes repeat (4,000 and 128 rendered, under distinct keys). Paired
measurements: each loader run comes right after a bare run of its own, the ratio is taken per pair and the
median over repeats is reported, because on these shared 2-vCPU machines the speed of both drifts by up to 2x
within a minute (a ratio of medians taken minutes apart measured that drift, not the loader). The last line is
one JSON object of the ratios.

    python benchmarks/loader_throughput.py [--images 20000] [--large-images 2048] [--workers 0 1 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def bare(urls: list[str]) -> float:
    from PIL import Image

    from dualtoken.data.curated import IMAGE_EXTENSIONS
    from dualtoken.data.tarstream import iter_shard_samples

    t0, n = time.perf_counter(), 0
    for url in urls:
        with open(url, "rb") as handle:
            for _, parts in iter_shard_samples(handle, url):
                data = next(parts[e] for e in IMAGE_EXTENSIONS if e in parts)
                with Image.open(io.BytesIO(data)) as image:
                    np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
                n += 1
    return n / (time.perf_counter() - t0)


def loader(root: Path, workers: int, batch: int = 32) -> tuple[float, float]:
    """(images/s over the second epoch, seconds to the first batch): steady state, and start-up apart."""
    from dualtoken.data.curated import CuratedDecoder
    from dualtoken.data.loader import LoaderSettings, StreamLoader, StreamSpec
    from dualtoken.data.shards import split_shards
    from dualtoken.data.stream import StreamOrder

    shards = split_shards(root, "train")
    order = StreamOrder([s.samples for s in shards], 1, 0, 1000)
    stream = StreamLoader(shards, CuratedDecoder(), [StreamSpec("train", order, 0)],
                          LoaderSettings(workers=workers, prefetch=2))
    steps = order.total // batch
    with stream:
        t0 = time.perf_counter()
        stream.take("train", batch)
        startup = time.perf_counter() - t0
        for _ in range(steps - 1):  # the rest of the first epoch: workers started, window filled
            stream.take("train", batch)
        t0 = time.perf_counter()
        for _ in range(steps):
            stream.take("train", batch)
        return steps * batch / (time.perf_counter() - t0), startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000, help="64 px PNG corpus size")
    parser.add_argument("--large-images", type=int, default=2048, help="384 px JPEG corpus size")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from tiny import write_curated_corpus

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        corpora = {
            "png64": write_curated_corpus(Path(tmp) / "png64", {"train": _shards(args.images, 1000)}, size=64,
                                          distinct=4000),
            "jpeg384": write_curated_corpus(Path(tmp) / "jpeg384", {"train": _shards(args.large_images, 128)},
                                            size=384, image="jpg", distinct=128),
        }
        for name, root in corpora.items():
            urls = [str(p) for p in sorted(root.glob("train-*.tar"))]
            bare(urls)  # warm the page cache
            rates: dict[str, list[float]] = {"bare": [], **{f"w{w}": [] for w in args.workers}}
            ratios: dict[str, list[float]] = {f"w{w}": [] for w in args.workers}
            startup: dict[str, list[float]] = {f"w{w}": [] for w in args.workers}
            for _ in range(args.repeats):
                for w in args.workers:  # each loader run paired with a bare run just before it
                    base = bare(urls)
                    rate, first = loader(root, w)
                    rates["bare"].append(base)
                    rates[f"w{w}"].append(rate)
                    ratios[f"w{w}"].append(rate / (base * max(w, 1)))
                    startup[f"w{w}"].append(first)
            medians = {k: statistics.median(v) for k, v in rates.items()}
            print(f"{name}: bare PIL loop {medians['bare']:.0f} images/s")
            results[name] = {}
            for w in args.workers:
                ratio = statistics.median(ratios[f"w{w}"])
                results[name][f"workers_{w}"] = round(ratio, 3)
                print(f"  loader, {w} worker(s): {medians[f'w{w}']:.0f} images/s = {ratio:.2f}x bare per decoding "
                      f"process" + (" (target >= 0.9)" if w == 1 else "")
                      + f"; first batch after {statistics.median(startup[f'w{w}']):.2f} s")
    print(json.dumps({f"{name}_{k}": v for name, r in results.items() for k, v in r.items()}))


def _shards(total: int, per: int) -> list[int]:
    return [min(per, total - start) for start in range(0, total, per)]


if __name__ == "__main__":
    main()
