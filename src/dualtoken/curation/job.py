"""The whole curation job: phases 1 and 2, manifest, Great Expectations validation, preview, stats.

Everything is written under ``curate.output_dir`` (plus the stats JSON at ``curate.metrics_path``) with
atomic renames, and the validation verdict is applied only after all reports exist, so a failing run
still leaves the evidence behind.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dualtoken.curation.config import CurateConfig
from dualtoken.curation.pipeline import SPLITS, UnitSummary, run_phase1, run_phase2
from dualtoken.data.config import Source
from dualtoken.data.sources import InputShard
from dualtoken.errors import DualtokenError
from dualtoken.partition import WorkSlice
from dualtoken.storage import StorageConfig, atomic_write, publish_dir

MANIFEST_COLUMNS = ["key", "split", "shard", "width", "height", "pixel_sha256", "phash", "caption",
                    "caption_chars", "n_captions", "n_qa", "source", "source_key"]


class ValidationFailed(DualtokenError, RuntimeError):
    """The curated manifest failed its Great Expectations suite; the message is the readable summary."""


@dataclass
class CurateOutputs:
    output_dir: Path
    manifest: Path
    validation: Path
    preview: Path
    stats_path: Path
    stats: dict
    manifest_frame: pd.DataFrame
    published: list[str]
    input_digests: dict[str, tuple[str, str]]  # source name -> (location, digest of its input shards)


def _clear_previous_outputs(out: Path) -> None:
    """Stale shards from an earlier, larger run would otherwise be picked up by readers."""
    for pattern in ("train-*.tar", "val-*.tar", "test-*.tar"):
        for path in out.glob(pattern):
            path.unlink()
    shutil.rmtree(out / "rejects", ignore_errors=True)


def preview_grid(pngs: list[bytes], columns: int = 8, gutter: int = 2) -> Image.Image:
    tiles = [Image.open(io.BytesIO(b)).convert("RGB") for b in pngs]
    if not tiles:
        return Image.new("RGB", (64, 64), (255, 255, 255))
    w, h = tiles[0].size
    rows = math.ceil(len(tiles) / columns)
    cols = min(columns, len(tiles))
    grid = Image.new("RGB", (cols * (w + gutter) + gutter, rows * (h + gutter) + gutter), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, (gutter + (i % columns) * (w + gutter), gutter + (i // columns) * (h + gutter)))
    return grid


def _prefetch(module: str) -> None:
    """Import a slow module on a background thread while phase 1 runs in worker processes.

    Only worth it with a core to spare: in-process, the import would hold the GIL against phase 1.
    """
    threading.Thread(target=importlib.import_module, args=(module,), daemon=True).start()


PLAIN_STEPS = 20  # without a terminal: a progress line every 1/PLAIN_STEPS of the shards, and at the end


def curate_inputs(sources: Sequence[Source], curate: CurateConfig, storage: StorageConfig, console: Console,
                  part: WorkSlice | None = None) -> list[tuple[InputShard, UnitSummary]]:
    """Phase 1 (per input shard, resumable) for ``part`` of the inputs, with a progress bar on a terminal and
    plain lines in a batch log (where a live bar would print nothing until the end). On its own it is one array
    task's share of a run; the whole run reuses what the tasks left in ``curate.work_dir``."""
    part = part or WorkSlice()
    t0 = time.perf_counter()
    label = "input shards" if part.whole else f"input shards ({part})"
    done_images = 0

    def rate(summary: UnitSummary) -> str:
        nonlocal done_images
        done_images += 0 if summary.reused else summary.inputs
        return f"{done_images / max(time.perf_counter() - t0, 1e-9):,.0f} img/s"

    if not console.is_terminal:
        def log_line(summary: UnitSummary, done: int, total: int) -> None:
            speed = rate(summary)
            if done == total or done % max(1, math.ceil(total / PLAIN_STEPS)) == 0:
                console.print(f"\\[curate] {label}: {done}/{total} ({speed}, {time.perf_counter() - t0:.0f} s)")

        return run_phase1(sources, curate, storage, progress=log_line, part=part)
    with Progress(TextColumn("[bold]curate[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(label, total=None, rate="")

        def on_unit(summary: UnitSummary, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, rate=rate(summary))

        return run_phase1(sources, curate, storage, progress=on_unit, part=part)


def run_curation(sources: Sequence[Source], curate: CurateConfig, storage: StorageConfig,
                 console: Console | None = None) -> CurateOutputs:
    console = console or Console(stderr=True, soft_wrap=True)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if curate.workers > 1 and (os.cpu_count() or 1) > curate.workers:
        _prefetch("great_expectations")  # a spare core: overlap the import with phase 1
    from dualtoken.curation.validate import validate_manifest

    out = Path(curate.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_outputs(out)
    t0 = time.perf_counter()
    units = curate_inputs(sources, curate, storage, console)
    t1 = time.perf_counter()
    console.print(f"curate: phase 1 done ({sum(s.inputs for _, s in units)} inputs, "
                  f"{sum(s.reused for _, s in units)}/{len(units)} input shards reused) in {t1 - t0:.1f}s; "
                  "deduplicating and writing shards")
    result = run_phase2(curate, units)
    t2 = time.perf_counter()

    frame = pd.DataFrame(result.manifest_rows, columns=MANIFEST_COLUMNS)
    with atomic_write(out / "manifest.parquet") as handle:
        frame.to_parquet(handle, index=False)
    rules = curate.validation
    outcome = validate_manifest(
        frame, resolution=curate.resolution, split_fractions=curate.split.as_dict(),
        split_tolerance=rules.split_tolerance, min_rows=rules.min_rows, max_rows=rules.max_rows,
        caption_min_chars=curate.caption.min_chars, caption_max_chars=curate.caption.max_chars)
    with atomic_write(out / "validation.json", "w") as handle:
        json.dump(outcome.result, handle, indent=1, default=str)
    with atomic_write(out / "preview.png") as handle:
        preview_grid(result.preview).save(handle, format="PNG")
    t3 = time.perf_counter()

    stats = dict(result.stats)
    processed = sum(s.inputs for _, s in units if not s.reused)
    stats["validation"] = {"success": outcome.success, "summary": outcome.summary}
    stats["throughput"] = {
        "workers": curate.workers,
        "phase1_seconds": round(t1 - t0, 3),
        "phase2_seconds": round(t2 - t1, 3),
        "validation_seconds": round(t3 - t2, 3),
        "total_seconds": round(t3 - t0, 3),
        "phase1_images_per_s": round(processed / max(t1 - t0, 1e-9), 1),
        "images_per_s": round(stats["inputs"] / max(t3 - t0, 1e-9), 1),
    }
    with atomic_write(out / "shards.json", "w") as handle:
        json.dump({"splits": {s: stats["shards_by_split"][s] for s in SPLITS},
                   "counts": stats["accepted_by_split"], "shards": stats.pop("shards")}, handle, indent=1)
    stats_path = Path(curate.metrics_path)
    with atomic_write(stats_path, "w") as handle:
        json.dump(stats, handle, indent=1, sort_keys=True)

    if not outcome.success:
        raise ValidationFailed(f"curated manifest failed validation (full result: {out / 'validation.json'}):\n"
                               f"{outcome.summary}")
    published = publish_dir(out, curate.publish_uri, storage) if curate.publish_uri else []
    return CurateOutputs(out, out / "manifest.parquet", out / "validation.json", out / "preview.png",
                         stats_path, stats, frame, published, _input_digests(sources, units))


def _input_digests(sources: Sequence[Source], units: list) -> dict[str, tuple[str, str]]:
    by_source: dict[str, list[str]] = {}
    for shard, _ in units:
        by_source.setdefault(shard.source, []).append(f"{shard.uri}|{shard.start}|{shard.stop}|{shard.identity}")
    out = {}
    for src in sources:
        digest = hashlib.sha256("\n".join(by_source.get(src.name, [])).encode()).hexdigest()[:16]
        out[src.name] = (src.location, digest)
    return out
