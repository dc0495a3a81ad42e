"""Where memory keeps its files, and its section of tether.toml.

::

    [memory]
    view_dir = ".tether/memory"      # default TETHER_HOME/memory
    keyfile = ".tether/keys/memory-keys.json"
    max_text_bytes = 32768
    dedupe = true                    # merge near-duplicate writes (auto keys only)

    [memory.grants]                  # see tether.memory.Grants
    "*" = { read = ["agent:{agent}", "global"], write = ["agent:{agent}"] }
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether._configfile import config_file, tether_table
from tether.bus import tether_home

from ._errors import InvalidMemory
from ._grants import Grants

__all__ = ["MemorySettings", "default_keyfile", "default_view_dir", "load_settings"]


def default_view_dir() -> Path:
    return tether_home() / "memory"


def default_keyfile() -> Path:
    return tether_home() / "keys" / "memory-keys.json"


@dataclass(frozen=True)
class MemorySettings:
    view_dir: Path = field(default_factory=default_view_dir)
    keyfile: Path = field(default_factory=default_keyfile)
    max_text_bytes: int = 32 * 1024
    dedupe: bool = True
    grants: Grants = field(default_factory=Grants.open)
    source: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str | None = None) -> MemorySettings:
        where = f" in {source}" if source else ""
        known = {"view_dir", "keyfile", "max_text_bytes", "dedupe", "grants"}
        unknown = set(data) - known
        if unknown:
            raise InvalidMemory(f"memory.{sorted(unknown)[0]}{where}: unknown key (known: {', '.join(sorted(known))})")
        out: dict[str, Any] = {"source": source}
        if "view_dir" in data:
            out["view_dir"] = Path(str(data["view_dir"]))
        if "keyfile" in data:
            out["keyfile"] = Path(str(data["keyfile"]))
        if "max_text_bytes" in data:
            limit = data["max_text_bytes"]
            if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 512 * 1024:
                raise InvalidMemory(f"memory.max_text_bytes{where}: an integer from 1 to 524288")
            out["max_text_bytes"] = limit
        if "dedupe" in data:
            if not isinstance(data["dedupe"], bool):
                raise InvalidMemory(f"memory.dedupe{where}: true or false")
            out["dedupe"] = data["dedupe"]
        if "grants" in data:
            if not isinstance(data["grants"], Mapping):
                raise InvalidMemory(f"memory.grants{where}: must be a table")
            out["grants"] = Grants.from_mapping(data["grants"], source=source)
        return cls(**out)


def load_settings(path: str | Path | None = None, *, cwd: Path | None = None) -> MemorySettings:
    """``[memory]`` from ``tether.toml`` (or ``[tool.tether.memory]`` in pyproject.toml); defaults if none."""
    file = config_file(path, cwd=cwd)
    if file is None:
        return MemorySettings()
    try:
        data = tether_table(file)
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise InvalidMemory(f"cannot read {file}: {exc}") from None
    section = data.get("memory")
    if section is None:
        return MemorySettings(source=str(file))
    if not isinstance(section, Mapping):
        raise InvalidMemory(f"memory in {file}: must be a table")
    return MemorySettings.from_mapping(section, source=str(file))
