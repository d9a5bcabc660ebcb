"""Curate throughput against a bare baseline measured in the same run.

Baseline: one process that only decodes, resizes + centre-crops and writes a tar (no checks, hashing,
dedup, quarantine, manifest, validation). Stage: the full curation job (``run_curation``) on the same
WebDataset shards. The target is stage images/s per worker >= 0.7x the baseline.

    python benchmarks/curate_throughput.py [--images 8000] [--size 128] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

from dualtoken.config import parse_config
from dualtoken.curation.job import run_curation
from dualtoken.data.synthetic import generate_example
from dualtoken.data.tarstream import RollingTarWriter, TarWriter


def make_corpus(folder: Path, images: int, size: int, per_shard: int) -> list[str]:
    writer = RollingTarWriter(folder, "input", per_shard)
    for i in range(images):
        ex = generate_example(0, i, size)
        writer.add_sample(ex.key, {"png": ex.png, "txt": ex.captions[0].encode(),
                                   "json": json.dumps({"qa": ex.qa, "attributes": ex.attributes}).encode()})
    writer.close()
    return [str(folder / s) for s in writer.shards]


def baseline(shards: list[str], out: Path, resolution: int) -> float:
    """Decode + resize + tar write, single process: the floor any curation has to pay."""
    t0 = time.perf_counter()
    n = 0
    with TarWriter(out / "baseline.tar") as writer:
        for shard in shards:
            with tarfile.open(shard) as tar:
                for member in tar:
                    if not member.name.endswith(".png"):
                        continue
                    img = Image.open(tar.extractfile(member)).convert("RGB")
                    img = ImageOps.fit(img, (resolution, resolution), method=Image.BICUBIC)
                    buf = io.BytesIO()
                    img.save(buf, format="PNG", compress_level=1)
                    writer.add(member.name, buf.getvalue())
                    n += 1
    return n / (time.perf_counter() - t0)


def stage(shards: list[str], tmp: Path, workers: int, resolution: int) -> tuple[float, dict]:
    cfg = parse_config({
        "data": {"sources": [{"kind": "webdataset", "name": "bench", "urls": shards}]},
        "curate": {"output_dir": str(tmp / f"out{workers}"), "work_dir": str(tmp / f"work{workers}"),
                   "metrics_path": str(tmp / f"stats{workers}.json"), "workers": workers,
                   "resolution": resolution, "samples_per_shard": 2000, "near_dup_hamming": 4},
    })
    t0 = time.perf_counter()
    outputs = run_curation(cfg)
    return outputs.stats["inputs"] / (time.perf_counter() - t0), outputs.stats["throughput"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--size", type=int, default=128, help="input image side (curated to --resolution)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    tmp = Path(tempfile.mkdtemp(prefix="dualtoken-bench-"))
    try:
        shards = make_corpus(tmp / "in", args.images, args.size, per_shard=500)
        base = baseline(shards, tmp, args.resolution)
        rows = [("baseline (decode+resize+tar, 1 process)", base, 1, 1.0, {})]
        for workers in args.workers:
            rate, breakdown = stage(shards, tmp, workers, args.resolution)
            rows.append((f"curate stage, {workers} worker(s)", rate, workers, rate / workers / base, breakdown))
        print(f"\n{args.images} images {args.size}px -> {args.resolution}px, {os.cpu_count()} CPUs")
        print(f"{'':44s} {'images/s':>10s} {'per worker':>11s} {'ratio':>7s}")
        for name, rate, workers, ratio, _ in rows:
            print(f"{name:44s} {rate:10.0f} {rate / workers:11.0f} {ratio:6.2f}x")
        for name, _, _, _, breakdown in rows[1:]:
            print(f"{name}: {breakdown}")
        results = Path(__file__).parent / "results"
        results.mkdir(exist_ok=True)
        (results / "curate_throughput.json").write_text(json.dumps(
            [{"name": n, "images_per_s": r, "workers": w, "ratio_per_worker": q, "breakdown": b}
             for n, r, w, q, b in rows], indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
