"""Every example in examples/ and every Python block in README.md runs, for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

pytestmark = pytest.mark.nats


def _run(args: list[str], home: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TETHER_HOME": str(home), "TETHER_NATS_URL": url}
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(example: Path, tmp_path: Path, nats_server) -> None:  # type: ignore[no-untyped-def]
    done = _run([str(example)], tmp_path, nats_server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "an example should show what it did"


def test_readme_python_blocks_run(tmp_path: Path, nats_server) -> None:  # type: ignore[no-untyped-def]
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "README should have at least one Python example"
    for i, block in enumerate(blocks):
        script = tmp_path / f"readme_{i}.py"
        script.write_text(block)
        done = _run([str(script)], tmp_path, nats_server.url)
        assert done.returncode == 0, f"README block {i} failed:\n{block}\n{done.stderr}"


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block[1].splitlines()]
    assert commands == ["make run", "make test"]
    assert text.index("make run") < 200


def test_ci_runs_make_test() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "set -e" in ci


def test_reliability_doc_config_blocks_load(tmp_path: Path) -> None:
    """Every TOML block in docs/reliability.md is a valid tether.toml."""
    from tether.middleware import load_worker_config

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "reliability.md").read_text(), re.S)
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        path = tmp_path / f"block{i}.toml"
        path.write_text(block)
        config = load_worker_config(path)
        assert config.source == str(path)
    full = load_worker_config(tmp_path / "block1.toml")
    assert full.policies.policy_for("anything:x").retry.max_attempts == 3
