"""The installed ``dualtoken`` package as one pure-Python wheel, shipped inside every logged model.

A registered model must load where this repository is not: ``mlflow models serve/predict`` builds an
environment from the model's requirements, and one of them is this wheel (a path inside the model). One file,
because the tracking server takes one upload per file and the package has about a hundred. Written here from
the package the run imported (no build backend on a cluster node), byte-identical for the same sources.
The wheel declares no dependencies: the model's own requirements pin those.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from importlib.metadata import version
from pathlib import Path

import dualtoken

_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: the same bytes every build


def wheel_name() -> str:
    return f"dualtoken-{version('dualtoken')}-py3-none-any.whl"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out_dir: str | Path) -> Path:
    """Write ``dualtoken-<version>-py3-none-any.whl`` into ``out_dir``; returns its path."""
    package = Path(dualtoken.__file__).parent
    files = sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    ver = version("dualtoken")
    info = f"dualtoken-{ver}.dist-info"
    entries = [(f"dualtoken/{p.relative_to(package).as_posix()}", p.read_bytes()) for p in files]
    entries += [(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: dualtoken\nVersion: {ver}\n".encode()),
                (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: dualtoken.serving.wheel\n"
                                  b"Root-Is-Purelib: true\nTag: py3-none-any\n")]
    record = "\n".join([*(_record_line(n, d) for n, d in entries), f"{info}/RECORD,,"]) + "\n"
    entries.append((f"{info}/RECORD", record.encode()))
    path = Path(out_dir) / wheel_name()
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in entries:
            member = zipfile.ZipInfo(name, _EPOCH)
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o644 << 16
            wheel.writestr(member, data)
    return path
