"""The wheel stands on its own: it carries every file the package reads at run time, and its extras."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel ``pip wheel --no-deps`` builds, from a copy of the tree (the build writes build/ beside it)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("deltamem-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_the_typing_marker_and_the_servers_files(wheel):
    names = set(wheel.namelist())
    assert "deltamem/py.typed" in names
    static = {p.name for p in (ROOT / "src" / "deltamem" / "server" / "static").iterdir() if p.is_file()}
    assert static and {f"deltamem/server/static/{name}" for name in static} <= names
    assert "deltamem/frames.py" in names and "deltamem/sql/dialect.py" in names


def test_the_wheel_declares_its_command_and_extras(wheel):
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    text = wheel.read(metadata).decode()
    requires = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    assert "fastapi-offline>=1.7" in requires  # /docs: Swagger UI from the package, not a CDN
    assert 'torch==2.13.0; extra == "local"' in requires  # pinned: an unpinned torch pulls a multi-GB CUDA build
    assert 'pandas>=2.1; extra == "pandas"' in requires
    assert not any(r.startswith("torch") and "extra" not in r for r in requires)  # torch only with [local]
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "deltamem = deltamem.cli:app" in wheel.read(entry_points).decode()
