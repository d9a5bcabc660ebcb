"""Tokenisation reading the curated corpus from a real S3 server and publishing the token shards to it."""

import json

import pytest
import torch

from dualtoken.apps.tokenize import main as tokenize_main
from dualtoken.config import parse_config
from dualtoken.data.curated import read_images, to_model_input
from dualtoken.data.tokens import read_token_split
from dualtoken.storage import StorageError
from tiny import saved_tiny_tokenizer, write_curated_corpus

pytestmark = pytest.mark.integration


def _cfg(tmp_path, **tokenize):
    return parse_config({
        "data": {"sources": [{"kind": "demo"}]},
        # the tokenizer stage's metrics of this test, not the repository's (verify compares PSNR with them)
        "tokenizer": {"output_dir": str(tmp_path / "model"), "metrics_path": str(tmp_path / "tokenizer.json")},
        "tokenize": {"output_dir": str(tmp_path / "tokens"), "work_dir": str(tmp_path / "work"),
                     "metrics_path": str(tmp_path / "tokenize.json"), "plots_dir": str(tmp_path / "plots"),
                     "batch_size": 4, "runtime": {"device": "cpu", "loader_workers": 2}, **tokenize},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    })


def test_tokenize_from_s3_and_publish(s3_env, tmp_path):
    curated = write_curated_corpus(tmp_path / "curated", {"train": [6, 5], "val": [3], "test": [2]})
    model = saved_tiny_tokenizer(tmp_path / "model", read_images(curated, "train", 100).images)
    client = s3_env.client()
    bucket = s3_env.make_bucket("tokens-test")
    for path in curated.iterdir():
        client.upload_file(str(path), bucket, f"curated/{path.name}")
    cfg = _cfg(tmp_path, input="s3://tokens-test/curated", publish_uri="s3://tokens-test/tokens/v1")
    metrics = tokenize_main(cfg)
    assert metrics["counts"] == {"train": 11, "val": 3, "test": 2} and metrics["verify"]["ok"]

    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="tokens/v1/")["Contents"]}
    shards = ("train-000000.tar", "train-000001.tar", "val-000000.tar", "test-000000.tar")
    assert listed == {f"tokens/v1/{n}" for n in ("shards.json", *shards, *(f"{s}.idx" for s in shards))}
    remote = read_token_split("s3://tokens-test/tokens/v1", "train", 100)  # readers stream straight from S3
    local = read_token_split(tmp_path / "tokens", "train", 100)
    assert remote.keys == local.keys and torch.equal(remote.pixel, local.pixel)
    assert torch.equal(remote.pixel, model.encode(to_model_input(read_images(curated, "train", 100).images)).pixel)
    index = json.loads(client.get_object(Bucket=bucket, Key="tokens/v1/shards.json")["Body"].read())
    assert index["corpus"]["path"] == "s3://tokens-test/curated" and len(index["tokenizer"]["sha256"]) == 64


def test_missing_s3_corpus_is_a_clear_error(s3_env, tmp_path):
    s3_env.make_bucket("no-corpus")
    saved_tiny_tokenizer(tmp_path / "model", read_images(
        write_curated_corpus(tmp_path / "c", {"train": [2], "val": [1], "test": [1]}), "train", 2).images)
    with pytest.raises(StorageError, match=r"cannot read s3://no-corpus/curated/shards\.json"):
        tokenize_main(_cfg(tmp_path, input="s3://no-corpus/curated"))
