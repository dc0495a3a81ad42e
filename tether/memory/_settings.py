"""Where memory keeps its files, and its section of tether.toml.

::

    [memory]
    view_dir = ".tether/memory"      # default TETHER_HOME/memory
    keyfile = ".tether/keys/memory-keys.json"
    key_store = "file"               # or "nats": the keys in NATS KV, shared by every host
    max_text_bytes = 32768
    dedupe = true                    # merge near-duplicate writes (auto keys only)
    embedder = "none"                # or "static" / "minilm" / "asymmetric": hybrid search for tether's clients

    [memory.grants]                  # see tether.memory.Grants
    "*" = { read = ["agent:{agent}", "global"], write = ["agent:{agent}"] }

:class:`MemorySection` is the schema of ``[memory]``, defaults included.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from tether._configfile import config_file, problems, tether_table
from tether.bus import tether_home

from ._errors import InvalidMemory
from ._grants import Grants, GrantTable

if TYPE_CHECKING:
    from tether.bus import Bus

    from ._keys import KeyStore

__all__ = ["EmbedderKind", "KeyStoreKind", "MemorySection", "MemorySettings", "default_keyfile", "default_view_dir",
           "load_settings"]


def default_view_dir() -> Path:
    return tether_home() / "memory"


def default_keyfile() -> Path:
    return tether_home() / "keys" / "memory-keys.json"


_File = Annotated[StrictStr, Field(min_length=1)]
KeyStoreKind = Literal["file", "nats"]
EmbedderKind = Literal["none", "static", "minilm", "asymmetric"]


class MemorySection(BaseModel):
    """``[memory]`` of ``tether.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    view_dir: _File | None = None
    """Where the memory view lives; default TETHER_HOME/memory."""
    keyfile: _File | None = None
    """The erasure keystore; default TETHER_HOME/keys/memory-keys.json."""
    key_store: KeyStoreKind = "file"
    """Where erasure keys live: "file" (keyfile, one machine) or "nats" (KV bucket tether-keys, every host)."""
    max_text_bytes: Annotated[StrictInt, Field(ge=1, le=512 * 1024)] = 32 * 1024
    """The longest text one memory may hold, in UTF-8 bytes."""
    dedupe: StrictBool = True
    """Merge near-duplicate writes (auto keys only)."""
    embedder: EmbedderKind = "none"
    """The embedder of the memory clients tether creates (CLI, gateway, MCP, dashboard): "none" (keyword
    search), "static" (StaticEmbedder), "minilm" (LocalEmbedder) or "asymmetric" (AsymmetricEmbedder: writes
    by the static table, queries by MiniLM); each needs the [semantic] extra and the local MiniLM package."""
    grants: dict[str, GrantTable] | None = None
    """Agent id (or "*" for every agent) -> namespaces it may read and write; no table: grants are off."""

    def settings(self, source: str | None = None) -> MemorySettings:
        return MemorySettings(
            view_dir=Path(self.view_dir) if self.view_dir else default_view_dir(),
            keyfile=Path(self.keyfile) if self.keyfile else default_keyfile(), key_store=self.key_store,
            max_text_bytes=self.max_text_bytes, dedupe=self.dedupe, embedder=self.embedder,
            grants=Grants.open() if self.grants is None else Grants.of(self.grants), source=source)


_DEFAULTS = MemorySection()


@dataclass(frozen=True)
class MemorySettings:
    view_dir: Path = field(default_factory=default_view_dir)
    keyfile: Path = field(default_factory=default_keyfile)
    key_store: KeyStoreKind = "file"
    max_text_bytes: int = _DEFAULTS.max_text_bytes
    dedupe: bool = _DEFAULTS.dedupe
    embedder: EmbedderKind = "none"
    grants: Grants = field(default_factory=Grants.open)
    source: str | None = None
    home: Path | None = None  # where an embedder's distilled table is cached (None: TETHER_HOME)

    def open_keys(self, bus: Bus) -> KeyStore:
        """The keystore these settings name: the keyfile, or ``NatsKeyStore`` on ``bus``'s NATS
        (it connects: call it off the event loop, and ``close()`` it when done)."""
        from ._keys import FileKeyStore, NatsKeyStore

        if self.key_store == "nats":
            return NatsKeyStore.for_bus(bus)
        return FileKeyStore(self.keyfile)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str | None = None) -> MemorySettings:
        """``[memory]`` read by :class:`MemorySection`; :class:`InvalidMemory` names the file and the key."""
        try:
            section = MemorySection.model_validate(data)
        except ValidationError as exc:
            found = problems(exc, data, root=MemorySection, prefix=("memory",))
            raise InvalidMemory("\n".join(f"{source}: {path}: {problem}" if source else f"{path}: {problem}"
                                          for path, problem in found)) from None
        return section.settings(source)


def load_settings(path: str | Path | None = None, *, cwd: Path | None = None) -> MemorySettings:
    """``[memory]`` from ``tether.toml`` (or ``[tool.tether.memory]`` in pyproject.toml); defaults if none."""
    file = config_file(path, cwd=cwd)
    if file is None:
        return MemorySettings()
    try:
        data = tether_table(file)
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise InvalidMemory(f"cannot read {file}: {exc}") from None
    return MemorySettings.from_mapping(data.get("memory", {}), source=str(file))
