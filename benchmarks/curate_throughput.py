"""Curate throughput against a bare baseline measured in the same run.

Corpus: the built-in demo scenes written as WebDataset shards (``--images`` at ``--size`` px).
Baseline: one process that only decodes, resizes + centre-crops and writes a tar (no checks, hashing,
dedup, quarantine, manifest, validation). Stage: the full curation job (``run_curation``) on the same
shards. Two ratios per worker count, both per worker against the baseline (target >= 0.7x):
  end-to-end   - wall time of the whole job, including one-off costs (worker start-up, importing Great
                 Expectations, the validation run) that do not grow with the corpus;
  per-sample   - phases 1 and 2 only: the cost that does grow with the corpus.

    python benchmarks/curate_throughput.py [--images 4000] [--size 64] [--workers 1 2]
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


def stage(shards: list[str], tmp: Path, workers: int, resolution: int) -> tuple[float, float, dict]:
    cfg = parse_config({
        "data": {"sources": [{"kind": "webdataset", "name": "bench", "urls": shards}]},
        "curate": {"output_dir": str(tmp / f"out{workers}"), "work_dir": str(tmp / f"work{workers}"),
                   "metrics_path": str(tmp / f"stats{workers}.json"), "workers": workers,
                   "resolution": resolution, "samples_per_shard": 2000, "near_dup_hamming": 4},
    })
    t0 = time.perf_counter()
    outputs = run_curation(cfg.data.sources, cfg.curate, cfg.storage)
    wall = time.perf_counter() - t0
    tp = outputs.stats["throughput"]
    n = outputs.stats["inputs"]
    return n / wall, n / (tp["phase1_seconds"] + tp["phase2_seconds"]), tp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=64, help="input image side (curated to --resolution)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    tmp = Path(tempfile.mkdtemp(prefix="dualtoken-bench-"))
    try:
        shards = make_corpus(tmp / "in", args.images, args.size, per_shard=500)
        base = baseline(shards, tmp, args.resolution)
        rows = []
        for workers in args.workers:
            end_to_end, per_sample, breakdown = stage(shards, tmp, workers, args.resolution)
            rows.append({"workers": workers, "end_to_end_images_per_s": end_to_end,
                         "per_sample_images_per_s": per_sample, "breakdown": breakdown,
                         "ratio_end_to_end": end_to_end / workers / base,
                         "ratio_per_sample": per_sample / workers / base})
        print(f"\n{args.images} demo images {args.size}px -> {args.resolution}px, {os.cpu_count()} CPUs")
        print(f"baseline (decode + resize + tar write, 1 process): {base:.0f} images/s")
        print(f"{'workers':>8s} {'end-to-end img/s':>17s} {'ratio/worker':>13s} {'per-sample img/s':>17s} "
              f"{'ratio/worker':>13s}")
        for r in rows:
            print(f"{r['workers']:8d} {r['end_to_end_images_per_s']:17.0f} {r['ratio_end_to_end']:12.2f}x "
                  f"{r['per_sample_images_per_s']:17.0f} {r['ratio_per_sample']:12.2f}x")
        for r in rows:
            print(f"  {r['workers']} worker(s): {r['breakdown']}")
        results = Path(__file__).parent / "results"
        results.mkdir(exist_ok=True)
        (results / "curate_throughput.json").write_text(json.dumps(
            {"images": args.images, "size": args.size, "baseline_images_per_s": base, "stage": rows}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
