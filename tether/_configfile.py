"""Where tether's settings live, read the same way by every part that has some.

``tether.toml`` in the working directory, else ``[tool.tether]`` of its ``pyproject.toml``;
a path given explicitly is read as it is (its ``[tool.tether]`` if it is a pyproject.toml).
Each part takes its own section of the table and says what is wrong in its own error type.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

__all__ = ["config_file", "tether_table"]


def config_file(path: str | Path | None = None, *, cwd: Path | None = None) -> Path | None:
    """``path``; else ``tether.toml`` in ``cwd``; else its ``pyproject.toml``; else None."""
    if path is not None:
        return Path(path)
    base = Path.cwd() if cwd is None else cwd
    return next((f for f in (base / "tether.toml", base / "pyproject.toml") if f.is_file()), None)


def tether_table(file: Path) -> dict[str, Any]:
    """The settings in ``file``: the whole file, or a pyproject.toml's ``[tool.tether]`` ({} if none).

    Raises ``OSError`` if it cannot be read, ``tomllib.TOMLDecodeError`` if it is not TOML,
    and ``ValueError`` if ``[tool.tether]`` is not a table."""
    data: dict[str, Any] = tomllib.loads(file.read_text(encoding="utf-8"))
    if file.name != "pyproject.toml":
        return data
    tool = data.get("tool", {})
    table = tool.get("tether", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        raise ValueError("[tool.tether] must be a table")
    return table
