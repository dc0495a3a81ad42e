"""The dashboard works offline: every asset ships in the package (and in the wheel), with its licence."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tether.ui._pages import layout

ROOT = Path(__file__).parents[2]
STATIC = ROOT / "tether" / "ui" / "static"
UV = ROOT / ".uv" / "bin" / "uv"


def shipped() -> list[str]:
    return sorted(str(p.relative_to(STATIC.parent)) for p in STATIC.rglob("*") if p.is_file())


def test_every_asset_is_package_data() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tether.ui"]
    files = shipped()
    assert {"static/app.js", "static/app.css", "static/vendor/htmx/htmx.min.js",
            "static/vendor/uplot/uPlot.iife.min.js"} <= set(files)
    missing = [f for f in files if not any(fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not missing, f"not in [tool.setuptools.package-data] of pyproject.toml: {missing}"


def test_each_vendored_piece_has_its_licence_and_version() -> None:
    listing = (STATIC / "vendor" / "README.md").read_text()
    for piece in sorted(p for p in (STATIC / "vendor").iterdir() if p.is_dir()):
        assert (piece / "LICENSE").stat().st_size > 100, piece.name
        assert f"`{piece.name}/`" in listing, f"{piece.name} is not listed in static/vendor/README.md"


def test_pages_load_nothing_from_elsewhere() -> None:
    page = layout("Runs", "<p>x</p>", active="/", csrf="c", live="traces")
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs and all(r.startswith("/") for r in refs), refs
    for asset in STATIC.glob("*.*"):
        assert not re.search(r"https?://", asset.read_text()), f"{asset.name} names a remote URL"


@pytest.mark.slow
def test_the_built_wheel_carries_every_asset(tmp_path: Path) -> None:
    """Built from a copy of the sources, as a user's `pip install` builds it."""
    if not UV.exists():
        why = "no .uv/bin/uv to build the wheel with: `make .venv/.tether-installed` bootstraps it"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(why)
        pytest.skip(why)
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "tether", source / "tether", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([str(UV), "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [wheel] = (tmp_path / "dist").glob("tether-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in shipped() if f"tether/ui/{f}" not in names]
    assert not missing, f"not in the wheel: {missing}"


def test_without_chromium_the_browser_tests_say_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from .conftest import chromium

    monkeypatch.delenv("TETHER_TEST_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on it
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"install it with `apt-get install -y chromium`"):
        chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        chromium()
