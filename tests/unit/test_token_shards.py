"""The token shard format, the fast shard reader, the work partition and the code statistics."""

import gzip
import io
import json
import tarfile

import numpy as np
import pytest

from dualtoken.data.tarstream import TarWriter, iter_shard_samples
from dualtoken.data.tokens import (
    CodeSpec,
    CorruptTokens,
    TokenLayout,
    code_dtype,
    iter_token_samples,
    npy_bytes,
    sample_parts,
)
from dualtoken.partition import WorkSlice, slice_from_env
from dualtoken.tokenization.stats import code_statistics, ranked_fractions, write_usage_csv

LAYOUT = TokenLayout((2, 3), CodeSpec(depth=2, codebook_size=32), CodeSpec(depth=3, codebook_size=70000))


def _codes(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, LAYOUT.spec(s).codebook_size, LAYOUT.shape(s)).astype(LAYOUT.spec(s).dtype)
            for s in ("pixel", "semantic")}


def _write(path, samples: dict[str, dict[str, bytes]]) -> str:
    with TarWriter(path) as writer:
        for key, parts in samples.items():
            writer.add_sample(key, parts)
    return str(path)


def test_code_dtype_is_the_smallest_that_holds_the_codebook():
    assert code_dtype(512) == np.uint16 and code_dtype(65536) == np.uint16
    assert code_dtype(65537) == np.int32 and LAYOUT.semantic.dtype == np.int32
    assert TokenLayout.from_dict(json.loads(json.dumps(LAYOUT.to_dict()))) == LAYOUT


def test_written_samples_read_back_exactly(tmp_path):
    codes = {f"k{i}": _codes(i) for i in range(5)}
    carried = {"txt": b"a red circle", "json": b'{"qa": []}'}
    path = _write(tmp_path / "s.tar", {k: sample_parts(c["pixel"], c["semantic"], carried) for k, c in codes.items()})
    samples = list(iter_token_samples([path], LAYOUT))
    assert [s.key for s in samples] == list(codes)
    for sample in samples:
        assert np.array_equal(sample.pixel, codes[sample.key]["pixel"]) and sample.pixel.dtype == np.uint16
        assert np.array_equal(sample.semantic, codes[sample.key]["semantic"]) and sample.semantic.dtype == np.int32
        assert sample.parts == carried and sample.meta == {"qa": []}
    with tarfile.open(path) as tar:  # any tar reader sees the WebDataset layout
        assert tar.getnames()[:4] == ["k0.json", "k0.pixel.npy", "k0.semantic.npy", "k0.txt"]


@pytest.mark.parametrize(("stream", "bad", "message"), [
    ("pixel", lambda a: a + 32, "pixel: code \\d+ outside the codebook \\[0, 32\\)"),
    ("pixel", lambda a: a.astype(np.int64), "pixel.npy is int64"),
    ("semantic", lambda a: a[:1], "semantic.npy is int32 \\(1, 3, 3\\)"),
    ("semantic", lambda a: a - 70000, "semantic: code -\\d+ outside the codebook"),
])
def test_damaged_codes_are_an_error_naming_the_sample(tmp_path, stream, bad, message):
    good = _codes(0)
    broken = {**good, stream: bad(good[stream])}
    path = _write(tmp_path / "s.tar", {"fine": sample_parts(good["pixel"], good["semantic"], {}),
                                       "broken": sample_parts(broken["pixel"], broken["semantic"], {})})
    reader = iter_token_samples([path], LAYOUT)
    assert next(reader).key == "fine"
    with pytest.raises(CorruptTokens, match=f"s.tar: sample 'broken': .*{message}"):
        next(reader)


def test_truncated_or_foreign_shards_are_refused(tmp_path):
    path = tmp_path / "s.tar"
    _write(path, {f"k{i}": sample_parts(**_codes(i), carried={}) for i in range(20)})
    data = path.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:1500])
    with pytest.raises(CorruptTokens, match=r"cut\.tar: truncated"):
        list(iter_token_samples([str(tmp_path / "cut.tar")], LAYOUT))
    (tmp_path / "z.tar").write_bytes(gzip.compress(data))
    with pytest.raises(CorruptTokens, match="no valid ustar header at byte 0"):
        list(iter_token_samples([str(tmp_path / "z.tar")], LAYOUT))
    with pytest.raises(CorruptTokens, match=r"no pixel\.npy"):
        list(iter_token_samples([_write(tmp_path / "t.tar", {"k": {"txt": b"x"}})], LAYOUT))


def test_fast_shard_reader_agrees_with_tarfile(tmp_path):
    parts = {f"dir/key{i}": {"png": bytes(range(i * 7 % 256)) * 3, "json": b"{}", "txt": b"x" * i} for i in range(40)}
    parts["p" * 60 + "/" + "n" * 60] = {"txt": b"a name that needs the ustar prefix field"}
    path = _write(tmp_path / "s.tar", parts)
    with open(path, "rb") as handle:
        fast = dict(iter_shard_samples(handle, path))
    with tarfile.open(path) as tar:
        slow: dict[str, dict[str, bytes]] = {}
        for info in tar:
            key, _, ext = info.name.rpartition("/")[2].partition(".")
            folder = info.name.rpartition("/")[0]
            slow.setdefault(f"{folder}/{key}" if folder else key, {})[ext] = tar.extractfile(info).read()
    assert fast == slow == parts


def test_slices_take_every_shard_exactly_once():
    for n in range(0, 23):
        items = list(range(n))
        for world in range(1, 8):
            taken = [WorkSlice(rank, world).take(items) for rank in range(world)]
            assert sorted(x for t in taken for x in t) == items
            assert max(map(len, taken)) - min(map(len, taken)) <= 1  # balanced to within one shard
    with pytest.raises(ValueError, match="rank 2 is not in"):
        WorkSlice(2, 2)


def test_slice_comes_from_the_launcher_environment():
    assert slice_from_env({}) == WorkSlice(0, 1)
    assert slice_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == WorkSlice(3, 4)
    slurm = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "5"}
    assert slice_from_env(slurm) == WorkSlice(2, 5)
    assert slice_from_env({"JOB_COMPLETION_INDEX": "1", "DUALTOKEN_ARRAY_SIZE": "3"}) == WorkSlice(1, 3)
    assert slice_from_env({"DUALTOKEN_ARRAY_INDEX": "2", "DUALTOKEN_ARRAY_SIZE": "3", **slurm}) == WorkSlice(2, 3)
    for index in ("JOB_COMPLETION_INDEX", "DUALTOKEN_ARRAY_INDEX"):
        with pytest.raises(ValueError, match="DUALTOKEN_ARRAY_SIZE"):
            slice_from_env({index: "1"})


def test_code_statistics_of_a_known_histogram(tmp_path):
    hist = np.zeros((2, 8), np.int64)
    hist[0, :4] = 10  # depth 1: four codes equally used -> 2 bits, perplexity 4, usage 0.5
    hist[1, 0] = 40  # depth 2: one code -> 0 bits, perplexity 1
    stats = code_statistics({"pixel": hist, "semantic": hist})["pixel"]
    assert stats["usage"] == {"all_depths": 0.5, "d1": 0.5, "d2": 0.125}
    assert stats["entropy_bits"]["d1"] == 2.0 and stats["entropy_bits"]["d2"] == 0.0
    assert stats["perplexity"]["d1"] == 4.0 and stats["codes"] == 80
    ranked = ranked_fractions(hist)
    assert ranked.shape == (3, 8) and np.allclose(ranked.sum(1), 1) and np.all(np.diff(ranked, axis=1) <= 0)
    assert ranked[2, 0] == pytest.approx(50 / 80)  # pooled: code 0 holds 10 + 40 of 80
    lines = write_usage_csv({"pixel": hist, "semantic": hist[:, :4]}, tmp_path / "u.csv").read_text().splitlines()
    assert lines[0] == "rank,pixel,semantic" and lines[1] == "1,0.625,0.625" and lines[8] == "8,0,"
    assert len(lines) == 9


@pytest.mark.parametrize(("dtype", "shape"), [("uint16", (8, 8, 4)), ("int32", (27, 27, 8)), (">i4", (3,)),
                                             ("uint16", ()), ("uint16", (0, 4))])
def test_npy_bytes_equal_what_numpy_writes(dtype, shape):
    array = np.random.default_rng(0).integers(0, 500, shape).astype(dtype)
    saved = io.BytesIO()
    np.save(saved, array, allow_pickle=False)
    assert npy_bytes(array) == saved.getvalue()
    fortran = np.asfortranarray(array)
    assert np.array_equal(np.load(io.BytesIO(npy_bytes(fortran))), fortran)
