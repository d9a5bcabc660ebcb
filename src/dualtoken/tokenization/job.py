"""Tokenise a curated corpus shard by shard, resumably; then assemble the token corpus and account for it.

Each shard is encoded in batches (every code range-checked and counted per depth), written to
``work_dir/shards/<name>`` atomically, checked byte for byte on disk against what was written (SHA-256),
and only then marked done with a fingerprint of everything that decides its bytes: corpus, tokenizer
weights, precision, device type, batch size and library code. A rerun skips shards whose marker
matches and redoes the rest, so a kill costs at most the shards in flight. ``assemble`` links the
finished shards into the output folder with ``shards.json`` once every shard of the plan is done,
whichever processes did them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualtoken.data.curated import to_model_input
from dualtoken.data.shards import offsets_path, read_shard_index
from dualtoken.data.tarstream import TarWriter
from dualtoken.data.texts import TOP_ANSWERS, TextStats
from dualtoken.data.tokens import FORMAT, STREAMS, CorruptTokens, TokenLayout, check_range, sample_parts
from dualtoken.errors import AccountingError, DualtokenError
from dualtoken.partition import WorkSlice
from dualtoken.storage import StorageConfig, atomic_write, join_uri, save_folder_atomically
from dualtoken.tokenization.loader import shard_loader
from dualtoken.tokenization.stats import depth_histogram

MARKER = ".done.json"
HISTOGRAM = ".codes.npz"


class IncompleteTokenization(DualtokenError, RuntimeError):
    """Some shards of the plan are not done yet; the message says which and what to run."""


@dataclass(frozen=True)
class ShardTask:
    split: str
    name: str  # e.g. train-000003.tar, the same name in and out
    url: str  # the curated shard (local path or s3:// URL)


@dataclass(frozen=True)
class Plan:
    source: str
    tasks: list[ShardTask]
    counts: dict[str, int]  # curated samples per split
    layout: TokenLayout


def make_plan(source: str, splits: list[str], layout: TokenLayout, storage: StorageConfig) -> Plan:
    index = read_shard_index(source, storage)
    tasks = [ShardTask(split, name, join_uri(source, name)) for split in splits for name in index["splits"][split]]
    return Plan(source, tasks, {split: int(index["counts"][split]) for split in splits}, layout)


@dataclass(frozen=True)
class Settings:
    batch_size: int
    device: torch.device
    precision: str  # fp32 or bf16 (autocast)
    loader_workers: int = 0
    loader_prefetch: int = 2


def autocast(settings: Settings) -> contextlib.AbstractContextManager:
    return torch.autocast(settings.device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16")


def encode_batch(model: Any, images: torch.Tensor, settings: Settings, layout: TokenLayout
                 ) -> dict[str, np.ndarray]:
    """uint8 images -> codes per stream as numpy arrays in the layout's dtypes."""
    x = to_model_input(images.to(settings.device, non_blocking=True))  # uint8 over the bus, 1/4 of float
    with torch.inference_mode(), autocast(settings):
        codes = model.encode(x)
    return {s: getattr(codes, s).cpu().numpy().astype(layout.spec(s).dtype) for s in STREAMS}


@dataclass
class ShardRecord:
    """What the completion marker of a shard says."""

    name: str
    split: str
    samples: int
    sha256: str
    fingerprint: str
    seconds: float
    texts: dict[str, Any]  # TextStats of the shard's samples

    @classmethod
    def read(cls, path: Path) -> ShardRecord:
        return cls(**json.loads(path.read_text()))


class ShardStore:
    """The work folder: finished shards, their markers and code histograms."""

    def __init__(self, work_dir: str | Path) -> None:
        self.root = Path(work_dir) / "shards"
        self.root.mkdir(parents=True, exist_ok=True)

    def tar(self, name: str) -> Path:
        return self.root / name

    def marker(self, name: str) -> Path:
        return self.root / f"{name}{MARKER}"

    def histogram(self, name: str) -> Path:
        return self.root / f"{name}{HISTOGRAM}"

    def finished(self, name: str, fingerprint: str) -> ShardRecord | None:
        marker = self.marker(name)
        if not (marker.is_file() and self.tar(name).is_file() and offsets_path(self.tar(name)).is_file()
                and self.histogram(name).is_file()):
            return None
        try:
            record = ShardRecord.read(marker)
        except (ValueError, TypeError):  # unreadable, or written by a version with other fields: redo it
            return None
        return record if record.fingerprint == fingerprint else None

    def histograms(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.histogram(name), allow_pickle=False) as saved:
            return {s: saved[s] for s in STREAMS}

    def remove_leftovers(self, name: str) -> None:
        """Temporary files of a writer that was killed (atomic writes leave ``.<name>.*.tmp``)."""
        for leftover in self.root.glob(f".{name}*.tmp"):
            leftover.unlink(missing_ok=True)

    def complete(self, shard: OpenShard, fingerprint: str) -> ShardRecord:
        """Close the shard, check the file on disk is byte for byte what was written, then mark it done."""
        shard.writer.close()
        path, written = self.tar(shard.task.name), shard.writer.sha256
        on_disk = _sha256(path)
        if on_disk != written:
            raise CorruptTokens(f"{path}: the file on disk (sha256 {on_disk[:12]}) is not what was written "
                                f"({written[:12]}): check the disk, then rerun")
        with atomic_write(self.histogram(shard.task.name)) as handle:
            np.savez(handle, **shard.histograms)
        record = ShardRecord(shard.task.name, shard.task.split, len(shard.keys), written, fingerprint,
                             round(time.perf_counter() - shard.started, 3), shard.texts.to_dict())
        with atomic_write(self.marker(shard.task.name), "w") as handle:  # the marker last: it vouches for the rest
            json.dump(record.__dict__, handle, indent=1)
        return record


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_fingerprint(identity: dict[str, Any], task: ShardTask) -> str:
    payload = json.dumps({**identity, "shard": task.name, "split": task.split}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class SliceResult:
    images: int = 0  # encoded by this call
    seconds: float = 0.0
    tokenized: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)  # already done with the same fingerprint

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.images and self.seconds > 0 else None


class OpenShard:
    """A shard being written: its tar writer, the keys so far and the code counts per depth."""

    def __init__(self, task: ShardTask, path: Path, layout: TokenLayout) -> None:
        self.task, self.layout, self.writer = task, layout, TarWriter(path, index=True)
        self.keys: list[str] = []
        self.texts = TextStats()
        self.histograms = {s: np.zeros((layout.spec(s).depth, layout.spec(s).codebook_size), np.int64)
                           for s in STREAMS}
        self.started = time.perf_counter()

    def add(self, keys: list[str], codes: dict[str, np.ndarray], carried: list[dict[str, bytes]]) -> None:
        """A batch: codes per stream (B, h, w, depth), range-checked and counted before they are written."""
        for stream in STREAMS:
            spec = self.layout.spec(stream)
            check_range(codes[stream], spec, f"{self.task.name}: {stream} codes of {keys[0]!r}...")
            flat = codes[stream].reshape(-1, spec.depth).astype(np.int64)
            self.histograms[stream] += depth_histogram(flat, spec.codebook_size)
        for i, key in enumerate(keys):
            self.writer.add_sample(key, sample_parts(codes["pixel"][i], codes["semantic"][i], carried[i]))
            self.keys.append(key)
            self.texts.add(json.loads(carried[i]["json"]))


def tokenize_slice(model: Any, plan: Plan, store: ShardStore, work: WorkSlice, identity: dict[str, Any],
                   settings: Settings, storage: StorageConfig,
                   on_shard: Callable[[ShardRecord, int, int], None] | None = None) -> SliceResult:
    """Encode and write this slice's unfinished shards; ``on_shard(record, done, total)`` after each."""
    mine = work.take(plan.tasks)
    result = SliceResult()
    todo = []
    for task in mine:
        if store.finished(task.name, shard_fingerprint(identity, task)) is not None:
            result.resumed.append(task.name)
        else:
            store.remove_leftovers(task.name)
            todo.append(task)
    if not todo:
        return result
    by_name = {task.name: task for task in todo}
    loader = shard_loader([(t.name, t.url) for t in todo], settings.batch_size, storage, settings.loader_workers,
                          settings.loader_prefetch, pin_memory=settings.device.type == "cuda")
    open_shards: dict[str, OpenShard] = {}
    model.eval()
    t0 = time.perf_counter()
    try:
        for batch in loader:
            shard = open_shards.get(batch.shard)
            if shard is None:
                task = by_name[batch.shard]
                shard = open_shards[batch.shard] = OpenShard(task, store.tar(task.name), plan.layout)
            if batch.keys:
                shard.add(batch.keys, encode_batch(model, batch.images, settings, plan.layout), batch.carried)
                result.images += len(batch.keys)
            if batch.last:
                del open_shards[batch.shard]
                record = store.complete(shard, shard_fingerprint(identity, shard.task))
                result.tokenized.append(record.name)
                if on_shard is not None:
                    on_shard(record, len(result.tokenized) + len(result.resumed), len(mine))
    finally:
        for shard in open_shards.values():  # an error stopped us: no half-written shard stays behind
            shard.writer.close(ok=False)
    result.seconds = time.perf_counter() - t0
    return result


@dataclass
class TokenCorpus:
    """The assembled output: what was written, per split, and its code histograms."""

    root: Path
    counts: dict[str, int]
    records: list[ShardRecord]
    histograms: dict[str, np.ndarray]  # stream -> (depth, codebook size) counts over every sample
    index: dict[str, Any]


def assemble(plan: Plan, store: ShardStore, identity: dict[str, Any], output_dir: str | Path,
             provenance: dict[str, Any]) -> TokenCorpus:
    """Link every finished shard into ``output_dir`` with its index; needs the whole plan done."""
    records, missing = [], []
    for task in plan.tasks:
        record = store.finished(task.name, shard_fingerprint(identity, task))
        if record is None:
            missing.append(task.name)
        else:
            records.append(record)
    if missing:
        raise IncompleteTokenization(
            f"{len(missing)} of {len(plan.tasks)} shards are not tokenised yet ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}): run the remaining slices, then finalise again")
    counts = {split: sum(r.samples for r in records if r.split == split) for split in plan.counts}
    wrong = {s: (plan.counts[s], counts[s]) for s in plan.counts if plan.counts[s] != counts[s]}
    if wrong:
        raise AccountingError("samples in != out per split: " + ", ".join(
            f"{s}: {a} curated, {b} tokenised" for s, (a, b) in wrong.items()))
    histograms = {s: np.zeros((plan.layout.spec(s).depth, plan.layout.spec(s).codebook_size), np.int64)
                  for s in STREAMS}
    for record in records:
        for stream, counts_of_record in store.histograms(record.name).items():
            histograms[stream] += counts_of_record
    texts = {split: TextStats() for split in plan.counts}
    for record in records:
        texts[record.split] = texts[record.split].merge(TextStats.from_dict(record.texts))
    index = {"format": FORMAT, "layout": plan.layout.to_dict(),
             "splits": {split: [r.name for r in records if r.split == split] for split in plan.counts},
             "counts": counts, "shards": {r.name: {"samples": r.samples, "sha256": r.sha256} for r in records},
             "texts": {split: stats.to_dict(top=TOP_ANSWERS) for split, stats in texts.items()}, **provenance}

    def fill(folder: Path) -> None:
        for record in records:
            _link_or_copy(store.tar(record.name), folder / record.name)
            _link_or_copy(offsets_path(store.tar(record.name)), offsets_path(folder / record.name))
        with atomic_write(folder / "shards.json", "w") as handle:
            json.dump(index, handle, indent=1)
            handle.write("\n")

    root = save_folder_atomically(output_dir, fill)
    return TokenCorpus(root, counts, records, histograms, index)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link costs nothing; across file systems fall back to a copy."""
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
