"""Every part reads its settings from the same file the same way (tether._configfile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether._configfile import config_file, tether_table
from tether.memory import InvalidMemory
from tether.memory._settings import load_settings
from tether.middleware import PolicyConfigError, load_policies


def test_tether_toml_then_pyproject_then_nothing(tmp_path: Path) -> None:
    assert config_file(cwd=tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[tool.tether.memory]\nmax_text_bytes = 10\n')
    assert config_file(cwd=tmp_path) == tmp_path / "pyproject.toml"
    assert tether_table(tmp_path / "pyproject.toml") == {"memory": {"max_text_bytes": 10}}
    (tmp_path / "tether.toml").write_text('[memory]\nmax_text_bytes = 20\n')
    assert config_file(cwd=tmp_path) == tmp_path / "tether.toml"
    assert config_file(tmp_path / "elsewhere.toml", cwd=tmp_path) == tmp_path / "elsewhere.toml"


def test_a_pyproject_without_tool_tether_is_empty(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert tether_table(tmp_path / "pyproject.toml") == {}


def test_tool_tether_that_is_no_table_is_refused_by_every_reader(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool]\ntether = 3\n')
    with pytest.raises(ValueError, match="must be a table"):
        tether_table(tmp_path / "pyproject.toml")
    with pytest.raises(PolicyConfigError, match="must be a table"):
        load_policies(cwd=tmp_path)
    with pytest.raises(InvalidMemory, match="must be a table"):
        load_settings(cwd=tmp_path)


@pytest.mark.parametrize(("text", "error", "where"), [
    ("[providers.openai]\nheaders = 3\n", PolicyConfigError, "providers.openai.headers: must be a table"),  # TypeError
    ("[providers.openai]\nbase_url = 5\n", PolicyConfigError, "providers.openai.base_url: expected a string"),
    ('[worker]\ntools = [""]\n', PolicyConfigError, "worker.tools[0]: must not be empty"),
    ("[memory]\nview_dir = 5\n", InvalidMemory, "memory.view_dir: expected a string, got an integer"),
    ("[memory]\nkeyfile = true\n", InvalidMemory, "memory.keyfile: expected a string, got a boolean"),
])
def test_values_that_were_accepted_or_crashed_are_refused_with_their_path(
        tmp_path: Path, text: str, error: type[Exception], where: str) -> None:
    """main accepted these (a path of 5, an empty tool module) or crashed (headers = 3: TypeError)."""
    from tether.middleware import load_worker_config

    file = tmp_path / "tether.toml"
    file.write_text(text)
    with pytest.raises(error) as caught:
        load_settings(file) if error is InvalidMemory else load_worker_config(file)
    assert str(caught.value) == f"{file}: {where}" or str(caught.value).startswith(f"{file}: {where}")


def test_every_problem_of_a_section_is_reported_at_once(tmp_path: Path) -> None:
    from tether.middleware import load_worker_config

    file = tmp_path / "tether.toml"
    file.write_text('[routes."*".retry]\nmax_attempts = 0\n[worker]\nconcurrency = 0\n')
    with pytest.raises(PolicyConfigError) as caught:
        load_worker_config(file)
    assert str(caught.value).splitlines() == [f'{file}: routes."*".retry.max_attempts: must be at least 1, got 0',
                                              f"{file}: worker.concurrency: must be at least 1, got 0"]
