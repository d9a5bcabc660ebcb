"""The local services are real: SigV4 auth is enforced, multipart works, MLflow stores and serves runs."""

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

pytestmark = pytest.mark.integration


def test_s3_round_trip_multipart_and_auth(s3_server, tmp_path):
    client = s3_server.client()
    bucket = s3_server.make_bucket("roundtrip")
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (12 * 4096))  # 12 MiB
    client.upload_file(str(big), bucket, "big.bin", Config=TransferConfig(multipart_threshold=5 * 2**20,
                                                                           multipart_chunksize=5 * 2**20))
    head = client.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == big.stat().st_size and "-" in head["ETag"]  # a multipart ETag
    assert client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == big.read_bytes()

    intruder = boto3.client("s3", endpoint_url=s3_server.endpoint_url, aws_access_key_id=s3_server.access_key,
                            aws_secret_access_key="wrong-secret", region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as err:
        intruder.get_object(Bucket=bucket, Key="big.bin")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_mlflow_server_stores_runs(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    exp = client.create_experiment("services-check")
    run = client.create_run(exp)
    client.log_param(run.info.run_id, "p", "1")
    client.log_metric(run.info.run_id, "m", 0.5)
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    got = client.get_run(run.info.run_id)
    assert got.data.params == {"p": "1"} and got.data.metrics == {"m": 0.5}
    path = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "dl"))
    with open(path) as handle:
        assert handle.read() == "hello"
