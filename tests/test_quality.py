"""The code stays clean: ruff and mypy (strict, on ``tether/``) pass with pyproject.toml's settings.

They run here, as part of the suite, so CI enforces them like any other test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The code's cleanliness does not depend on dependency versions: `make test-lowest` skips these (-m "not lint").
pytestmark = pytest.mark.lint

ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def test_ruff_finds_nothing() -> None:
    result = run_tool("ruff", "check", "tether", "tests", "bench")
    assert result.returncode == 0, f"ruff check failed:\n{result.stdout}{result.stderr}"


def test_mypy_strict_finds_nothing() -> None:
    result = run_tool("mypy")
    assert result.returncode == 0, f"mypy failed:\n{result.stdout}{result.stderr}"
