"""The package wheel every logged model carries: the imported package's files, valid RECORD, same bytes twice."""

import base64
import hashlib
import re
import zipfile
from pathlib import Path

import dualtoken
from dualtoken.serving.wheel import build_wheel, wheel_name


def test_the_wheel_holds_the_package_with_a_valid_record_and_builds_reproducibly(tmp_path):
    wheel = build_wheel(tmp_path / "a")
    assert wheel.name == wheel_name() and re.fullmatch(r"dualtoken-[\d.]+-py3-none-any\.whl", wheel.name)
    assert wheel.read_bytes() == build_wheel(tmp_path / "b").read_bytes()
    package = Path(dualtoken.__file__).parent
    expected = {f"dualtoken/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")
                if "__pycache__" not in p.parts}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert expected <= names and "dualtoken/serving/pyfunc_mllm.py" in names
        assert not any("__pycache__" in n for n in names)
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        assert "Root-Is-Purelib: true" in archive.read(f"{info}/WHEEL").decode()
        assert "Requires-Dist" not in archive.read(f"{info}/METADATA").decode()  # the model's requirements pin those
        for line in archive.read(f"{info}/RECORD").decode().splitlines():
            name, digest, size = line.split(",")
            if name.endswith("RECORD"):
                continue
            data = archive.read(name)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)
        assert archive.read("dualtoken/serving/wheel.py") == (package / "serving" / "wheel.py").read_bytes()
