"""The training loaders straight from a real S3 server: the same batches as from local disk (each piece one
ranged GET through the offset index, decoded by workers), resume included, and a shard missing from the
bucket is a one-line error naming its URL."""

import pytest

from dualtoken.data.curated import CuratedDecoder
from dualtoken.data.loader import LoaderSettings, StreamLoader, StreamSpec
from dualtoken.data.pieces import CorruptSample
from dualtoken.data.shards import split_shards
from dualtoken.data.stream import StreamOrder
from tiny import write_curated_corpus

pytestmark = pytest.mark.integration


def _batches(root, steps, state=None, workers=2):
    shards = split_shards(root, "train")
    order = StreamOrder([s.samples for s in shards], 1, 0, 6)
    loader = StreamLoader(shards, CuratedDecoder(), [StreamSpec("train", order, 0)],
                          LoaderSettings(workers=workers, piece=4))
    if state:
        loader.load_state_dict(state)
    with loader:
        out = []
        for _ in range(steps):
            batch = loader.take("train", 5)
            out.append((batch["key"], batch["image"].sum().item()))
        return out, loader.state_dict()


def test_s3_streams_the_same_batches_as_local_disk_and_resumes(s3_env, tmp_path):
    local = write_curated_corpus(tmp_path / "curated", {"train": [7, 9, 4], "val": [2]})
    client = s3_env.client()
    bucket = s3_env.make_bucket("stream")
    for path in local.iterdir():
        client.upload_file(str(path), bucket, f"curated/{path.name}")
    remote = "s3://stream/curated"
    expected, _ = _batches(local, 6, workers=0)
    assert _batches(remote, 6)[0] == expected  # 6 x 5 > 20: into the second epoch
    _, state = _batches(remote, 2)
    assert _batches(remote, 4, state)[0] == expected[2:]

    client.delete_object(Bucket=bucket, Key="curated/train-000001.tar")
    with pytest.raises(CorruptSample, match=r"cannot read s3://stream/curated/train-000001\.tar: no such object"):
        _batches(remote, 6)
