"""tether: production infrastructure for AI agents, on an event-sourced NATS JetStream log."""

from typing import TYPE_CHECKING, Any

from tether.schemas import Event

if TYPE_CHECKING:
    from tether.adapters import (
        NeedsAttention,
        async_http_client,
        entrypoint,
        http_client,
        init,
        instrument,
        once,
        run,
        tool,
    )
    from tether.bus import Bus, connect

__version__ = "0.1.0"

__all__ = ["Bus", "Event", "NeedsAttention", "__version__", "async_http_client", "connect", "entrypoint",
           "http_client", "init", "instrument", "once", "run", "tool"]

_ADAPTERS = frozenset({"NeedsAttention", "async_http_client", "entrypoint", "http_client", "init", "instrument",
                       "once", "run", "tool"})


def __getattr__(name: str) -> Any:
    """``tether.connect``, ``tether.Bus``, ``tether.memory``, ``tether.journal`` and the adapters' entry points
    (``tether.init``, ``instrument``, ``tool``, ``run``, ``http_client``, ``async_http_client``) on first use:
    ``import tether`` (and ``import tether.schemas``) loads neither nats-py, aiohttp, SQLite nor
    cryptography."""
    if name in ("bus", "memory", "journal"):
        import importlib

        return importlib.import_module(f"tether.{name}")
    if name in ("Bus", "connect"):
        import tether.bus

        return getattr(tether.bus, name)
    if name in _ADAPTERS:
        import tether.adapters

        return getattr(tether.adapters, name)
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
