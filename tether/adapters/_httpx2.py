"""Transports for ``httpx2`` clients (openai 3.x, anthropic 2.x): the interception seam.

Imported only when httpx2 is installed.

``TetherTransport`` / ``AsyncTetherTransport`` wrap the transport a client would have used
(``httpx2.HTTPTransport()`` by default) and send LLM calls through the
:class:`~._core.Interceptor`; every other request goes straight to the wrapped transport.
"""

from __future__ import annotations

from typing import Any

import httpx2

from ._core import Interceptor, ProxyResponse, SyncProxyResponse
from ._httpio import AsyncUpstreamOf, SyncUpstreamOf, headers_of

__all__ = ["AsyncTetherTransport", "TetherTransport"]


class _AsyncStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __aiter__(self) -> Any:
        async for chunk in self.inner:
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class _SyncStream(httpx2.SyncByteStream):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Any:
        yield from self.inner

    def close(self) -> None:
        self.inner.close()


class AsyncTetherTransport(httpx2.AsyncBaseTransport):
    """An async ``httpx2`` transport that applies tether's policy and records every LLM call.

    ``AsyncTetherTransport(interceptor=..., wrapped=...)`` or with the
    :class:`~._core.Interceptor` options (``bus``, ``policies``, ``mode``, ``capture``...).
    """

    def __init__(self, wrapped: httpx2.AsyncBaseTransport | None = None, *, interceptor: Interceptor | None = None,
                 **options: Any) -> None:
        self.wrapped = wrapped if wrapped is not None else httpx2.AsyncHTTPTransport()
        self.interceptor = interceptor if interceptor is not None else Interceptor(**options)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        interceptor = self.interceptor
        if interceptor.operation(request.method, request.url.path) is None:
            return await self.wrapped.handle_async_request(request)
        body = await request.aread()
        proxied = await interceptor.handle(request.method, request.url.path, headers_of(request.headers.raw), body,
                                           AsyncUpstreamOf(httpx2, self.wrapped, request))
        return _async_response(proxied)

    async def aclose(self) -> None:
        await self.wrapped.aclose()


class TetherTransport(httpx2.BaseTransport):
    """The sync ``httpx2`` transport: the same policy and events, for sync clients."""

    def __init__(self, wrapped: httpx2.BaseTransport | None = None, *, interceptor: Interceptor | None = None,
                 **options: Any) -> None:
        self.wrapped = wrapped if wrapped is not None else httpx2.HTTPTransport()
        self.interceptor = interceptor if interceptor is not None else Interceptor(**options)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        interceptor = self.interceptor
        if interceptor.operation(request.method, request.url.path) is None:
            return self.wrapped.handle_request(request)
        body = request.read()
        proxied = interceptor.handle_sync(request.method, request.url.path, headers_of(request.headers.raw), body,
                                          SyncUpstreamOf(httpx2, self.wrapped, request))
        return _sync_response(proxied)

    def close(self) -> None:
        self.wrapped.close()


def _async_response(proxied: ProxyResponse) -> httpx2.Response:
    if proxied.stream is None:
        return httpx2.Response(
            proxied.status, headers=proxied.headers, content=proxied.content or b"", extensions=proxied.extensions)
    return httpx2.Response(
        proxied.status, headers=proxied.headers, stream=_AsyncStream(proxied.stream), extensions=proxied.extensions)


def _sync_response(proxied: SyncProxyResponse) -> httpx2.Response:
    if proxied.stream is None:
        return httpx2.Response(
            proxied.status, headers=proxied.headers, content=proxied.content or b"", extensions=proxied.extensions)
    return httpx2.Response(
        proxied.status, headers=proxied.headers, stream=_SyncStream(proxied.stream), extensions=proxied.extensions)
