"""S3 failures against a real S3 server that the test crashes: wrong credentials and a server lost mid-upload
give a clear error and never a half-written shard; a server back within the retry window means success."""

import hashlib
import threading
import time

import pytest
from botocore.exceptions import ClientError

from dualtoken.storage import StorageConfig, StorageError, publish_dir, upload_file
from services import start_s3

pytestmark = pytest.mark.integration
MiB = 2**20
MULTIPART = StorageConfig(multipart_threshold_mb=5, multipart_chunk_mb=5)
GIVE_UP_SOON = StorageConfig(multipart_threshold_mb=5, multipart_chunk_mb=5, max_attempts=2)


@pytest.fixture
def own_s3(tmp_path, monkeypatch):
    """A server of this test's own (it gets crashed), its credentials in the environment."""
    server = start_s3(tmp_path / "s3")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.crash()  # its data is this test's: no need to wait for a clean shutdown


def _shard(path, mib):
    path.write_bytes(hashlib.sha256(b"seed").digest() * (mib * MiB // 32))
    return path


def _exists(server, bucket, key):
    try:
        server.client().head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        return False
    return True


def _crash_once_uploading(server, bucket, then=None):
    """Crash the server as soon as a multipart upload has started (mid-upload), then run ``then``."""
    watcher = server.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2)

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if watcher.list_multipart_uploads(Bucket=bucket).get("Uploads"):
                server.crash()
                if then is not None:
                    then()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_wrong_credentials_are_a_clear_error_and_write_nothing(own_s3, tmp_path, monkeypatch):
    bucket = own_s3.make_bucket("auth")
    shard = _shard(tmp_path / "train-000000.tar", 1)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match=r"refused the credentials \(SignatureDoesNotMatch\).*no partial object"):
        upload_file(shard, f"s3://{bucket}/corpus/train-000000.tar", StorageConfig())
    assert not _exists(own_s3, bucket, "corpus/train-000000.tar")


def test_a_server_lost_mid_upload_leaves_no_half_shard_and_a_rerun_publishes(own_s3, tmp_path):
    bucket = own_s3.make_bucket("crash")
    folder = tmp_path / "shards"
    folder.mkdir()
    shard = _shard(folder / "train-000000.tar", 64)
    watcher = _crash_once_uploading(own_s3, bucket)
    with pytest.raises(StorageError, match=r"did not answer after retries.*no partial object"):
        publish_dir(folder, f"s3://{bucket}/corpus", GIVE_UP_SOON)
    watcher.join()
    own_s3.restart()
    assert not _exists(own_s3, bucket, "corpus/train-000000.tar")  # the crash left no half-written shard
    assert publish_dir(folder, f"s3://{bucket}/corpus", MULTIPART) == [f"s3://{bucket}/corpus/train-000000.tar"]
    body = own_s3.client().get_object(Bucket=bucket, Key="corpus/train-000000.tar")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(shard.read_bytes()).digest()


def test_a_server_back_within_the_retry_window_means_the_upload_succeeds(own_s3, tmp_path):
    bucket = own_s3.make_bucket("blip")
    shard = _shard(tmp_path / "train-000001.tar", 64)
    watcher = _crash_once_uploading(own_s3, bucket, then=own_s3.restart)
    upload_file(shard, f"s3://{bucket}/corpus/train-000001.tar", MULTIPART)  # boto3's retries carry it through
    watcher.join()
    assert own_s3.process.poll() is None  # it really was restarted, i.e. it really went away
    head = own_s3.client().head_object(Bucket=bucket, Key="corpus/train-000001.tar")
    assert head["ContentLength"] == shard.stat().st_size
