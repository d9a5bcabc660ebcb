import io

import numpy as np
import pytest
from PIL import Image

from dualtoken.curation.phash import hamming, near_duplicates, phash
from dualtoken.curation.split import assign_split


def _random_hashes(n: int, bits: int, seed: int = 0) -> list[str]:
    raw = np.random.default_rng(seed).integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    return [row.tobytes().hex() for row in raw]


def _flip(h: str, positions: list[int]) -> str:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8))
    bits[positions] ^= 1
    return np.packbits(bits).tobytes().hex()


def _brute_force(hashes: list[str], t: int) -> np.ndarray:
    out = np.full(len(hashes), -1)
    for j in range(len(hashes)):
        for i in range(j):
            if out[i] == -1 and hamming(hashes[i], hashes[j]) <= t:
                out[j] = i
                break
    return out


@pytest.mark.parametrize(("bits", "threshold"), [(64, 0), (64, 3), (256, 4), (256, 10)])
def test_banded_search_matches_brute_force(bits, threshold):
    hashes = _random_hashes(300, bits)
    rng = np.random.default_rng(1)
    for k in range(40):  # plant neighbours at distances 0..threshold+2
        src = hashes[int(rng.integers(len(hashes)))]
        d = k % (threshold + 3)
        hashes.append(_flip(src, list(rng.choice(bits, size=d, replace=False))))
    got = near_duplicates(hashes, threshold)
    expected = _brute_force(hashes, threshold)
    assert (got >= 0).sum() >= 10
    assert np.array_equal(got, expected)


def test_disabled_or_tiny_inputs():
    hashes = _random_hashes(5, 64)
    assert (near_duplicates(hashes + hashes, -1) == -1).all()
    assert near_duplicates(hashes[:1], 5).tolist() == [-1]


def test_phash_is_robust_to_reencoding_but_separates_different_images():
    rng = np.random.default_rng(0)
    base = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(base).resize((64, 64), Image.BICUBIC))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=70)
    jpeg = np.asarray(Image.open(buf).convert("RGB"))
    other = np.asarray(Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((64, 64)))
    for size in (8, 16):
        h, h_jpeg, h_other = phash(img, size), phash(jpeg, size), phash(other, size)
        assert len(h) == size * size // 4
        assert hamming(h, h_jpeg) <= size * size // 8
        assert hamming(h, h_other) > size * size // 4


def test_split_is_stable_and_close_to_fractions():
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    raw = np.random.default_rng(0).integers(0, 256, size=(20000, 32), dtype=np.uint8)
    digests = [row.tobytes().hex() for row in raw]
    first = [assign_split(d, fractions) for d in digests]
    assert first == [assign_split(d, fractions) for d in digests]  # pure function of the digest
    counts = {s: first.count(s) / len(first) for s in fractions}
    assert all(abs(counts[s] - f) < 0.01 for s, f in fractions.items())
    # a sample keeps its split when the corpus grows: nothing about other samples enters the decision
    assert assign_split(digests[0], fractions) == first[0]


@pytest.mark.parametrize(("name", "size"), [("a.png", 0), ("s0000001.json", 12345), ("x" * 99, 7), ("d/k.txt", 511)])
def test_fast_tar_header_matches_tarfile(name, size):
    import tarfile

    from dualtoken.data.tarstream import ustar_header

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    assert ustar_header(name.encode(), size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize(("name", "key", "ext"), [
    ("abc.jpg", "abc", "jpg"), ("./abc.JPG", "abc", "jpg"), ("d/e/x.seg.png", "d/e/x", "seg.png"),
    ("noext", "noext", "")])
def test_member_names_split_like_webdataset(name, key, ext):
    from dualtoken.data.tarstream import split_member_name

    assert split_member_name(name) == (key, ext)
