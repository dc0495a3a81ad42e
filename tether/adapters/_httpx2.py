"""Transports for ``httpx2`` clients (openai 3.x, anthropic 2.x), as ``_httpx`` for ``httpx``.

Imported only when httpx2 is installed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx2

from ._httpio import AsyncTransportShell, SyncTransportShell

__all__ = ["AsyncTetherTransport", "TetherTransport"]


class AsyncTetherTransport(AsyncTransportShell[httpx2.AsyncBaseTransport, httpx2.Request, httpx2.Response],
                           httpx2.AsyncBaseTransport):
    package: ClassVar[Any] = httpx2


class TetherTransport(SyncTransportShell[httpx2.BaseTransport, httpx2.Request, httpx2.Response],
                      httpx2.BaseTransport):
    package: ClassVar[Any] = httpx2
