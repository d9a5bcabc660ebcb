"""Input sources, cut into work units ("input shards") that curation processes independently.

Every source yields :class:`RawSample` objects in the same shape as a WebDataset sample: a key and a
dict of parts (``png``/``jpg``/..., ``txt``, ``json``) holding the *original bytes*, so curation has one
code path and quarantine can keep exactly what came in. Problems found while reading (a missing file,
a broken manifest row, an unsafe tar member) come back as samples carrying a reject reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dualtoken.data.config import DemoSource, FolderSource, MnistSource, Source, WebDatasetSource
from dualtoken.data.mnist import generate_digit
from dualtoken.data.synthetic import Example, generate_example
from dualtoken.data.tarstream import iter_tar_samples
from dualtoken.storage import StorageConfig, StorageError, expand_urls, is_s3, open_read, s3_client, split_s3

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


@dataclass
class RawSample:
    source: str
    key: str
    parts: dict[str, bytes] = field(default_factory=dict)
    origin: str = ""
    reject: tuple[str, str] | None = None


@dataclass(frozen=True)
class InputShard:
    """One unit of curation work: a slice of a generated or listed source, or one tar shard."""

    source: str
    index: int
    uri: str
    start: int = 0
    stop: int = 0
    identity: str = ""  # size/mtime or ETag of the input, so a changed input is processed again
    offset: int = -1  # byte offset of row ``start`` in a JSONL manifest (-1: read from the top)

    @property
    def unit_id(self) -> str:
        return f"{self.source}-{self.index:05d}"


# ------------------------------------------------------------------------------------------- planning
def _ranges(total: int, per: int) -> list[tuple[int, int]]:
    return [(s, min(s + per, total)) for s in range(0, total, per)]


def _file_identity(uri: str, storage: StorageConfig) -> str:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            head = s3_client(storage).head_object(Bucket=bucket, Key=key)
        except Exception as err:
            raise StorageError(f"cannot stat {uri}: {err}") from err
        return f"etag={head['ETag']} size={head['ContentLength']}"
    try:
        st = os.stat(uri)
    except OSError as err:
        raise StorageError(f"input shard {uri} is missing: {err.strerror}") from err
    return f"size={st.st_size} mtime_ns={st.st_mtime_ns}"


def plan_shards(src: Source, storage: StorageConfig) -> list[InputShard]:
    """Cut a source into input shards, in a deterministic order."""
    if isinstance(src, DemoSource | MnistSource):
        spec = json.dumps(src.model_dump(), sort_keys=True)
        return [InputShard(src.name, i, f"{src.kind}:{a}-{b}", a, b, spec)
                for i, (a, b) in enumerate(_ranges(src.num_images, src.images_per_shard))]
    if isinstance(src, FolderSource):
        ident = _file_identity(src.manifest, storage)
        return [InputShard(src.name, i, src.manifest, a, b, ident, offset)
                for i, (a, b, offset) in enumerate(_manifest_slices(Path(src.manifest), src.rows_per_shard))]
    urls = expand_urls(src.urls)
    return [InputShard(src.name, i, url, identity=_file_identity(url, storage)) for i, url in enumerate(urls)]


# ------------------------------------------------------------------------------------------- reading
def _example_sample(source: str, ex: Example, origin: str) -> RawSample:
    meta = {"captions": ex.captions, "qa": ex.qa, "attributes": ex.attributes}
    return RawSample(source, ex.key, {"png": ex.png, "json": json.dumps(meta).encode()}, origin)


def _manifest_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise StorageError(f"manifest {path} must end in .jsonl, .ndjson or .csv")


def _manifest_slices(path: Path, per: int) -> list[tuple[int, int, int]]:
    """(first row, end row, byte offset) per slice of ``per`` rows, from one pass over the file.

    JSONL slices start at a byte offset so each worker seeks straight to its rows. CSV records may span
    lines (quoted newlines), so CSV slices are read from the top (offset -1): prefer JSONL for big corpora.
    """
    fmt = _manifest_format(path)
    if not path.is_file():
        raise StorageError(f"manifest {path} not found")
    starts: list[int] = []
    rows = 0
    with open(path, "rb") as handle:
        position = 0
        for line in handle:
            if line.strip():
                if rows % per == 0:
                    starts.append(position)
                rows += 1
            position += len(line)
    if fmt == "csv":
        rows = max(rows - 1, 0)  # the header
        starts = [-1] * len(range(0, rows, per))
    return [(a, b, offset) for (a, b), offset in zip(_ranges(rows, per), starts, strict=False)]


def _iter_jsonl(path: Path, offset: int) -> Iterator[tuple[bytes, dict | None, str]]:
    with open(path, "rb") as handle:
        handle.seek(max(offset, 0))
        for raw in handle:
            if not raw.strip():
                continue
            raw = raw.rstrip(b"\r\n")
            try:
                row = json.loads(raw.decode("utf-8", "surrogateescape"))
            except json.JSONDecodeError as err:
                yield raw, None, f"invalid JSON: {err.msg} at column {err.colno}"
                continue
            yield (raw, row, "") if isinstance(row, dict) else (raw, None, "row is not a JSON object")


def _iter_manifest_rows(path: Path, offset: int = -1) -> Iterator[tuple[bytes, dict | None, str]]:
    """(raw row bytes, parsed row or None, error) for each non-empty row; invalid UTF-8 is kept, not lost."""
    if _manifest_format(path) == "jsonl":
        yield from _iter_jsonl(path, offset)
        return
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise StorageError(f"manifest {path} lacks column(s) {sorted(missing)}")
        for row in reader:
            raw = ",".join(v or "" for v in row.values() if isinstance(v, str)).encode("utf-8", "surrogateescape")
            if row.get("metadata"):
                try:
                    row["metadata"] = json.loads(row["metadata"])
                except json.JSONDecodeError as err:
                    yield raw, None, f"metadata column is not JSON: {err.msg}"
                    continue
            yield raw, row, ""


def _folder_sample(source: str, base: Path, index: int, raw: bytes, row: dict) -> RawSample:
    rel = row.get("path")
    key = f"{index:09d}"
    origin = f"row {index}"
    if not isinstance(rel, str) or not rel:
        return RawSample(source, key, {"row": raw}, origin, ("bad_manifest_row", "row has no 'path'"))
    image_path = base / rel
    ext = image_path.suffix.lower().lstrip(".")
    try:
        image = image_path.read_bytes()
    except OSError as err:
        return RawSample(source, key, {"row": raw}, origin, ("missing_image", f"{rel}: {err.strerror}"))
    parts = {ext if ext in IMAGE_EXTENSIONS else "img": image}
    caption = row.get("caption")
    if isinstance(caption, str):
        parts["txt"] = caption.encode("utf-8", "surrogateescape")
    metadata = row.get("metadata")
    if metadata is not None:
        parts["json"] = json.dumps(metadata, ensure_ascii=False).encode("utf-8", "surrogateescape")
    return RawSample(source, key, parts, f"{origin}: {rel}")


def iter_shard(shard: InputShard, src: Source, storage: StorageConfig, max_member_bytes: int) -> Iterator[RawSample]:
    """Every sample of one input shard, in order, originals untouched."""
    if isinstance(src, DemoSource):
        for i in range(shard.start, shard.stop):
            yield _example_sample(src.name, generate_example(src.seed, i, src.image_size, src.textured_fraction,
                                                               src.max_objects, src.object_scale),
                                  f"demo seed={src.seed} index={i}")
    elif isinstance(src, MnistSource):
        for i in range(shard.start, shard.stop):
            yield _example_sample(src.name, generate_digit(src.seed, i, src.image_size), f"mnist index={i}")
    elif isinstance(src, FolderSource):
        path = Path(src.manifest)
        first = shard.start if shard.offset >= 0 else 0  # seeked straight to `start`, or reading from the top
        for index, (raw, row, error) in enumerate(_iter_manifest_rows(path, shard.offset), start=first):
            if index < shard.start:
                continue
            if index >= shard.stop:
                break
            if row is None:
                yield RawSample(src.name, f"{index:09d}", {"row": raw}, f"row {index}", ("bad_manifest_row", error))
            else:
                yield _folder_sample(src.name, path.parent, index, raw, row)
    elif isinstance(src, WebDatasetSource):
        try:
            with open_read(shard.uri, storage) as stream:
                for item in iter_tar_samples(stream, max_member_bytes):
                    yield RawSample(src.name, item.key, item.parts, shard.uri, item.reject)
        except StorageError as err:
            yield RawSample(src.name, "<container>", {}, shard.uri, ("container_unreadable", str(err)))
    else:  # pragma: no cover - the config union is closed
        raise TypeError(f"unknown source {type(src).__name__}")


def unit_fingerprint(shard: InputShard, rules: dict) -> str:
    """Changes whenever the shard's input or the per-sample rules change, so stale work is redone."""
    blob = json.dumps({"shard": [shard.source, shard.index, shard.uri, shard.start, shard.stop, shard.identity],
                       "rules": rules}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def describe(src: Source) -> str:
    buf = io.StringIO()
    buf.write(f"{src.name} ({src.kind}")
    if isinstance(src, DemoSource | MnistSource):
        buf.write(f", {src.num_images} images, seed {src.seed}")
    elif isinstance(src, FolderSource):
        buf.write(f", {src.manifest}")
    else:
        buf.write(f", {len(src.urls)} pattern(s)")
    buf.write(")")
    return buf.getvalue()
