"""httpx's and httpx2's private API: every use tether makes of it, in this one module.

A client built elsewhere (inside an SDK client) keeps its transports in ``_transport`` (the
default) and ``_mounts`` (per URL pattern: proxies, ``mounts=``), and neither library can swap
them after the fact. ``tests/adapters/test_sdkpriv.py`` checks :data:`HOOKS` against both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tether._hooks import Hook

__all__ = ["HOOKS", "has_transports", "wrap_transports"]

HOOKS = tuple(
    hook
    for package in ("httpx", "httpx2")
    for hook in (
        Hook(package, f"{package}.Client / {package}.AsyncClient", "_transport",
             "the transport a request takes when no mount matches: tether.instrument() puts tether's transport "
             "in front of it", __name__),
        Hook(package, f"{package}.Client / {package}.AsyncClient", "_mounts",
             "the transport per URL pattern (a proxy, mounts=; None means _transport): tether.instrument() puts "
             "tether's transport in front of each", __name__),
    )
)


def has_transports(http: object) -> bool:
    """Whether ``http`` keeps its transports where :func:`wrap_transports` changes them."""
    return hasattr(http, "_transport")


def wrap_transports(http: Any, wrap: Callable[[Any], Any]) -> None:
    """Replace each transport of an httpx or httpx2 client with ``wrap(transport)`` (``wrap(None)``
    for a mount that uses the default transport)."""
    http._transport = wrap(http._transport)
    http._mounts = {pattern: wrap(t) for pattern, t in http._mounts.items()}
