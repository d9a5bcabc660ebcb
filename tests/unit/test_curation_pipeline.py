"""Curation end to end on hostile inputs: every case is quarantined with the right reason, nothing lost."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from rich.console import Console

from badinputs import add_member, add_symlink, huge_png_header, jpeg_bytes, noise_png, png_bytes
from dualtoken.config import parse_config
from dualtoken.curation.job import run_curation
from dualtoken.curation.pipeline import run_phase1, run_phase2
from dualtoken.data.tarstream import iter_tar_samples
from dualtoken.partition import WorkSlice


def _phase1(cfg, **kwargs):
    """Phase 1 of a whole parsed config: its sources, curate and storage sections."""
    return run_phase1(cfg.data.sources, cfg.curate, cfg.storage, **kwargs)


def _bad_tar(path: Path) -> dict[str, str]:
    """Writes a shard full of problems; returns source key -> expected reason ('accept' for good ones)."""
    expected = {}
    good = noise_png(1)
    with tarfile.open(path, "w") as tar:
        def sample(key, reason, **parts):
            for ext, data in parts.items():
                add_member(tar, f"{key}.{ext}", data)
            expected[key] = reason

        sample("good1", "accept", png=good, txt=b"  a  red\tsquare \n")
        sample("good2", "accept", jpg=jpeg_bytes(2), txt=b"a noisy picture", json=b'{"qa": []}')
        sample("corrupt", "decode_error", jpg=b"\xff\xd8\xff\xe0" + b"garbage" * 50, txt=b"broken jpeg")
        sample("truncated", "decode_error", png=noise_png(3)[:400], txt=b"cut short")
        sample("bomb", "decompression_bomb", png=huge_png_header(), txt=b"too many pixels")
        sample("tiny", "too_small", png=png_bytes((1, 1)), txt=b"one pixel")
        sample("banner", "bad_aspect_ratio", png=png_bytes((400, 40)), txt=b"very wide banner")
        sample("empty", "caption_empty", png=noise_png(4), txt=b"   \t ")
        sample("latin1", "caption_not_utf8", png=noise_png(5), txt="caf\xe9 au lait".encode("latin-1"))
        sample("nocap", "caption_missing", png=noise_png(6))
        sample("badjson", "bad_metadata", png=noise_png(7), txt=b"fine caption", json=b"{not json")
        sample("noimage", "missing_image", txt=b"caption without image")
        sample("samepix", "duplicate_exact", png=good, txt=b"same pixels as good1")
        sample("good3", "accept", png=noise_png(8), txt=b"third good one")
        sample("good1", "duplicate_key", png=noise_png(9), txt=b"key reused later in the shard")
        add_member(tar, "../escape.png", noise_png(10))
        add_member(tar, "/abs/path.png", noise_png(11))
        add_symlink(tar, "link.png", "/etc/passwd")
    return expected


def _truncated_tar(path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add_member(tar, "t1.png", noise_png(20))
        add_member(tar, "t1.txt", b"complete sample")
        add_member(tar, "t2.png", noise_png(21))
        add_member(tar, "t2.txt", b"sample cut by truncation")
    data = buf.getvalue()
    cut = data.index(b"sample cut by truncation") + 5  # inside t2.txt: t1 is complete, t2 is not
    path.write_bytes(data[:cut])


def _folder(tmp: Path) -> Path:
    (tmp / "img").mkdir()
    (tmp / "img" / "a.png").write_bytes(noise_png(30))
    (tmp / "img" / "b.png").write_bytes(noise_png(31))
    lines = [
        json.dumps({"path": "img/a.png", "caption": "a folder image", "metadata": {"licence": "cc0"}}).encode(),
        json.dumps({"path": "img/missing.png", "caption": "gone"}).encode(),
        b"{this is not json",
        b'{"path": "img/b.png", "caption": "caf\xe9"}',
    ]
    manifest = tmp / "captions.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    return manifest


@pytest.fixture
def corpus(tmp_path):
    expected = _bad_tar(tmp_path / "bad.tar")
    _truncated_tar(tmp_path / "trunc.tar")
    manifest = _folder(tmp_path)
    raw = {
        "data": {"sources": [
            {"kind": "webdataset", "name": "web", "urls": [str(tmp_path / "bad.tar"), str(tmp_path / "trunc.tar")]},
            {"kind": "folder", "name": "folder", "manifest": str(manifest), "rows_per_shard": 2},
        ]},
        "curate": {"output_dir": str(tmp_path / "out"), "work_dir": str(tmp_path / "work"), "workers": 1,
                   "min_side": 8, "near_dup_hamming": -1},
    }
    return tmp_path, raw, expected


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects" / "rejects.jsonl").read_text().splitlines()]


def test_every_bad_input_is_quarantined_with_its_reason(corpus):
    tmp, raw, expected = corpus
    cfg = parse_config(raw)
    result = run_phase2(cfg.curate, _phase1(cfg))
    rejects = _rejects(tmp / "out")
    by_key = {}
    for r in rejects:
        by_key.setdefault((r["source"], r["source_key"]), []).append(r["reason"])
    for key, reason in expected.items():
        if reason == "accept":
            continue
        assert reason in by_key.get(("web", key), []), (key, reason, by_key.get(("web", key)))
    assert by_key[("web", "../escape.png")] == ["unsafe_member_path"]
    assert by_key[("web", "/abs/path.png")] == ["unsafe_member_path"]
    assert by_key[("web", "link.png")] == ["non_regular_member"]
    assert by_key[("web", "t2")] == ["container_truncated"]  # the sample the archive broke in
    folder = sorted(r["reason"] for r in rejects if r["source"] == "folder")
    assert folder == ["bad_manifest_row", "caption_not_utf8", "missing_image"]

    accepted = {(row["source"], row["source_key"]) for row in result.manifest_rows}
    assert accepted == {("web", "good1"), ("web", "good2"), ("web", "good3"), ("web", "t1"), ("folder", "000000000")}
    stats = result.stats
    assert stats["inputs"] == stats["accepted"] + stats["rejected"] == len(rejects) + len(result.manifest_rows)
    assert stats["rejected_by_reason"]["unsafe_member_path"] == 2


def test_quarantine_keeps_original_bytes_and_nothing_escapes(corpus):
    tmp, raw, _ = corpus
    cfg = parse_config(raw)
    run_phase2(cfg.curate, _phase1(cfg))
    rejects = {r["tar_key"]: r for r in _rejects(tmp / "out")}
    stored = {}
    for shard in sorted((tmp / "out" / "rejects").glob("rejects-*.tar")):
        with open(shard, "rb") as handle:
            for s in iter_tar_samples(handle, 2**30):
                stored[s.key] = s.parts
    corrupt = next(k for k, r in rejects.items() if r["source_key"] == "corrupt")
    assert stored[corrupt]["jpg"] == b"\xff\xd8\xff\xe0" + b"garbage" * 50
    escape = next(k for k, r in rejects.items() if r["source_key"] == "../escape.png")
    assert stored[escape]["bin"] == noise_png(10)
    assert not (tmp / "escape.png").exists() and not (tmp.parent / "escape.png").exists()
    written = {p.relative_to(tmp).as_posix() for p in tmp.rglob("*")}
    assert all(not name.startswith("..") for name in written)


def test_output_shards_are_valid_webdataset(corpus):
    tmp, raw, _ = corpus
    cfg = parse_config(raw)
    result = run_phase2(cfg.curate, _phase1(cfg))
    urls = sorted(str(p) for p in (tmp / "out").glob("*-*.tar") if p.parent.name == "out")
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == len(result.manifest_rows)
    for s in samples:
        assert s["png"].size == (64, 64)
        meta = s["json"]
        assert meta["key"] == s["__key__"] and s["txt"] == meta["captions"][0]
    good1 = next(s for s in samples if s["json"]["source_key"] == "good1")
    assert good1["txt"] == "a red square"  # whitespace normalised


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _dvc_hash(folder: Path) -> str:
    """The hash DVC gives a directory output (what decides whether downstream stages rerun)."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    _, _, tree = build(HashFileDB(fs, str(folder.parent / f"{folder.name}.odb")), str(folder), fs, "md5")
    return tree.hash_info.value


def test_fresh_runs_and_worker_counts_give_one_dvc_hash(tmp_path):
    """The whole curate job (shards, manifest, validation record, preview, shard index) twice from scratch,
    with 1 and 2 workers: byte-identical outputs, so DVC sees one corpus and reruns nothing downstream."""
    base = {"data": {"sources": [{"kind": "demo", "name": "shapes", "num_images": 120, "images_per_shard": 30},
                                 {"kind": "mnist", "name": "mnist", "num_images": 40, "images_per_shard": 20}]},
            "curate": {"samples_per_shard": 50, "validation": {"split_tolerance": 0.1}}}
    digests, hashes = [], []
    for run, workers in enumerate((1, 2)):
        raw = {**base, "curate": {**base["curate"], "workers": workers, "output_dir": str(tmp_path / f"o{run}"),
                                  "work_dir": str(tmp_path / f"w{run}"),
                                  "metrics_path": str(tmp_path / f"m{run}.json")}}
        cfg = parse_config(raw)
        run_curation(cfg.data.sources, cfg.curate, cfg.storage, Console(file=io.StringIO()))
        digests.append(_digests(tmp_path / f"o{run}"))
        hashes.append(_dvc_hash(tmp_path / f"o{run}"))
    assert digests[0] == digests[1]
    assert {"validation.json", "manifest.parquet", "preview.png", "shards.json"} <= set(digests[0])
    assert any(k.startswith("train-") for k in digests[0])
    assert hashes[0] == hashes[1]


def test_resume_after_kill_redoes_only_unfinished_units(tmp_path):
    raw = {"data": {"sources": [{"kind": "demo", "name": "shapes", "num_images": 90, "images_per_shard": 30}]},
           "curate": {"workers": 1, "output_dir": str(tmp_path / "out"), "work_dir": str(tmp_path / "work")}}
    cfg = parse_config(raw)

    class Killed(Exception):
        pass

    def die_after_first(summary, done, total):
        raise Killed

    with pytest.raises(Killed):
        _phase1(cfg, progress=die_after_first)
    assert len(list((tmp_path / "work" / "units").glob("*.done"))) == 1
    units = _phase1(cfg)
    assert [s.reused for _, s in units] == [True, False, False]
    run_phase2(cfg.curate, units)
    again = _phase1(cfg)
    assert all(s.reused for _, s in again)

    changed = parse_config({**raw, "curate": {**raw["curate"], "resolution": 32}})
    assert not any(s.reused for _, s in _phase1(changed))  # rules changed: stale work is redone


def test_array_slices_share_the_work_and_the_whole_run_reuses_it(tmp_path):
    """What an array job does: each task curates its slice of the input shards (any order, any host sharing the
    work folder); the stage then finds every shard done and only decides and writes."""
    raw = {"data": {"sources": [{"kind": "demo", "name": "shapes", "num_images": 150, "images_per_shard": 30}]},
           "curate": {"workers": 1, "output_dir": str(tmp_path / "out"), "work_dir": str(tmp_path / "work")}}
    cfg = parse_config(raw)
    second = _phase1(cfg, part=WorkSlice(1, 2))
    first = _phase1(cfg, part=WorkSlice(0, 2))
    assert [len(first), len(second)] == [3, 2] and not any(s.reused for _, s in first + second)
    assert {s.unit_id for _, s in first}.isdisjoint(s.unit_id for _, s in second)
    whole = _phase1(cfg)
    assert len(whole) == 5 and all(s.reused for _, s in whole)
    sliced = run_phase2(cfg.curate, whole)
    fresh = parse_config({**raw, "curate": {**raw["curate"], "output_dir": str(tmp_path / "o2"),
                                            "work_dir": str(tmp_path / "w2")}})
    alone = run_phase2(fresh.curate, _phase1(fresh)).stats
    assert sliced.stats["units"] == {"total": 5, "reused": 5} and alone["units"] == {"total": 5, "reused": 0}
    assert {**alone, "units": None} == {**sliced.stats, "units": None}
    assert _digests(tmp_path / "out") == _digests(tmp_path / "o2")  # same bytes as one process doing it all


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_folder_manifest_slices_keep_row_numbers(tmp_path, fmt):
    (tmp_path / "img").mkdir()
    rows = [(f"img/{i}.png", f"picture number {i}") for i in range(7)]
    for i, (rel, _) in enumerate(rows):
        if i != 4:  # row 4 points at a missing file
            (tmp_path / rel).write_bytes(noise_png(100 + i))
    if fmt == "jsonl":
        text = "\n\n".join(json.dumps({"path": p, "caption": c}) for p, c in rows) + "\n"  # blank lines skipped
    else:
        text = "path,caption,metadata\n" + "".join(f'{p},{c},"{{""n"": {i}}}"\n' for i, (p, c) in enumerate(rows))
    (tmp_path / f"m.{fmt}").write_text(text)
    cfg = parse_config({"data": {"sources": [{"kind": "folder", "name": "f", "manifest": str(tmp_path / f"m.{fmt}"),
                                              "rows_per_shard": 3}]},
                        "curate": {"output_dir": str(tmp_path / "o"), "work_dir": str(tmp_path / "w"),
                                   "workers": 2, "near_dup_hamming": -1}})
    units = _phase1(cfg)
    assert [(s.inputs) for _, s in units] == [3, 3, 1]
    result = run_phase2(cfg.curate, units)
    accepted = sorted(r["source_key"] for r in result.manifest_rows)
    assert accepted == [f"{i:09d}" for i in range(7) if i != 4]
    assert [(r["source_key"], r["reason"]) for r in _rejects(tmp_path / "o")] == [("000000004", "missing_image")]
    captions = {r["source_key"]: r["caption"] for r in result.manifest_rows}
    assert captions["000000005"] == "picture number 5"  # row numbers line up with content


def test_progress_without_a_terminal_is_plain_lines_as_it_goes(tmp_path):
    """A batch log (no TTY) gets a line per shard at this size, the count and rate in each; a terminal, a bar."""
    from dualtoken.curation.job import curate_inputs

    raw = {"data": {"sources": [{"kind": "demo", "name": "shapes", "num_images": 90, "images_per_shard": 30}]},
           "curate": {"workers": 1, "output_dir": str(tmp_path / "out"), "work_dir": str(tmp_path / "work")}}
    cfg = parse_config(raw)
    log = io.StringIO()
    curate_inputs(cfg.data.sources, cfg.curate, cfg.storage, Console(file=log, force_terminal=False))
    lines = [line for line in log.getvalue().splitlines() if line.startswith("[curate] input shards: ")]
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("img/s" in line for line in lines)
