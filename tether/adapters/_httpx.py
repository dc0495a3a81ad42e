"""Transports for ``httpx`` clients (openai 2.x, CrewAI, LiteLLM, google-genai...): the interception seam.

:class:`~._httpio.AsyncTransportShell` and :class:`~._httpio.SyncTransportShell` bound to
``httpx``: they wrap the transport a client would have used and send LLM calls through the
:class:`~._core.Interceptor`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from ._httpio import AsyncTransportShell, SyncTransportShell

__all__ = ["AsyncTetherTransport", "TetherTransport"]


class AsyncTetherTransport(AsyncTransportShell[httpx.AsyncBaseTransport, httpx.Request, httpx.Response],
                           httpx.AsyncBaseTransport):
    """An async ``httpx`` transport that applies tether's policy and records every LLM call.

    ``AsyncTetherTransport(interceptor=..., wrapped=...)`` or with the
    :class:`~._core.Interceptor` options (``bus``, ``policies``, ``mode``, ``capture``...).
    """

    package: ClassVar[Any] = httpx


class TetherTransport(SyncTransportShell[httpx.BaseTransport, httpx.Request, httpx.Response], httpx.BaseTransport):
    """The sync ``httpx`` transport: the same policy and events, for sync clients."""

    package: ClassVar[Any] = httpx
