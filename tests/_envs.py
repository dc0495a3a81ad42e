"""Optional test environments: a virtualenv of its own per heavy tool, built from a hashed lock file.

``optional_env("phoenix")`` makes ``.venv-phoenix`` exactly ``requirements/phoenix.txt`` with the
project's pinned uv (``uv pip sync --require-hashes``), once: a stamp holding the lock file's hash
makes later runs reuse it, and a changed lock rebuilds it. ``make lock`` refreshes the lock files.
``project=True`` (the framework venvs) then installs tether itself from the checkout, editable and
without dependencies: the lock holds them (compiled from ``-e .`` with ``--no-emit-package tether``).
Where the environment cannot be built the test is skipped with the reason, except in CI
(``CI=true``), where that is a failure.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["OptionalEnv", "optional_env"]

ROOT = Path(__file__).resolve().parents[1]
STAMP = ".tether-lock"
# How a venv is built, part of its stamp: a change here rebuilds the venvs built the old way.
# Bytecode is compiled at install: the tests set PYTHONDONTWRITEBYTECODE, so without it every agent
# process the tests start compiles its framework from source (CrewAI: 6.5 s to import, 3.9 s compiled).
RECIPE = b"sync --require-hashes --compile-bytecode"


@dataclass(frozen=True)
class OptionalEnv:
    """A built environment: where it is, and what building it took (0 when reused)."""

    path: Path
    build_s: float

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name


def _uv() -> str | None:
    pinned = ROOT / ".uv" / "bin" / "uv"  # what `make` bootstraps
    return str(pinned) if pinned.exists() else shutil.which("uv")


def _unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (in CI this environment must build)")
    pytest.skip(why)


def optional_env(name: str, *, lock: Path | None = None, root: Path = ROOT, timeout: float = 900,
                 project: bool = False) -> OptionalEnv:
    """``root/.venv-{name}`` synced to ``lock`` (default ``requirements/{name}.txt``), built only when stale."""
    lock = lock or root / "requirements" / f"{name}.txt"
    if not lock.exists():
        _unavailable(f"no lock file {lock}: run `make lock`")
    venv = root / f".venv-{name}"
    digest = hashlib.sha256(lock.read_bytes() + RECIPE).hexdigest()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(root / f".venv-{name}.flock", "w") as guard:  # one builder at a time (parallel test runs)
        fcntl.flock(guard, fcntl.LOCK_EX)
        stamp = venv / STAMP
        if stamp.exists() and stamp.read_text().strip() == digest:
            return OptionalEnv(venv, 0.0)
        uv = _uv()
        if uv is None:
            _unavailable("uv is not installed: `make .venv/.tether-installed` bootstraps it into .uv")
        assert uv is not None
        started = time.monotonic()
        env = {**os.environ, "VIRTUAL_ENV": str(venv)}
        steps = [[uv, "venv", "--quiet", "--allow-existing", "--python", sys.executable, str(venv)],
                 [uv, "pip", "sync", "--quiet", "--require-hashes", "--compile-bytecode", str(lock)]]
        if project:  # tether from this checkout: sync removed it (it is not in the lock)
            steps.append([uv, "pip", "install", "--quiet", "--no-deps", "-e", str(root)])
        for step in steps:
            try:
                done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                _unavailable(f"building {venv.name} took over {timeout:.0f} s: {' '.join(step)}")
                raise  # not reached
            if done.returncode != 0:
                _unavailable(f"could not build {venv.name} from {lock.name}: {' '.join(step[:3])} exited "
                             f"{done.returncode}: {done.stderr.strip()[-2000:]}")
        (venv / ".gitignore").write_text("*\n")  # the whole venv stays out of git
        stamp.write_text(digest + "\n")
        return OptionalEnv(venv, time.monotonic() - started)
