"""Every example in examples/ and every Python block in README.md runs, for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._ast import parse

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


# -- docs that must not drift from the code -------------------------------------------------------


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table that starts with ``header`` (separator row skipped)."""
    lines = text[text.index(header):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _tether_imports(package: str) -> set[str]:
    """The public tether packages and modules that ``tether.<package>`` imports (any module of it)."""
    import ast

    found: set[str] = set()
    base = ROOT / "tether" / package
    for path in base.rglob("*.py"):
        for node in ast.walk(parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the module's own package
                    parts = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                    names = [".".join(parts) + (f".{node.module}" if node.module else "")]
                else:
                    names = [node.module or ""]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "tether" and len(parts) > 1 and not parts[1].startswith("_") and parts[1] != package:
                    found.add(parts[1])
    return found


def test_architecture_layer_table_matches_the_imports() -> None:
    rows = _table_rows((ROOT / "docs" / "architecture.md").read_text(), "| package | owns | imports | status |")
    packages = {p.name for p in (ROOT / "tether").iterdir() if (p / "__init__.py").exists()}
    documented = {}
    for package, _owns, imports, _status in rows:
        name = package.strip("`").removeprefix("tether.")
        documented[name] = set() if imports == "nothing of tether" else set(imports.split(", "))
    assert packages <= set(documented), f"packages missing from the layer table: {packages - set(documented)}"
    for name in sorted(packages):
        assert documented[name] == _tether_imports(name), f"tether.{name}: the table says {sorted(documented[name])}"


def test_only_the_cli_imports_the_model_of_the_whole_config_file() -> None:
    """tether._config imports middleware, the gateway and memory: below the CLI it would be a cycle."""
    import ast

    importers = set()
    for path in (ROOT / "tether").rglob("*.py"):
        for node in ast.walk(parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(name == "tether._config" or name.startswith("tether._config.") for name in names):
                importers.add(path.relative_to(ROOT / "tether").parts[0])
    assert importers == {"cli"}


def test_architecture_cli_row_lists_every_command() -> None:
    import argparse

    from tether.cli import build_parser

    rows = _table_rows((ROOT / "docs" / "architecture.md").read_text(), "| package | owns | imports | status |")
    [cli] = [row for row in rows if row[0] == "`tether.cli`"]
    listed = {command.split()[0] for command in re.findall(r"`([^`]+)`", cli[3])}
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert listed == set(commands.choices)


def test_events_catalogue_table_matches_the_catalogue() -> None:
    from tether.schemas import catalogue

    rows = _table_rows((ROOT / "docs" / "events.md").read_text(), "| type | v | payload | subject key |")
    documented = {row[0].strip("`"): int(row[1]) for row in rows}
    assert documented == {event_type: model.schema_version for event_type, model in catalogue().items()}


def test_docs_import_the_fake_provider_from_tether_testing() -> None:
    """One import for users: ``from tether.testing import FakeProvider`` (as docs/testing.md says)."""
    texts = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *EXAMPLES]
    offenders = [p.name for p in texts if "tether.testing.fake_provider" in p.read_text()]
    assert offenders == []
    assert "from tether.testing import FakeProvider" in (ROOT / "README.md").read_text()


def test_readme_shows_instrument_near_the_top() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert "tether.instrument(" in blocks[0], "the first Python example is tether.instrument"
    assert text.index("tether.instrument(openai") < text.index("## Watch it work")
    assert 'ProviderConfig("' not in text, "ProviderConfig with keywords, so it reads without the docs"
