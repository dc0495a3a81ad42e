"""The one model of ``tether.toml``: every section, each from the package that owns it.

:class:`TetherConfig` is the worker's part (policies, ``[providers.*]``, ``[worker]``, from
tether.middleware) plus ``[gateway]`` (tether.adapters.gateway) and ``[memory]``
(tether.memory). The CLI reads the file through it, so every command refuses a bad key
anywhere in the file; ``tether schemas export`` writes its JSON Schema for editors. Only
the CLI imports this module: the packages read their own sections (tests/test_docs.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from tether.adapters import ResumeSection
from tether.adapters.gateway import GatewayConfig, GatewaySection
from tether.memory import MemorySection, MemorySettings
from tether.middleware import WorkerConfig, WorkerFile, read_table

__all__ = ["SCHEMA_FILE", "TetherConfig", "config_schema", "export_config_schema", "gateway_config", "load_config",
           "memory_settings", "worker_config"]

SCHEMA_FILE = "tether-config.json"
SCHEMA_ID = "urn:tether:schema:config:v1"


class TetherConfig(WorkerFile):
    """tether.toml (or [tool.tether] in pyproject.toml): tether's settings, one section per part."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, title="tether.toml")

    gateway: GatewaySection = GatewaySection()
    """The OpenAI/Anthropic-compatible gateway (tether gateway)."""
    memory: MemorySection = MemorySection()
    """Event-sourced memory: where its files live, its limits and grants."""
    resume: ResumeSection = ResumeSection()
    """Resuming runs whose process died: each agent's entry point (tether resume)."""


def load_config(path: str | Path | None = None, *, cwd: Path | None = None) -> tuple[TetherConfig, str | None]:
    """The whole file, validated, and its name (defaults and None when there is no file).

    Raises ``PolicyConfigError`` naming the file, every bad key's dotted path and what it allows."""
    source, data = read_table(path, cwd)
    return TetherConfig.parse(data, source=source), source


def worker_config(path: str | Path | None = None) -> WorkerConfig:
    config, source = load_config(path)
    return config.worker_config(source)


def gateway_config(path: str | Path | None = None) -> GatewayConfig:
    config, source = load_config(path)
    worker = config.worker_config(source)
    return GatewayConfig.from_section(config.gateway, providers=worker.providers, policies=worker.policies,
                                      source=source)


def memory_settings(path: str | Path | None = None) -> MemorySettings:
    config, source = load_config(path)
    return config.memory.settings(source)


def _default(value: Any) -> Any:
    """A default as a TOML file would write it: no null, sets in order (the export is stable)."""
    if isinstance(value, dict):
        return {key: _default(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        items = [_default(item) for item in value]
        return sorted(items) if all(isinstance(i, str) for i in items) or all(
            isinstance(i, int) for i in items) else items
    return value


def _markdown(text: Any) -> Any:
    """A docstring's reST as the Markdown editors show: ``x`` and :attr:`x` become `x`."""
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text.replace("``", "`")) if isinstance(text, str) else text


def _without_null(node: Any) -> Any:
    """TOML has no null: an unset option is an absent key, so the schema offers no null."""
    if isinstance(node, list):
        return [_without_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _default(value) if key == "default" else _markdown(value) if key == "description"
           else _without_null(value) for key, value in node.items() if not (key == "default" and value is None)}
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        del out["anyOf"]
        out = {**rest[0], **out} if len(rest) == 1 else {**out, "anyOf": rest}
    return out


def config_schema() -> dict[str, Any]:
    """The JSON Schema of tether.toml, for editors: draft-07, which taplo (Even Better TOML) and VS Code read."""
    schema = _without_null(TetherConfig.model_json_schema(mode="validation"))
    return {"$schema": "http://json-schema.org/draft-07/schema#", "$id": SCHEMA_ID, **schema}


def export_config_schema(directory: str | Path) -> Path:
    """Write :data:`SCHEMA_FILE` into ``directory``."""
    path = Path(directory) / SCHEMA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_schema(), indent=2) + "\n", encoding="utf-8")
    return path
