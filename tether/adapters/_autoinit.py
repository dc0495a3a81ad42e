"""``tether.init()``: find the agent frameworks installed beside tether and install each one's
adapter (``tether.adapters.<framework>``), once. Finding one imports nothing
(``importlib.util.find_spec``); only an installed framework's adapter imports that framework.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable

__all__ = ["FRAMEWORKS", "init"]

# name -> (the module whose presence says it is installed, tether's adapter module or None: none yet)
FRAMEWORKS: dict[str, tuple[str, str | None]] = {
    "langgraph": ("langgraph", "tether.adapters.langgraph"),
    "openai-agents": ("agents", "tether.adapters.openai_agents"),
    "crewai": ("crewai", "tether.adapters.crewai"),
    "autogen": ("autogen_agentchat", "tether.adapters.autogen"),
    "google-adk": ("google.adk", "tether.adapters.google_adk"),
    "litellm": ("litellm", "tether.adapters.litellm"),
    "pydantic-ai": ("pydantic_ai", None),
    "llama-index": ("llama_index.core", "tether.adapters.llama_index"),
}
_ALIASES = {"langchain": "langgraph", "openai_agents": "openai-agents", "agents": "openai-agents",
            "google_adk": "google-adk", "adk": "google-adk", "pydantic_ai": "pydantic-ai", "llama_index": "llama-index",
            "llamaindex": "llama-index"}

_installed: set[str] = set()


def _name(given: str) -> str:
    name = _ALIASES.get(given.lower(), given.lower())
    if name not in FRAMEWORKS:
        raise ValueError(f"tether.init: unknown framework {given!r}; known: {', '.join(sorted(FRAMEWORKS))}")
    return name


def _installed_module(module: str) -> bool:
    try:  # a dotted name imports its parent package (google, llama_index), never the framework itself
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def init(*, exclude: Iterable[str] = (), only: Iterable[str] | None = None) -> list[str]:
    """Install the adapter of every framework found (``only`` those named; none of ``exclude``):
    runs, tool calls and handoffs recorded with no change to the agent's code. Idempotent: a
    framework's adapter is installed once per process. Returns the frameworks now instrumented.

    The model calls go through tether once its client is given to tether: see each framework's page
    (``docs/frameworks/``)."""
    skipped = {_name(n) for n in exclude}
    wanted = [_name(n) for n in only] if only is not None else list(FRAMEWORKS)
    for name in wanted:
        if name in skipped or name in _installed:
            continue
        module, adapter = FRAMEWORKS[name]
        if adapter is None or not _installed_module(module):
            continue
        importlib.import_module(adapter).install()
        _installed.add(name)
    return sorted(_installed)
