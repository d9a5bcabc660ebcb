"""The local services are real: SigV4 auth is enforced, multipart works, MLflow stores and serves runs."""

import dataclasses

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

pytestmark = pytest.mark.integration

MiB = 2**20


def test_s3_put_get_and_multipart(s3_server, tmp_path):
    client = s3_server.client()
    bucket = s3_server.make_bucket("roundtrip")
    client.put_object(Bucket=bucket, Key="small.txt", Body=b"hello")
    assert client.get_object(Bucket=bucket, Key="small.txt")["Body"].read() == b"hello"

    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (12 * MiB // 256))
    client.upload_file(str(big), bucket, "big.bin",
                       Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    head = client.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == 12 * MiB
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag: 3 parts of at most 5 MiB
    assert client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == big.read_bytes()


@pytest.mark.parametrize("field", ["secret_key", "access_key"])
def test_s3_refuses_wrong_credentials(s3_server, field):
    bucket = s3_server.make_bucket(f"auth-{field.replace('_', '-')}")
    wrong = {field: "WRONG" + getattr(s3_server, field)}
    intruder = dataclasses.replace(s3_server, **wrong).client(retries={"max_attempts": 1})
    for attempt in (lambda: intruder.list_objects_v2(Bucket=bucket),
                    lambda: intruder.put_object(Bucket=bucket, Key="x", Body=b"x")):
        with pytest.raises(ClientError) as err:
            attempt()
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_mlflow_server_stores_runs_with_artifacts_on_s3(mlflow_server, s3_server, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    run = client.create_run(client.create_experiment("services-check"))
    run_id = run.info.run_id
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # artifacts go through the server
    client.log_param(run_id, "p", "1")
    client.log_metric(run_id, "m", 0.5)
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run_id)

    got = MlflowClient(mlflow_server.uri).get_run(run_id)
    assert got.data.params == {"p": "1"} and got.data.metrics == {"m": 0.5} and got.info.status == "FINISHED"
    assert [f.path for f in client.list_artifacts(run_id)] == ["note.txt"]
    path = client.download_artifacts(run_id, "note.txt", str(tmp_path / "dl"))
    with open(path) as handle:
        assert handle.read() == "hello"
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="mlflow")["Contents"]]
    assert any(key.endswith(f"{run_id}/artifacts/note.txt") for key in keys), keys  # proxied into S3
