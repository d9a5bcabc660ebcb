"""Curation in two phases, datatrove style.

Phase 1 (parallel, resumable): each input shard is decoded, checked and normalised by one worker, which
writes a staging blob (curated PNGs and original bytes, back to back) and a record file pointing into it,
then a ``.done`` marker holding a fingerprint of its input and rules. A rerun skips every unit whose
marker still matches. The blob has no per-member headers to build or parse: phase 2 reads slices.

Phase 2 (one process, I/O bound): decisions that need the whole corpus - duplicate keys, exact and
near duplicates, the split - then the staged samples are streamed into per-split WebDataset shards and
the rejects into quarantine. Every input ends up in exactly one of the two; the books are checked.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dualtoken.curation.config import CurateConfig
from dualtoken.curation.phash import hamming, near_duplicates
from dualtoken.curation.rules import Curated, Rejected, curate_sample
from dualtoken.curation.split import assign_split
from dualtoken.data.config import Source
from dualtoken.data.sources import InputShard, iter_shard, plan_shards, unit_fingerprint
from dualtoken.data.tarstream import RollingTarWriter
from dualtoken.errors import AccountingError
from dualtoken.partition import WorkSlice
from dualtoken.storage import StorageConfig, atomic_write

SPLITS = ("train", "val", "test")
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class UnitSummary:
    unit_id: str
    source: str
    inputs: int
    accepted: int
    rejected: int
    seconds: float
    reused: bool


@dataclass
class CurationResult:
    stats: dict
    manifest_rows: list[dict]
    preview: list[bytes] = field(repr=False)


# ------------------------------------------------------------------------------------------- phase 1
def _rules_fingerprint(cfg: CurateConfig) -> dict:
    keep = ("resolution", "min_side", "max_pixels", "max_file_mb", "max_aspect_ratio", "caption", "phash_size")
    return {"version": 1, **cfg.model_dump(include=set(keep))}


def _unit_paths(work: Path, unit_id: str) -> dict[str, Path]:
    base = work / "units" / unit_id
    return {k: base.with_name(f"{unit_id}.{k}") for k in ("blob", "records.json", "done")}


class _Blob:
    """Append-only byte store; returns [offset, length] handles for the record file."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.offset = handle, 0

    def put(self, data: bytes) -> list[int]:
        self.handle.write(data)
        self.offset += len(data)
        return [self.offset - len(data), len(data)]

    def put_parts(self, parts: dict[str, bytes]) -> dict[str, list[int]]:
        return {ext: self.put(data) for ext, data in sorted(parts.items())}


def _read(handle: BinaryIO, span: list[int]) -> bytes:
    handle.seek(span[0])
    data = handle.read(span[1])
    if len(data) != span[1]:
        raise RuntimeError(f"staging blob {handle.name} is truncated: delete the unit's files and rerun")
    return data


def process_unit(shard: InputShard, src: Source, cfg: CurateConfig, storage: StorageConfig,
                 work: Path, fingerprint: str) -> UnitSummary:
    """Curate one input shard into the work folder; the ``.done`` marker is written last."""
    t0 = time.perf_counter()
    paths = _unit_paths(work, shard.unit_id)
    accepted: list[dict] = []
    rejected: list[dict] = []
    max_member = cfg.max_file_mb * 2**20
    with atomic_write(paths["blob"]) as handle:
        blob = _Blob(handle)
        for raw in iter_shard(shard, src, storage, max_member):
            result = curate_sample(raw, cfg)
            if isinstance(result, Rejected):
                rejected.append({"id": f"r{len(rejected):07d}", "source": result.source,
                                 "source_key": result.source_key, "origin": result.origin, "reason": result.reason,
                                 "detail": result.detail, "originals": blob.put_parts(result.originals)})
                continue
            record = _record(f"s{len(accepted):07d}", result)
            record["png"] = blob.put(result.png)
            record["originals"] = blob.put_parts(result.originals)
            accepted.append(record)
    with atomic_write(paths["records.json"], "w") as handle:
        handle.write(json.dumps({"accepted": accepted, "rejected": rejected}))
    summary = UnitSummary(shard.unit_id, shard.source, len(accepted) + len(rejected), len(accepted),
                          len(rejected), time.perf_counter() - t0, reused=False)
    with atomic_write(paths["done"], "w") as handle:
        handle.write(json.dumps({"fingerprint": fingerprint, **summary.__dict__}))
    return summary


def _record(sid: str, c: Curated) -> dict:
    return {"id": sid, "source": c.source, "source_key": c.source_key, "origin": c.origin,
            "pixel_sha256": c.pixel_sha256, "phash": c.phash, "captions": c.captions,
            "meta": c.meta, "original_size": list(c.original_size)}


def _reusable(paths: dict[str, Path], fingerprint: str) -> UnitSummary | None:
    try:
        done = json.loads(paths["done"].read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if done.get("fingerprint") != fingerprint or not all(paths[k].is_file() for k in ("blob", "records.json")):
        return None
    done.pop("fingerprint")
    done["reused"] = True
    return UnitSummary(**done)


def run_phase1(sources: Sequence[Source], curate: CurateConfig, storage: StorageConfig,
               progress: Callable[[UnitSummary, int, int], None] | None = None,
               part: WorkSlice | None = None) -> list[tuple[InputShard, UnitSummary]]:
    """Process every input shard of ``part`` (default: all) not already done; returns (shard, summary) in plan
    order. Slices run elsewhere (array tasks) leave their results in ``work_dir`` for the whole run to reuse."""
    work = Path(curate.work_dir)
    (work / "units").mkdir(parents=True, exist_ok=True)
    rules = _rules_fingerprint(curate)
    plan: list[tuple[InputShard, Source, str]] = []
    for src in sources:
        for shard in plan_shards(src, storage):
            plan.append((shard, src, unit_fingerprint(shard, rules)))
    plan = (part or WorkSlice()).take(plan)
    summaries: dict[str, UnitSummary] = {}
    pending = []
    for shard, src, fp in plan:
        reused = _reusable(_unit_paths(work, shard.unit_id), fp)
        if reused is not None:
            summaries[shard.unit_id] = reused
        else:
            pending.append((shard, src, fp))
    total = len(plan)
    for s in summaries.values():
        if progress:
            progress(s, len(summaries), total)
    if pending:
        workers = min(curate.workers, len(pending))
        if workers == 1:
            for shard, src, fp in pending:
                s = process_unit(shard, src, curate, storage, work, fp)
                summaries[s.unit_id] = s
                if progress:
                    progress(s, len(summaries), total)
        else:
            ctx = multiprocessing.get_context("spawn")  # no fork: the parent may hold threads (MLflow, rich)
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = [pool.submit(process_unit, shard, src, curate, storage, work, fp)
                           for shard, src, fp in pending]
                for fut in as_completed(futures):
                    s = fut.result()
                    summaries[s.unit_id] = s
                    if progress:
                        progress(s, len(summaries), total)
    return [(shard, summaries[shard.unit_id]) for shard, _, _ in plan]


# ------------------------------------------------------------------------------------------- phase 2
def output_key(source: str, source_key: str) -> str:
    """A WebDataset-safe key (no dots or slashes); a hash suffix keeps sanitised keys distinct."""
    safe = _UNSAFE_KEY.sub("_", source_key)
    if safe != source_key:
        safe = f"{safe[:80]}_{hashlib.sha1(source_key.encode()).hexdigest()[:8]}"
    return f"{source}_{safe}"


def _decide(units: list[tuple[InputShard, dict]], near_threshold: int) -> list[tuple[str, dict, str, str]]:
    """Corpus-wide verdicts for accepted-in-phase-1 records, in input order: (unit, record, verdict, detail)."""
    flat = [(shard.unit_id, rec) for shard, records in units for rec in records["accepted"]]
    verdicts: list[tuple[str, dict, str, str]] = []
    keys_seen: dict[tuple[str, str], str] = {}
    pixels_seen: dict[str, str] = {}
    survivors: list[int] = []
    for unit_id, rec in flat:
        ident = (rec["source"], rec["source_key"])
        key = output_key(*ident)
        if ident in keys_seen:
            verdicts.append((unit_id, rec, "duplicate_key", f"key {key} first seen in {keys_seen[ident]}"))
        elif rec["pixel_sha256"] in pixels_seen:
            verdicts.append((unit_id, rec, "duplicate_exact", f"same pixels as {pixels_seen[rec['pixel_sha256']]}"))
        else:
            keys_seen[ident] = f"{unit_id}/{rec['id']}"
            pixels_seen[rec["pixel_sha256"]] = key
            verdicts.append((unit_id, rec, "accept", key))
            survivors.append(len(verdicts) - 1)
    dup_of = near_duplicates([verdicts[i][1]["phash"] for i in survivors], near_threshold)
    for pos in np.flatnonzero(dup_of >= 0):
        idx, kept = survivors[pos], verdicts[survivors[dup_of[pos]]]
        unit_id, rec, _, _ = verdicts[idx]
        distance = hamming(rec["phash"], kept[1]["phash"])
        verdicts[idx] = (unit_id, rec, "duplicate_near", f"{distance} bits from {kept[3]}")
    return verdicts


def run_phase2(curate: CurateConfig, units: list[tuple[InputShard, UnitSummary]]) -> CurationResult:
    out = Path(curate.output_dir)
    work = Path(curate.work_dir)
    loaded = [(shard, json.loads(_unit_paths(work, shard.unit_id)["records.json"].read_text()))
              for shard, _ in units]
    verdicts = _decide(loaded, curate.near_dup_hamming)
    by_unit: dict[str, list[tuple[dict, str, str]]] = {}
    for unit_id, rec, verdict, detail in verdicts:
        by_unit.setdefault(unit_id, []).append((rec, verdict, detail))

    writers = {split: RollingTarWriter(out, split, curate.samples_per_shard, index=True) for split in SPLITS}
    quarantine = RollingTarWriter(out / "rejects", "rejects", curate.samples_per_shard)
    fractions = curate.split.as_dict()
    manifest: list[dict] = []
    preview: list[bytes] = []
    reasons: Counter[str] = Counter()
    rejected_by_source: Counter[str] = Counter()
    ok = False
    try:
        with atomic_write(out / "rejects" / "rejects.jsonl", "w") as log:

            def quarantine_one(entry: dict, parts: dict[str, bytes]) -> None:
                qkey = f"q{sum(reasons.values()):09d}"
                entry = {**entry, "tar": quarantine.add_sample(qkey, parts), "tar_key": qkey}
                log.write(json.dumps(entry, ensure_ascii=False) + "\n")
                reasons[entry["reason"]] += 1
                rejected_by_source[entry["source"]] += 1

            for shard, records in loaded:
                with open(_unit_paths(work, shard.unit_id)["blob"], "rb") as blob:
                    for entry in records["rejected"]:
                        spans = entry.pop("originals")
                        quarantine_one({"unit": shard.unit_id, **entry, "files": sorted(spans)},
                                       {ext: _read(blob, span) for ext, span in spans.items()})
                    for rec, verdict, detail in by_unit.get(shard.unit_id, []):
                        if verdict != "accept":
                            originals = {ext: _read(blob, span) for ext, span in rec["originals"].items()}
                            quarantine_one({"unit": shard.unit_id, "id": rec["id"], "source": rec["source"],
                                            "source_key": rec["source_key"], "origin": rec["origin"],
                                            "reason": verdict, "detail": detail, "files": sorted(originals)}, originals)
                            continue
                        key = detail
                        split = assign_split(rec["pixel_sha256"], fractions)
                        sample = {"key": key, "split": split, "source": rec["source"], "source_key": rec["source_key"],
                                  "captions": rec["captions"], **rec["meta"], "pixel_sha256": rec["pixel_sha256"],
                                  "phash": rec["phash"], "original_size": rec["original_size"]}
                        shard_name = writers[split].add_sample(key, {
                            "png": _read(blob, rec["png"]), "txt": rec["captions"][0].encode(),
                            "json": json.dumps(sample, ensure_ascii=False, sort_keys=True).encode()})
                        manifest.append({
                            "key": key, "split": split, "shard": shard_name, "width": curate.resolution,
                            "height": curate.resolution, "pixel_sha256": rec["pixel_sha256"],
                            "phash": rec["phash"], "caption": rec["captions"][0],
                            "caption_chars": len(rec["captions"][0]), "n_captions": len(rec["captions"]),
                            "n_qa": len(rec["meta"].get("qa", [])), "source": rec["source"],
                            "source_key": rec["source_key"]})
                        if split == "train" and len(preview) < curate.preview_images:
                            preview.append(_read(blob, rec["png"]))
        ok = True
    finally:
        for writer in (*writers.values(), quarantine):
            writer.close(ok=ok)

    stats = _stats(units, manifest, reasons, rejected_by_source, writers)
    return CurationResult(stats=stats, manifest_rows=manifest, preview=preview)


def _stats(units: list[tuple[InputShard, UnitSummary]], manifest: list[dict], reasons: Counter[str],
           rejected_by_source: Counter[str], writers: dict[str, RollingTarWriter]) -> dict:
    inputs_by_source: Counter[str] = Counter()
    for _, s in units:
        inputs_by_source[s.source] += s.inputs
    accepted_by_source = Counter(row["source"] for row in manifest)
    accepted_by_split = Counter(row["split"] for row in manifest)
    inputs, accepted, rejected = sum(inputs_by_source.values()), len(manifest), sum(reasons.values())
    for source, n in inputs_by_source.items():
        if n != accepted_by_source[source] + rejected_by_source[source]:
            raise AccountingError(f"source {source}: {n} inputs != {accepted_by_source[source]} accepted + "
                                  f"{rejected_by_source[source]} rejected")
    if inputs != accepted + rejected:
        raise AccountingError(f"{inputs} inputs != {accepted} accepted + {rejected} rejected")
    return {
        "inputs": inputs,
        "accepted": accepted,
        "rejected": rejected,
        "accounting_ok": True,
        "accepted_by_split": {s: accepted_by_split.get(s, 0) for s in SPLITS},
        "shards_by_split": {s: writers[s].shards for s in SPLITS},
        "shards": {name: entry for s in SPLITS for name, entry in writers[s].shard_table().items()},
        "inputs_by_source": dict(sorted(inputs_by_source.items())),
        "accepted_by_source": dict(sorted(accepted_by_source.items())),
        "rejected_by_source": dict(sorted(rejected_by_source.items())),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "units": {"total": len(units), "reused": sum(s.reused for _, s in units)},
    }
