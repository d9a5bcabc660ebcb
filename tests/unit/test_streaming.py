"""The streaming loaders: every sample exactly once per epoch across ranks and accumulation streams (any
shard count), an order that is a pure function of (seed, epoch, streams) and never of the workers, exact
resume without decoding what was read before, bounded memory, and one-line errors for bad data."""

import json
import shutil

import numpy as np
import pytest
import torch

from dualtoken.data import curated as curated_module
from dualtoken.data.curated import CuratedDecoder
from dualtoken.data.loader import LoaderSettings, StreamLoader, StreamSpec, default_workers
from dualtoken.data.pieces import CorruptSample
from dualtoken.data.sequences import TokenSampleDecoder
from dualtoken.data.shards import ShardIndexError, split_shards
from dualtoken.data.stream import StreamError, StreamOrder, stream_ids
from dualtoken.data.tokens import read_layout
from tiny import tiny_text_tokenizer, write_curated_corpus, write_token_corpus

SIZES = [7, 5, 11]  # 23 samples: divisible by neither 2 nor 3, shards of unequal size


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_curated_corpus(tmp_path_factory.mktemp("curated"), {"train": SIZES, "val": [3]})


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = write_token_corpus(tmp_path_factory.mktemp("tokens"), {"train": [9, 6, 8]}, qa_every=3)
    return root, tiny_text_tokenizer(root)


class Recording(CuratedDecoder):
    """Remembers which keys it decoded (in-process: 0 workers)."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded: list[str] = []

    def __call__(self, samples):
        self.decoded += [s.key for s in samples]
        return super().__call__(samples)


def _loader(root, world=1, rank=0, accum=1, workers=0, seed=0, buffer=8, piece=4, decoder=None):
    shards = split_shards(root, "train")
    order = StreamOrder([s.samples for s in shards], world * accum, seed, buffer)
    specs = [StreamSpec(f"s{k}", order, k, draw_seed=seed) for k in stream_ids(rank, world, accum)]
    settings = LoaderSettings(workers=workers, prefetch=2, piece=piece)
    return StreamLoader(shards, decoder or CuratedDecoder(), specs, settings), order, [s.name for s in specs]


def _epoch_keys(root, world, accum, workers):
    """Each stream's first epoch, as lists of keys per (rank, stream)."""
    out = {}
    for rank in range(world):
        loader, order, names = _loader(root, world, rank, accum, workers)
        with loader:
            for name in names:
                k = int(name[1:])
                out[k] = loader.take(name, order.length(k))["key"]
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_sample_once_per_epoch_whatever_the_ranks_and_workers(corpus, world):
    reference = None
    for workers in (0, 1, 2):
        streams = _epoch_keys(corpus, world, 1, workers)
        keys = [k for stream in streams.values() for k in stream]
        assert len(keys) == sum(SIZES) and len(set(keys)) == sum(SIZES)  # each sample exactly once
        lengths = [len(v) for v in streams.values()]
        assert max(lengths) - min(lengths) <= 1  # ranks step together
        reference = reference or streams
        assert streams == reference  # the workers decode; they never decide the order


def test_pooled_images_are_those_of_their_keys_while_workers_refill_the_pool(corpus):
    def batches(workers):
        loader, _, names = _loader(corpus, workers=workers, buffer=1, piece=1)  # a slot per sample
        with loader:
            return [loader.take(names[0], 9) for _ in range(2 * sum(SIZES) // 9)]

    for expected, found in zip(batches(0), batches(2), strict=True):
        assert found["key"] == expected["key"]
        # a slot is handed to the next request only after the batch copied its rows
        assert torch.equal(found["image"], expected["image"])


def test_workers_by_default_only_beside_an_accelerator(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)))
    assert default_workers(torch.device("cpu")) == 0  # the model's threads use the cores
    assert default_workers(torch.device("cuda")) == 8
    assert default_workers(torch.device("cuda"), processes_per_node=4) == 3  # a spare core per process
    assert default_workers(torch.device("cuda"), processes_per_node=16) == 0


def test_ranks_times_accumulation_is_what_decides_the_batches(corpus):
    two_ranks = _epoch_keys(corpus, world=2, accum=1, workers=0)
    one_rank_two_steps = _epoch_keys(corpus, world=1, accum=2, workers=1)
    assert two_ranks == one_rank_two_steps
    assert _epoch_keys(corpus, world=3, accum=1, workers=0) != _epoch_keys(corpus, world=1, accum=1, workers=0)


def test_more_streams_than_shards_and_a_corpus_too_small(tmp_path):
    root = write_curated_corpus(tmp_path / "c", {"train": [4, 3]})
    streams = _epoch_keys(root, world=3, accum=2, workers=2)  # 6 streams over 2 shards
    assert sorted(k for v in streams.values() for k in v) == sorted({k for v in streams.values() for k in v})
    assert sum(len(v) for v in streams.values()) == 7
    with pytest.raises(StreamError, match="fewer than the 8 streams"):
        StreamOrder([4, 3], 8, 0, 4)


def test_order_is_a_function_of_seed_and_epoch(corpus):
    def two_epochs(seed):
        loader, order, names = _loader(corpus, seed=seed, buffer=4)
        with loader:
            keys = loader.take(names[0], 2 * order.length(0))["key"]
        return keys[: sum(SIZES)], keys[sum(SIZES):]

    first, second = two_epochs(3)
    assert two_epochs(3) == (first, second)  # reproducible
    assert first != second and sorted(first) == sorted(second)  # each epoch its own order, all samples
    assert two_epochs(4)[0] != first


@pytest.mark.parametrize(("buffer", "workers"), [(4, 0), (100, 2), (0, 1)])
def test_resume_mid_epoch_sees_the_same_batches_and_decodes_nothing_twice(corpus, buffer, workers):
    full, _, names = _loader(corpus, buffer=buffer, workers=workers)
    with full:
        batches = [full.take(names[0], 5)["key"] for _ in range(8)]  # crosses into the second epoch
    first, _, _ = _loader(corpus, buffer=buffer)
    with first:
        assert [first.take(names[0], 5)["key"] for _ in range(3)] == batches[:3]
        state = first.state_dict()
    decoder = Recording()
    resumed, _, _ = _loader(corpus, buffer=buffer, decoder=decoder)
    resumed.load_state_dict(state)
    with resumed:
        rest = [resumed.take(names[0], 5)["key"] for _ in range(5)]
    assert rest == batches[3:]
    seen_before = {k for batch in batches[:3] for k in batch}
    epoch_one = decoder.decoded[: sum(SIZES) - 15]
    assert not seen_before & set(epoch_one)  # what was read before the checkpoint is skipped, not decoded


def test_a_saved_position_is_refused_for_another_corpus_or_process_count(corpus):
    loader, _, names = _loader(corpus)
    with loader:
        loader.take(names[0], 3)
        state = loader.state_dict()
    other, _, _ = _loader(corpus, buffer=5)
    with pytest.raises(ValueError, match="shuffle buffer or process count changed"):
        other.load_state_dict(state)
    two, _, _ = _loader(corpus, world=2)
    with pytest.raises(ValueError, match="streams"):
        two.load_state_dict(state)


def test_token_streams_resume_exactly_and_vqa_skips_samples_without_questions(tokens):
    root, tokenizer = tokens
    shards = split_shards(root, "train")
    order = StreamOrder([s.samples for s in shards], 1, 7, 6)
    specs = [StreamSpec("vqa", order, 0, draw_seed=1, require="has_qa"), StreamSpec("caption", order, 0, draw_seed=2)]
    decoder = TokenSampleDecoder(read_layout(root), tokenizer, 8)

    def run(state=None, steps=6, workers=0):
        loader = StreamLoader(shards, decoder, specs, LoaderSettings(workers=workers, piece=3))
        if state:
            loader.load_state_dict(state)
        out = []
        with loader:
            for step in range(steps):
                vqa, cap = loader.take("vqa", 2), loader.take("caption", 3)
                out.append((vqa["key"], vqa["qa"], cap["key"], cap["caption"], vqa["semantic"].tolist()))
                if step == 2:
                    state = loader.state_dict()
        return out, state

    full, middle = run(workers=2)
    assert all(len(step[1]) == 2 and all(step[1]) for step in full)  # only samples with questions
    resumed, _ = run(middle, steps=3)
    assert resumed == full[3:]
    assert middle["streams"]["vqa"]["position"] > 6  # the vqa stream passed over samples without questions


def test_bad_data_is_one_line_naming_the_shard_and_sample(tmp_path):
    root = write_curated_corpus(tmp_path / "c", {"train": [6, 6]})

    def read_all():
        loader, order, names = _loader(root, buffer=0, piece=6)
        with loader:
            loader.take(names[0], order.length(0))

    shard = root / "train-000001.tar"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CorruptSample, match=r"train-000001\.tar: truncated") as err:
        read_all()
    assert "\n" not in str(err.value)

    member = good.index(b"\x89PNG")  # the first sample's image, garbled in place: the tar stays valid
    shard.write_bytes(good[:member] + b"x" * 64 + good[member + 64 :])
    with pytest.raises(CorruptSample, match=r"train-000001\.tar: sample '\w+': the image does not decode"):
        read_all()

    shard.write_bytes(good)
    shutil.copy(root / "train-000000.tar.idx", root / "train-000001.tar.idx")
    (root / "train-000000.tar.idx").write_bytes(b"\0" * 8)  # stale or foreign index
    with pytest.raises(CorruptSample, match=r"train-000000\.tar\.idx: 8 bytes where 6 samples need 56"):
        read_all()
    (root / "train-000000.tar.idx").unlink()
    with pytest.raises(CorruptSample, match=r"cannot read .*train-000000\.tar\.idx"):
        read_all()


def test_out_of_range_codes_name_the_shard_and_sample(tmp_path):
    root = write_token_corpus(tmp_path / "t", {"train": [4]}, codebook=32)
    shard = root / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    header = data.index(b"\x93NUMPY")  # first sample's pixel codes: make the first code 999
    start = header + 10 + int.from_bytes(data[header + 8 : header + 10], "little")
    data[start : start + 2] = (999).to_bytes(2, "little")
    shard.write_bytes(bytes(data))
    shards = split_shards(root, "train")
    order = StreamOrder([4], 1, 0, 0)
    loader = StreamLoader(shards, TokenSampleDecoder(read_layout(root), tiny_text_tokenizer(root), 8),
                          [StreamSpec("t", order, 0)], LoaderSettings(workers=1))
    with loader, pytest.raises(CorruptSample, match=r"train-000000\.tar: sample '\w+': pixel: code 999 outside"):
        loader.take("t", 4)


def test_an_index_without_per_shard_counts_says_what_to_do(corpus, tmp_path):
    index = json.loads((corpus / "shards.json").read_text())
    del index["shards"]
    (tmp_path / "shards.json").write_text(json.dumps(index))
    with pytest.raises(ShardIndexError, match=r"no per-shard sample counts.*rerun"):
        split_shards(tmp_path, "train")


def test_the_loader_holds_at_most_the_buffer_and_a_few_pieces(tmp_path, monkeypatch):
    root = write_curated_corpus(tmp_path / "c", {"train": [100, 100, 100]})
    decoded = []
    real = curated_module.decode_image
    monkeypatch.setattr(curated_module, "decode_image", lambda data, where: decoded.append(where) or real(data, where))
    loader, _, names = _loader(root, buffer=16, piece=8)
    with loader:
        for _ in range(10):
            batch = loader.take(names[0], 8)
            assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == torch.uint8  # channels last
    assert loader.peak_held <= 16 + 2 * 8
    assert len(decoded) <= 80 + 16 + 8  # what was consumed plus the window ahead, not the corpus


def test_window_shuffle_moves_samples_at_most_the_buffer():
    order = StreamOrder([500, 500], 1, 0, 50)
    loader_order = order.epoch_order(0, 0)
    positions = np.concatenate([loader_order.band(w) for w in range(loader_order.bands)])
    assert sorted(positions.tolist()) == list(range(1000))
    assert np.abs(positions - np.arange(1000)).max() <= 50
    assert (positions != np.arange(1000)).mean() > 0.9  # and it does shuffle


def test_vqa_streams_find_questions_kept_in_a_few_shards(tmp_path):
    """Questions only in one of four shards: some epochs' ranges hold none, the stream moves on to the next."""
    root = write_token_corpus(tmp_path / "t", {"train": [10, 10, 10, 10]}, qa_every=1)
    index = json.loads((root / "shards.json").read_text())
    for name in index["splits"]["train"][1:]:  # strip the questions from shards 1..3, in place
        _rewrite(root / name, lambda meta: {**meta, "qa": []})
    shards = split_shards(root, "train")
    order = StreamOrder([s.samples for s in shards], 2, 0, 4)
    specs = [StreamSpec(f"vqa/{k}", order, k, require="has_qa") for k in range(2)]
    loader = StreamLoader(shards, TokenSampleDecoder(read_layout(root), tiny_text_tokenizer(root), 8), specs,
                          LoaderSettings(piece=4))
    with loader:
        for _ in range(15):
            for k in range(2):
                batch = loader.take(f"vqa/{k}", 3)
                assert all(int(key) < 10 for key in batch["key"])  # all from the one shard with questions


def _rewrite(shard, change):
    from dualtoken.data.tarstream import TarWriter, iter_shard_samples

    with open(shard, "rb") as handle:
        samples = list(iter_shard_samples(handle, str(shard)))
    with TarWriter(shard, index=True) as writer:
        for key, parts in samples:
            writer.add_sample(key, {**parts, "json": json.dumps(change(json.loads(parts["json"]))).encode()})


def test_evaluation_reads_its_limit_and_not_one_sample_more(tmp_path):
    from dualtoken.data.curated import UnreadableSample, iter_metas, read_images
    from dualtoken.data.shards import shard_urls

    root = write_curated_corpus(tmp_path / "c", {"train": [3, 3]})
    (root / "train-000001.tar").write_bytes(b"not a tar at all" * 64)  # beyond the limit: never opened
    assert len(read_images(root, "train", 3)) == 3
    assert len(list(iter_metas(shard_urls(root, "train"), limit=3))) == 3
    with pytest.raises(UnreadableSample, match=r"train-000001\.tar: no valid ustar header") as err:
        read_images(root, "train", 4)
    assert "\n" not in str(err.value)


def test_images_of_two_sizes_in_one_batch_name_the_samples(tmp_path):
    small = write_curated_corpus(tmp_path / "a", {"train": [4]}, size=32)
    big = write_curated_corpus(tmp_path / "b", {"train": [4]}, size=48, seed=1)
    (small / "train-000001.tar").write_bytes((big / "train-000000.tar").read_bytes())
    (small / "train-000001.tar.idx").write_bytes((big / "train-000000.tar.idx").read_bytes())
    index = json.loads((small / "shards.json").read_text())
    index["splits"]["train"].append("train-000001.tar")
    index["shards"]["train-000001.tar"] = {"samples": 4}
    (small / "shards.json").write_text(json.dumps(index))
    loader, _, names = _loader(small, buffer=0, piece=2)
    with loader, pytest.raises(CorruptSample, match=r"have image of shapes \(32, 32, 3\) and \(48, 48, 3\)"):
        loader.take(names[0], 8)
