"""Safe streaming over WebDataset tar shards, and a deterministic tar writer.

Reading never extracts anything to disk: members are read into memory one sample at a time. Members
that could escape a folder (absolute paths, ``..``), links and special files, oversized members and
truncated or corrupt containers come back as rejects with a reason, so the caller can quarantine them.

Writing produces byte-identical archives for identical content (fixed mtime, owner and mode), which
keeps DVC hashes and reruns stable, and renames the finished file into place atomically. A writer asked for
an index also writes ``<shard>.idx`` beside the shard: the byte offset where each sample starts, and the end
(``dualtoken.data.shards``), so a reader can start at any sample with one seek or one ranged GET.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from dualtoken.data.shards import write_offsets
from dualtoken.storage import atomic_write


@dataclass
class TarSample:
    """The members sharing one WebDataset key, or a reject with its reason and whatever bytes exist."""

    key: str
    parts: dict[str, bytes] = field(default_factory=dict)
    reject: tuple[str, str] | None = None


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename, extension = the rest."""
    folder, base = posixpath.split(name.removeprefix("./"))
    stem, _, ext = base.partition(".")
    return (posixpath.join(folder, stem) if folder else stem), ext.lower()


def _unsafe_name(name: str) -> bool:
    return not name or name.startswith("/") or ".." in name.split("/") or "\\" in name or ":" in name


def _member_kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"symlink -> {info.linkname}"
    if info.islnk():
        return f"hardlink -> {info.linkname}"
    for test, label in ((info.ischr, "character device"), (info.isblk, "block device"), (info.isfifo, "fifo")):
        if test():
            return label
    return f"tar type {info.type!r}"


def iter_tar_samples(stream: IO[bytes], max_member_bytes: int) -> Iterator[TarSample]:
    """Group consecutive members by key; yield rejects for anything unsafe, oversized or truncated."""
    current: TarSample | None = None
    count = 0
    try:
        archive = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 - closed in the finally below
    except (tarfile.TarError, EOFError, OSError) as err:
        yield TarSample(key="<container>", reject=("container_unreadable", f"not a readable tar: {err}"))
        return
    try:
        for info in archive:
            count += 1
            if info.isdir():
                continue  # a folder entry carries no data
            if not info.isfile():
                yield TarSample(key=info.name, reject=("non_regular_member", f"{info.name}: {_member_kind(info)}"))
                continue
            if info.size > max_member_bytes:
                yield TarSample(key=info.name, reject=(
                    "file_too_large", f"{info.name}: {info.size} bytes > limit {max_member_bytes}"))
                continue
            handle = archive.extractfile(info)
            data = handle.read() if handle is not None else b""
            if len(data) != info.size:
                raise EOFError(f"member {info.name} ends after {len(data)} of {info.size} bytes")
            if _unsafe_name(info.name):
                yield TarSample(key=info.name, parts={"bin": data},
                                reject=("unsafe_member_path", f"member name {info.name!r} could escape a folder"))
                continue
            key, ext = split_member_name(info.name)
            if current is not None and current.key != key:
                yield current
                current = None
            if current is None:
                current = TarSample(key=key)
            if ext in current.parts:
                yield TarSample(key=key, parts={ext: data},
                                reject=("duplicate_member", f"{info.name} repeats within sample {key!r}"))
                continue
            current.parts[ext] = data
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        partial = current.parts if current is not None else {}
        key = current.key if current is not None else "<container>"
        yield TarSample(key=key, parts=partial,
                        reject=("container_truncated", f"archive broken after {count} members: {err}"))
        return
    finally:
        archive.close()
    if current is not None:
        yield current


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    """``size`` bytes, fewer only at the end of the stream (S3 bodies may return short reads)."""
    chunks, missing = [], size
    while missing:
        chunk = stream.read(missing)
        if not chunk:
            break
        chunks.append(chunk)
        missing -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _parse_header(header: bytes, where: str, offset: int) -> tuple[str, int]:
    """(member name, data size) of a plain ustar regular-file header; anything else is a ValueError."""
    if not _valid_ustar_header(header):
        raise ValueError(f"{where}: no valid ustar header at byte {offset}: not a shard written by dualtoken "
                         "(or damaged)")
    if header[156:157] not in (b"0", b"\0"):
        raise ValueError(f"{where}: member type {header[156:157]!r} at byte {offset} is not a regular file")
    size = int(header[124:136].strip(b"\0 ") or b"0", 8)
    name, prefix = header[0:100].split(b"\0", 1)[0], header[345:500].split(b"\0", 1)[0]
    return (prefix + b"/" + name if prefix else name).decode(errors="replace"), size


def _iter_ustar_members(stream: IO[bytes], where: str) -> Iterator[tuple[str, bytes]]:
    offset = 0
    while True:
        header = _read_exact(stream, 512)
        if len(header) < 512:
            raise ValueError(f"{where}: truncated at byte {offset + len(header)} (no end-of-archive marker)")
        if header == _ZERO_BLOCK:
            return
        name, size = _parse_header(header, where, offset)
        padded = size + (-size % 512)
        data = _read_exact(stream, padded)
        if len(data) < padded:
            raise ValueError(f"{where}: truncated inside member {name!r}")
        yield name, data[:size]
        offset += 512 + padded


def _group_by_key(members: Iterator[tuple[str, bytes]], where: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members sharing a WebDataset key, as (key, {extension: bytes})."""
    key: str | None = None
    parts: dict[str, bytes] = {}
    for name, data in members:
        member_key, ext = split_member_name(name)
        if member_key != key:
            if key is not None:
                yield key, parts
            key, parts = member_key, {}
        if ext in parts:
            raise ValueError(f"{where}: {name} repeats within sample {member_key!r}")
        parts[ext] = data
    if key is not None:
        yield key, parts


def _iter_buffer_members(data: bytes, where: str, base: int) -> Iterator[tuple[str, bytes]]:
    """Members of a byte range that starts and ends on member boundaries (``base``: its offset in the shard)."""
    view, offset = memoryview(data), 0
    while offset < len(view):
        header = bytes(view[offset : offset + 512])
        if len(header) < 512:
            raise ValueError(f"{where}: truncated at byte {base + offset + len(header)}")
        name, size = _parse_header(header, where, base + offset)
        end = offset + 512 + size
        if end > len(view):
            raise ValueError(f"{where}: truncated inside member {name!r} (byte {base + len(view)})")
        yield name, bytes(view[offset + 512 : end])
        offset = end + (-size % 512)
    if offset != len(view):
        raise ValueError(f"{where}: the sample range ends inside a member (byte {base + len(view)})")


_ZERO_BLOCK = bytes(512)


def _valid_ustar_header(header: bytes) -> bool:
    """ustar magic and the checksum (sum of the header bytes with the checksum field read as spaces)."""
    stored = header[148:156].strip(b"\0 ")
    return (header[257:263] == b"ustar\x00" and stored.isdigit()
            and int(stored, 8) == sum(header[:148]) + 8 * 32 + sum(header[156:]))


def iter_shard_samples(stream: IO[bytes], where: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, parts) of a shard this project wrote (``TarWriter``: plain ustar regular files), fast.

    ``tarfile`` spends ~54 us per member; parsing the fixed header format directly takes ~10 us, which is
    what lets tokenisation keep up with the model. Anything else (compression, pax or GNU
    headers, links, truncation, a bad checksum) is a ``ValueError`` naming the shard and offset;
    shards from outside go through ``iter_tar_samples``.
    """
    yield from _group_by_key(_iter_ustar_members(stream, where), where)


def iter_range_samples(data: bytes, where: str, base: int = 0) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, parts) of consecutive whole samples read from a shard's byte range (an offset index gives it)."""
    yield from _group_by_key(_iter_buffer_members(data, where, base), where)


def ustar_header(name: bytes, size: int) -> bytes:
    """The 512-byte header tarfile would write for a regular file (mode 644, owner 0, mtime 0).

    Built directly because ``tarfile.addfile`` spends ~100 us per member in pure Python, which dominates
    writing many small samples; names must be ASCII and under 100 bytes (others go through tarfile).
    """
    head = bytearray(512)
    head[0 : len(name)] = name
    head[100:108] = b"0000644\0"
    head[108:116] = b"0000000\0"
    head[116:124] = b"0000000\0"
    head[124:136] = b"%011o\0" % size
    head[136:148] = b"00000000000\0"
    head[148:156] = b"        "
    head[156:157] = b"0"
    head[257:265] = b"ustar\x0000"
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


class _HashingWriter:
    """A write-only file wrapper that digests what passes through (what tarfile needs: write, tell)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def tell(self) -> int:
        return self.handle.tell()


class TarWriter:
    """Deterministic tar writer; the archive appears at ``path`` only when closed without error.

    With ``index=True`` the offset index (``<path>.idx``) is written just before the archive appears, so a
    shard that exists has its index.
    """

    def __init__(self, path: str | Path, index: bool = False) -> None:
        self.path = Path(path)
        self._ctx = atomic_write(self.path)
        self._file = _HashingWriter(self._ctx.__enter__())
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - close()
        self.count = 0
        self._offsets: list[int] | None = [] if index else None

    @property
    def sha256(self) -> str:
        """Digest of every byte written so far (the whole archive once closed)."""
        return self._file.digest.hexdigest()

    def add(self, name: str, data: bytes) -> None:
        encoded = name.encode()
        if len(encoded) >= 100 or not encoded.isascii() or len(data) >= 8**11:  # needs pax: tarfile does it
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            return
        self._file.write(ustar_header(encoded, len(data)))
        self._file.write(data)
        self._file.write(b"\0" * (-len(data) % 512))
        self._tar.offset += 512 + len(data) + (-len(data) % 512)

    def add_sample(self, key: str, parts: dict[str, bytes]) -> None:
        if self._offsets is not None:
            self._offsets.append(self._tar.offset)
        for ext in sorted(parts):
            self.add(f"{key}.{ext}", parts[ext])
        self.count += 1

    def close(self, ok: bool = True) -> None:
        end = self._tar.offset  # before the end-of-archive blocks that close() appends
        self._tar.close()
        if ok:
            if self._offsets is not None:
                write_offsets(self.path, [*self._offsets, end])
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


class RollingTarWriter:
    """Writes ``{prefix}-000000.tar``, ``{prefix}-000001.tar`` ... with at most ``per_shard`` samples each."""

    def __init__(self, folder: str | Path, prefix: str, per_shard: int, index: bool = False) -> None:
        self.folder, self.prefix, self.per_shard, self.index = Path(folder), prefix, per_shard, index
        self.shards: list[str] = []
        self.counts: list[int] = []
        self.digests: list[str] = []  # SHA-256 of each closed shard
        self._writer: TarWriter | None = None

    @property
    def current_shard(self) -> str:
        return self.shards[-1]

    def add_sample(self, key: str, parts: dict[str, bytes]) -> str:
        """Add a sample; returns the name of the shard it went to."""
        if self._writer is None or self._writer.count >= self.per_shard:
            self._roll()
        assert self._writer is not None
        self._writer.add_sample(key, parts)
        self.counts[-1] += 1
        return self.current_shard

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.digests.append(self._writer.sha256)
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self.shards.append(name)
        self.counts.append(0)
        self._writer = TarWriter(self.folder / name, index=self.index)

    def close(self, ok: bool = True) -> None:
        if self._writer is not None:
            self._writer.close(ok=ok)
            if ok:
                self.digests.append(self._writer.sha256)
            self._writer = None

    def shard_table(self) -> dict[str, dict[str, int | str]]:
        """name -> samples and SHA-256 of every shard written (for ``shards.json``), once closed."""
        return {name: {"samples": n, "sha256": digest}
                for name, n, digest in zip(self.shards, self.counts, self.digests, strict=True)}
