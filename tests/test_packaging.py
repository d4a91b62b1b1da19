"""The wheel pip installs: every package, none of the measurement scripts, the entry points, and
requirements pip alone can satisfy (rapidocr 3.x rather than rapidocr-onnxruntime, which needs
``--no-deps`` to stay off EasyOCR's ``cv2``). scripts/check_wheel.sh installs it in a clean venv."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCES = (".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
               "demo", "runs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built from a copy of the sources (a build writes build/ and egg-info/ beside them)."""
    src = tmp_path_factory.mktemp("src") / "etalage"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "--quiet", "--wheel-dir", str(out), str(src)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (path,) = out.glob("etalage-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def _dist_info(zf: zipfile.ZipFile, name: str) -> str:
    (member,) = [n for n in zf.namelist() if re.fullmatch(r"etalage-[^/]+\.dist-info/" + name, n)]
    return zf.read(member).decode()


def test_wheel_asks_pip_for_rapidocr_3(wheel):
    requires = {re.split(r"[\s;<>=!~\[(]", line.split(":", 1)[1].strip())[0].lower()
                for line in _dist_info(wheel, "METADATA").splitlines() if line.startswith("Requires-Dist:")}
    assert {"rapidocr", "onnxruntime", "easyocr", "opencv-python-headless", "torch"} <= requires
    assert not requires & {"rapidocr-onnxruntime", "rapidocr_onnxruntime", "opencv-python", "pytesseract"}
    assert re.search(r"^Requires-Dist: rapidocr<4,>=3\.10$", _dist_info(wheel, "METADATA"), re.M)


def test_wheel_holds_every_package_and_no_benchmark(wheel):
    tomllib = pytest.importorskip("tomllib")
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    names = set(wheel.namelist())
    for package in setup["packages"]:
        folder = ROOT / setup["package-dir"][package]
        sources = {f"{package.replace('.', '/')}/{f.name}" for f in folder.glob("*.py")}
        assert f"{package.replace('.', '/')}/__init__.py" in sources, package
        assert sources <= names, f"{package}: {sorted(sources - names)} missing from the wheel"
    assert "etalage/bench/__init__.py" in names and "etalage/specialists/testing.py" in names
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"etalage"}, "only the etalage namespace"
    assert not [n for n in names if "benchmarks" in n or n.startswith("tests/") or "/bench_" in n]


def test_wheel_entry_points(wheel):
    text = _dist_info(wheel, "entry_points.txt")
    sections = dict(re.findall(r"^\[([^\]]+)\]\n((?:[^\[\n][^\n]*\n?)*)", text, re.M))
    points = {k: dict(re.findall(r"^(\S+)\s*=\s*(\S+)$", v, re.M)) for k, v in sections.items()}
    assert points["console_scripts"] == {"etalage": "etalage.cli:main"}
    assert points["etalage.specialists"] == {"books": "etalage.specialists.books:BooksSpecialist",
                                             "music": "etalage.specialists.music:MusicSpecialist",
                                             "media": "etalage.specialists.media:MediaSpecialist",
                                             "title": "etalage.specialists.title:TitleSpecialist"}
