"""Local paths and ``s3://`` URLs behind one small interface (streaming reads, atomic writes, uploads).

S3 goes through boto3 with a configurable endpoint (MinIO, SeaweedFS, AWS). Credentials come only from
boto3's own chain (environment, shared config/profile, instance role) and never from params.yaml.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from braceexpand import braceexpand
from pydantic import Field

from dualtoken.errors import DualtokenError
from dualtoken.schema import Strict


class StorageConfig(Strict):
    """S3 settings. Credentials never live here: boto3 reads them from the environment or a profile."""

    s3_endpoint_url: str | None = None
    s3_profile: str | None = None
    s3_region: str | None = None
    multipart_threshold_mb: int = Field(64, ge=5)
    multipart_chunk_mb: int = Field(16, ge=5)
    max_attempts: int = Field(5, ge=1, le=20, description="tries per S3 request (exponential back-off between)")


class StorageError(DualtokenError, RuntimeError):
    """A path or object could not be read or written; the message says which and why."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket name")
    return bucket, key


def expand_urls(patterns: list[str]) -> list[str]:
    """Brace-expand each pattern (``shard-{00000..00099}.tar``) keeping the given order, without repeats."""
    seen: dict[str, None] = {}
    for pattern in patterns:
        for url in braceexpand(pattern):
            seen.setdefault(url, None)
    return list(seen)


def s3_client(cfg: StorageConfig) -> Any:
    """A boto3 S3 client; endpoint from params or ``AWS_ENDPOINT_URL``, credentials from boto3's chain."""
    import boto3
    from botocore.config import Config as BotoConfig

    session = boto3.session.Session(profile_name=cfg.s3_profile) if cfg.s3_profile else boto3.session.Session()
    if session.get_credentials() is None:
        raise StorageError(
            "no S3 credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "or storage.s3_profile (a profile name; secrets never go in params.yaml)"
        )
    return session.client(
        "s3",
        endpoint_url=cfg.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=cfg.s3_region or session.region_name or "us-east-1",
        config=BotoConfig(retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
                          s3={"addressing_style": "path"}),
    )


@contextlib.contextmanager
def open_read(uri: str, cfg: StorageConfig) -> Iterator[IO[bytes]]:
    """A forward-only binary stream over a local file or an S3 object (never fully buffered)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            body = s3_client(cfg).get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as err:  # botocore raises many classes; the message carries the cause
            raise StorageError(f"cannot read {uri}: {_explain(err)}") from err
        try:
            yield body
        finally:
            body.close()
        return
    try:
        handle = open(uri, "rb")  # noqa: SIM115 - closed below, after the caller is done
    except OSError as err:
        raise StorageError(f"cannot read {uri}: {err.strerror}") from err
    with handle:
        yield handle


def location(uri: str | Path) -> str:
    """How a path or URL is recorded (lineage, logs): an s3:// URL as is, a local path made absolute."""
    return str(uri) if is_s3(str(uri)) else str(Path(uri).resolve())


def join_uri(base: str | Path, name: str) -> str:
    """``base/name`` for a local folder or an ``s3://`` prefix."""
    base = str(base)
    return f"{base.rstrip('/')}/{name}" if is_s3(base) else str(Path(base) / name)


def read_bytes(uri: str, cfg: StorageConfig) -> bytes:
    """A whole (small) file or object: indexes, manifests."""
    with open_read(uri, cfg) as handle:
        return handle.read()


def read_range(uri: str, start: int, stop: int, cfg: StorageConfig) -> bytes:
    """Bytes ``[start, stop)`` of a file (one seek) or an object (one ranged GET); short only at the end."""
    if stop <= start:
        return b""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            body = s3_client(cfg).get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{stop - 1}")["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except StorageError:
            raise
        except Exception as err:
            raise StorageError(f"cannot read {uri}: {_explain(err)}") from err
    try:
        with open(uri, "rb") as handle:
            handle.seek(start)
            return handle.read(stop - start)
    except OSError as err:
        raise StorageError(f"cannot read {uri}: {err.strerror}") from err


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _process_umask()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it into place only on success.

    The file gets the permissions a plain ``open`` would give (0666 less the umask), not mkstemp's 0600,
    so a team sharing a data folder can read what a stage wrote.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def upload_file(local: str | Path, uri: str, cfg: StorageConfig) -> None:
    """Upload with multipart above ``multipart_threshold_mb`` (boto3's managed transfer)."""
    from boto3.s3.transfer import TransferConfig

    bucket, key = split_s3(uri)
    transfer = TransferConfig(
        multipart_threshold=cfg.multipart_threshold_mb * 2**20,
        multipart_chunksize=cfg.multipart_chunk_mb * 2**20,
    )
    try:
        s3_client(cfg).upload_file(str(local), bucket, key, Config=transfer)
    except Exception as err:
        raise StorageError(f"cannot upload {local} to {uri}: {_explain(err)} (no partial object: S3 shows or "
                           "replaces an object only once its upload completes; rerunning uploads it again)") from err


def _explain(err: Exception) -> str:
    """What went wrong with an S3 call, in the terms of what to fix."""
    from botocore.exceptions import ClientError, EndpointConnectionError

    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, ClientError | EndpointConnectionError):
        cause = cause.__cause__ or cause.__context__  # boto3's transfer wraps the botocore error
    if isinstance(cause, ClientError):
        code = cause.response.get("Error", {}).get("Code", "")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return (f"the S3 server refused the credentials ({code}): check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY or storage.s3_profile, and the bucket's policy")
        if code == "NoSuchKey":
            return f"no such object ({code}): it was never uploaded or has been deleted"
        if code in ("NoSuchBucket", "404"):
            return f"no such bucket ({code}): create it first"
        return f"{code}: {cause}"
    if isinstance(cause, EndpointConnectionError):
        return f"the S3 endpoint did not answer after retries ({cause})"
    return str(err)


def publish_dir(local_dir: str | Path, prefix: str, cfg: StorageConfig, pattern: str = "*") -> list[str]:
    """Upload every file matching ``pattern`` under ``local_dir`` to ``prefix``; returns the URLs."""
    local_dir = Path(local_dir)
    urls = []
    for path in sorted(p for p in local_dir.rglob(pattern) if p.is_file()):
        url = prefix.rstrip("/") + "/" + path.relative_to(local_dir).as_posix()
        upload_file(path, url, cfg)
        urls.append(url)
    return urls


def save_folder_atomically(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a temporary sibling folder, then swap it in: readers never see half a model."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
