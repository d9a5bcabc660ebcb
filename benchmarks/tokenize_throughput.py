"""Tokenisation stage throughput against bare ``model.encode`` on preloaded tensors, same model, same run.

stage = read curated tar shards, decode PNGs (DataLoader workers), encode, write token shards, read them
back and check them, mark done: ``tokenize_slice`` exactly as the DVC stage runs it. bare = the same images
already decoded in memory, ``model.encode`` in the same batch size, nothing else. The ratio stage/bare
(images/s) says what I/O, decoding and writing cost; the target is >= 0.85.

    python benchmarks/tokenize_throughput.py [--images 2000] [--batch 128] [--workers 0 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def write_curated_corpus(root: Path, images: int, per_shard: int, size: int) -> None:
    """A corpus in the curate stage's layout (png + txt + json per key, shards.json), all in ``train``."""
    from dualtoken.data.synthetic import generate_example
    from dualtoken.data.tarstream import RollingTarWriter

    writer = RollingTarWriter(root, "train", per_shard, index=True)
    for i in range(images):
        ex = generate_example(0, i, size)
        meta = {"captions": ex.captions, "qa": ex.qa, "attributes": ex.attributes}
        writer.add_sample(ex.key, {"png": ex.png, "txt": ex.captions[0].encode(), "json": json.dumps(meta).encode()})
    writer.close()
    index = {"splits": {"train": writer.shards, "val": [], "test": []},
             "counts": {"train": images, "val": 0, "test": 0}, "shards": writer.shard_table()}
    (root / "shards.json").write_text(json.dumps(index))


def main() -> None:
    from dualtoken.data.curated import read_images, to_model_input
    from dualtoken.data.tokens import TokenLayout
    from dualtoken.models.configuration import named_config
    from dualtoken.models.dualtoken import DualTokenModel
    from dualtoken.partition import WorkSlice
    from dualtoken.storage import StorageConfig
    from dualtoken.tokenization.job import Settings, ShardStore, make_plan, tokenize_slice

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = named_config(args.config)
    size = config.vision_config.image_size
    device = torch.device(args.device)
    model = DualTokenModel(config).to(device)
    tmp = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    try:
        curated = tmp / "curated"
        write_curated_corpus(curated, args.images, args.per_shard, size)
        preloaded = read_images(curated, "train", args.images).images
        with torch.no_grad():
            model.train()(to_model_input(preloaded[:256]).to(device))  # codebooks initialised from data
        model.eval()
        precision = "bf16" if device.type == "cuda" else "fp32"
        storage = StorageConfig()
        plan = make_plan(str(curated), ["train"], TokenLayout.of_model(config), storage)

        def bare() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
                for i in range(0, len(preloaded), args.batch):
                    codes = model.encode(to_model_input(preloaded[i : i + args.batch]).to(device))
                    codes.pixel.cpu(), codes.semantic.cpu()
            return len(preloaded) / (time.perf_counter() - t0)

        def stage(workers: int, run: int) -> float:
            work = tmp / f"work-{workers}-{run}"
            settings = Settings(args.batch, device, precision, loader_workers=workers, loader_prefetch=4)
            result = tokenize_slice(model, plan, ShardStore(work), WorkSlice(), {"run": run}, settings, storage)
            shutil.rmtree(work)
            return result.images / result.seconds

        bare()  # warm-up
        rates: dict[str, list[float]] = {"bare": [], **{f"stage/{w}": [] for w in args.workers}}
        for run in range(args.repeats):  # interleaved so machine noise hits every variant alike
            rates["bare"].append(bare())
            for w in args.workers:
                rates[f"stage/{w}"].append(stage(w, run))
        medians = {name: statistics.median(values) for name, values in rates.items()}
        print(f"{args.config} tokenizer (random init) on {device}, {args.images} images at {size}px in "
              f"{len(plan.tasks)} shards, batch {args.batch}, {torch.get_num_threads()} torch threads, "
              f"median of {args.repeats}")
        print(f"  bare model.encode on preloaded tensors: {medians['bare']:.0f} images/s")
        for w in args.workers:
            ratio = medians[f"stage/{w}"] / medians["bare"]
            print(f"  stage, {w} loader worker(s): {medians[f'stage/{w}']:.0f} images/s = {ratio:.2f}x bare "
                  f"({'meets' if ratio >= 0.85 else 'misses'} the 0.85x target)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
