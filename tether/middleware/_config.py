"""The worker's configuration: policies, providers and worker settings from one file.

``tether.toml`` in the working directory, else ``[tool.tether]`` in ``pyproject.toml``,
else defaults (an explicit path wins). Policies are documented in ``_policy.py``; this
module adds::

    [providers.openai]            # one table per upstream
    kind = "openai"               # or "anthropic"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"  # the key itself never goes in the file

    [worker]
    concurrency = 64              # calls in flight per worker
    tools = ["myapp.tools"]       # modules that register tools on tether.middleware.tools
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether._configfile import config_file, tether_table

from ._policy import PolicyConfigError, PolicySet
from ._providers import ProviderConfig, ProviderConfigError

__all__ = ["WorkerConfig", "load_worker_config"]

OWN_SECTIONS = ("providers", "worker", "memory", "gateway")


@dataclass(frozen=True)
class WorkerConfig:
    policies: PolicySet = field(default_factory=PolicySet.default)
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    concurrency: int = 64
    tool_modules: tuple[str, ...] = ()
    source: str | None = None

    def import_tools(self) -> None:
        """Import the tool modules, so their ``@tools.tool`` registrations run."""
        for name in self.tool_modules:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise PolicyConfigError("worker.tools", f"cannot import {name!r}: {exc}",
                                        source=self.source) from None


def _read(path: str | Path | None, cwd: Path | None) -> tuple[str | None, dict[str, Any]]:
    file = config_file(path, cwd=cwd)
    if file is None:
        return None, {}
    try:
        return str(file), tether_table(file)
    except OSError as exc:
        raise PolicyConfigError("", f"cannot read: {exc}", source=str(file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyConfigError("", f"not valid TOML: {exc}", source=str(file)) from None
    except ValueError as exc:
        raise PolicyConfigError("tool.tether", "must be a table", source=str(file)) from exc


def load_worker_config(path: str | Path | None = None, *, cwd: Path | None = None) -> WorkerConfig:
    source, data = _read(path, cwd)
    policies = PolicySet.from_mapping(data, source=source, ignore=OWN_SECTIONS)
    providers = {}
    for name, section in (data.get("providers") or {}).items():
        if not isinstance(section, dict):
            raise PolicyConfigError(f"providers.{name}", "must be a table", source=source)
        try:
            providers[name] = ProviderConfig.from_mapping(name, section)
        except ProviderConfigError as exc:
            raise PolicyConfigError(f"providers.{name}", str(exc), source=source) from None
    worker = data.get("worker") or {}
    unknown = set(worker) - {"concurrency", "tools"}
    if unknown:
        raise PolicyConfigError(f"worker.{sorted(unknown)[0]}", "unknown key (known: concurrency, tools)",
                                source=source)
    concurrency = worker.get("concurrency", 64)
    if not isinstance(concurrency, int) or concurrency < 1:
        raise PolicyConfigError("worker.concurrency", "must be a positive integer", source=source)
    tools = worker.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise PolicyConfigError("worker.tools", "must be a list of module names", source=source)
    return WorkerConfig(policies, providers, concurrency, tuple(tools), source)
