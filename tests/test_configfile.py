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
