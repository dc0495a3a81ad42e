"""tether: production infrastructure for AI agents, on an event-sourced NATS JetStream log."""

from typing import TYPE_CHECKING, Any

from tether.bus import Bus, connect
from tether.schemas import Event

if TYPE_CHECKING:
    from tether.adapters import async_http_client, http_client, instrument, run, tool

__version__ = "0.1.0"

__all__ = ["Bus", "Event", "__version__", "async_http_client", "connect", "http_client", "instrument", "run", "tool"]

_ADAPTERS = frozenset({"async_http_client", "http_client", "instrument", "run", "tool"})


def __getattr__(name: str) -> Any:
    """``tether.memory`` and the adapters' entry points (``tether.instrument``, ``tool``, ``run``,
    ``http_client``, ``async_http_client``) without importing them (and SQLite, cryptography,
    the reliability layer...) at ``import tether``."""
    if name == "memory":
        import importlib

        return importlib.import_module("tether.memory")
    if name in _ADAPTERS:
        import tether.adapters

        return getattr(tether.adapters, name)
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
