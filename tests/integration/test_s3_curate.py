"""Curation reading `s3://` brace patterns and publishing shards (multipart) to a real S3 server."""

import io
import json
import tarfile

import pytest

from badinputs import add_member, noise_png
from dualtoken.config import parse_config
from dualtoken.curation.job import run_curation
from dualtoken.storage import StorageConfig, StorageError, s3_client

pytestmark = pytest.mark.integration


def _shard(seed: int, n: int, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            add_member(tar, f"s{seed}_{i:04d}.png", noise_png(seed * 1000 + i, (size, size)))
            add_member(tar, f"s{seed}_{i:04d}.txt", f"random noise number {i}".encode())
    return buf.getvalue()


def test_curate_from_s3_patterns_and_publish_multipart(s3_env, tmp_path):
    client = s3_env.client()
    bucket = s3_env.make_bucket("corpus")
    for k in range(3):
        client.put_object(Bucket=bucket, Key=f"raw/shard-{k:05d}.tar", Body=_shard(k, 30, 160))
    cfg = parse_config({
        "data": {"sources": [{"kind": "webdataset", "name": "s3web",
                              "urls": ["s3://corpus/raw/shard-{00000..00002}.tar"]}]},
        "curate": {"output_dir": str(tmp_path / "out"), "work_dir": str(tmp_path / "work"),
                   "metrics_path": str(tmp_path / "stats.json"), "workers": 2, "resolution": 160,
                   "publish_uri": "s3://corpus/curated/v1", "validation": {"min_rows": 50, "split_tolerance": 0.2},
                   "split": {"train": 0.8, "val": 0.1, "test": 0.1}},
        "storage": {"multipart_threshold_mb": 5, "multipart_chunk_mb": 5},
    })
    outputs = run_curation(cfg.data.sources, cfg.curate, cfg.storage)
    assert outputs.stats["inputs"] == 90 and outputs.stats["accepted"] == 90
    listed = {o["Key"]: o for o in client.list_objects_v2(Bucket=bucket, Prefix="curated/v1/")["Contents"]}
    assert "curated/v1/manifest.parquet" in listed and "curated/v1/rejects/rejects.jsonl" in listed
    train = listed["curated/v1/train-000000.tar"]
    local = (tmp_path / "out" / "train-000000.tar").read_bytes()
    assert train["Size"] == len(local) > 5 * 2**20
    assert "-" in train["ETag"]  # uploaded in parts
    assert client.get_object(Bucket=bucket, Key="curated/v1/train-000000.tar")["Body"].read() == local
    assert json.loads((tmp_path / "stats.json").read_text())["accounting_ok"] is True


def test_missing_s3_shard_is_a_clear_error(s3_env, tmp_path):
    s3_env.make_bucket("empty")
    cfg = parse_config({"data": {"sources": [{"kind": "webdataset", "name": "w", "urls": ["s3://empty/nope.tar"]}]},
                        "curate": {"output_dir": str(tmp_path / "o"), "work_dir": str(tmp_path / "w")}})
    with pytest.raises(StorageError, match=r"cannot stat s3://empty/nope\.tar"):
        run_curation(cfg.data.sources, cfg.curate, cfg.storage)


def test_no_credentials_is_a_clear_error(monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="no S3 credentials found"):
        s3_client(StorageConfig())
