"""What the ``httpx`` and ``httpx2`` transports share: the same API in two packages.

The transports hand :class:`~._core.Interceptor` an upstream that sends through the
transport they wrap, and turn its :class:`~._core.ProxyResponse` back into the package's
``Response``. Everything here is duck-typed over the package module, so one implementation
serves both; the transport classes themselves live in ``_httpx`` and ``_httpx2``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ._core import Headers

__all__ = ["AsyncUpstreamOf", "SyncUpstreamOf", "capped_timeout", "headers_of", "response_extensions"]

_KEPT_EXTENSIONS = ("http_version", "reason_phrase")


def headers_of(raw: list[tuple[bytes, bytes]]) -> Headers:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


def capped_timeout(timeout: Any, cap: float) -> dict[str, float]:
    """The request's timeouts (``None``: unbounded), none longer than the policy's ``cap``."""
    out: dict[str, float] = {}
    for key in ("connect", "read", "write", "pool"):
        value = timeout.get(key) if isinstance(timeout, dict) else None
        out[key] = cap if value is None else min(float(value), cap)
    return out


def response_extensions(extensions: dict[str, Any]) -> dict[str, Any]:
    return {k: extensions[k] for k in _KEPT_EXTENSIONS if k in extensions}


class _AsyncResponse:
    def __init__(self, response: Any) -> None:
        self.status: int = response.status_code
        self.headers = headers_of(response.headers.raw)
        self.extensions = response_extensions(response.extensions)
        self._response = response
        self._chunks: Any = None

    async def next_chunk(self) -> bytes | None:
        if self._chunks is None:
            self._chunks = self._response.stream.__aiter__()
        try:
            chunk: bytes = await self._chunks.__anext__()
        except StopAsyncIteration:
            return None
        return chunk

    async def aclose(self) -> None:
        chunks, self._chunks = self._chunks, None
        if chunks is not None and hasattr(chunks, "aclose"):
            with contextlib.suppress(Exception):
                await chunks.aclose()
        await self._response.stream.aclose()


class _SyncResponse:
    def __init__(self, response: Any) -> None:
        self.status: int = response.status_code
        self.headers = headers_of(response.headers.raw)
        self.extensions = response_extensions(response.extensions)
        self._response = response
        self._chunks: Any = None

    def next_chunk(self) -> bytes | None:
        if self._chunks is None:
            self._chunks = iter(self._response.stream)
        chunk: bytes | None = next(self._chunks, None)
        return chunk

    def close(self) -> None:
        chunks, self._chunks = self._chunks, None
        if chunks is not None and hasattr(chunks, "close"):
            with contextlib.suppress(Exception):
                chunks.close()
        self._response.stream.close()


class AsyncUpstreamOf:
    """Send attempts of ``request`` through ``transport`` (an async transport of ``module``)."""

    def __init__(self, module: Any, transport: Any, request: Any) -> None:
        self.module = module
        self.transport = transport
        self.request = request

    async def send(self, headers: Headers, body: bytes, timeout_s: float | None) -> _AsyncResponse:
        extensions = dict(self.request.extensions)
        if timeout_s is not None:
            extensions["timeout"] = capped_timeout(extensions.get("timeout"), timeout_s)
        request = self.module.Request(self.request.method, self.request.url, headers=headers, content=body,
                                      extensions=extensions)
        return _AsyncResponse(await self.transport.handle_async_request(request))


class SyncUpstreamOf:
    def __init__(self, module: Any, transport: Any, request: Any) -> None:
        self.module = module
        self.transport = transport
        self.request = request

    def send(self, headers: Headers, body: bytes, timeout_s: float | None) -> _SyncResponse:
        extensions = dict(self.request.extensions)
        if timeout_s is not None:
            extensions["timeout"] = capped_timeout(extensions.get("timeout"), timeout_s)
        request = self.module.Request(self.request.method, self.request.url, headers=headers, content=body,
                                      extensions=extensions)
        return _SyncResponse(self.transport.handle_request(request))
