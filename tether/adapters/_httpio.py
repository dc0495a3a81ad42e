"""The ``httpx`` and ``httpx2`` transports, written once: the same API in two packages.

:class:`AsyncTransportShell` and :class:`SyncTransportShell` hand :class:`~._core.Interceptor`
an upstream that sends through the transport they wrap, and turn its
:class:`~._core.ProxyResponse` back into the package's ``Response``. They are generic over
the package's types and read the package from the class (``package``); ``_httpx`` and
``_httpx2`` only bind them to their package, so mypy sees each package's real types.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar, Generic, TypeVar, cast

from ._core import Headers, Interceptor, ProxyResponse, SyncProxyResponse

__all__ = ["AsyncTransportShell", "AsyncUpstreamOf", "SyncTransportShell", "SyncUpstreamOf", "capped_timeout",
           "headers_of", "response_extensions"]

W = TypeVar("W")  # the transport wrapped
Rq = TypeVar("Rq")  # the package's Request
Rs = TypeVar("Rs")  # the package's Response

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


class _Response:
    def __init__(self, response: Any) -> None:
        self.status: int = response.status_code
        self.headers = headers_of(response.headers.raw)
        self.extensions = response_extensions(response.extensions)
        self._response = response
        self._chunks: Any = None


class _AsyncResponse(_Response):
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


class _SyncResponse(_Response):
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


class _UpstreamOf:
    """Send attempts of ``request`` through ``transport`` (a transport of ``module``)."""

    def __init__(self, module: Any, transport: Any, request: Any) -> None:
        self.module = module
        self.transport = transport
        self.request = request

    def attempt(self, headers: Headers, body: bytes, timeout_s: float | None) -> Any:
        """The request of one attempt: tether's headers and body, the policy's timeout cap.

        Built as the package builds it from ``content=body`` (the same headers, in the same order:
        ``Content-Length`` last), but from a ready byte stream: ``content=`` looks each header up
        again by name, decoding them all every time, a tenth of a millisecond a call."""
        extensions = dict(self.request.extensions)
        if timeout_s is not None:
            extensions["timeout"] = capped_timeout(extensions.get("timeout"), timeout_s)
        module, method, url = self.module, self.request.method, self.request.url
        names = {k.lower() for k, _ in headers}
        if not body or "host" not in names or "content-length" in names or "transfer-encoding" in names:
            return module.Request(method, url, headers=headers, content=body, extensions=extensions)
        raw = [(k.encode("ascii"), v.encode("ascii")) for k, v in headers]
        raw.append((b"Content-Length", str(len(body)).encode("ascii")))
        request = module.Request(method, url, headers=raw, stream=module.ByteStream(body), extensions=extensions)
        request.read()  # as content= does: the body is there to read again (a mock transport, a retry)
        return request


class AsyncUpstreamOf(_UpstreamOf):
    async def send(self, headers: Headers, body: bytes, timeout_s: float | None) -> _AsyncResponse:
        return _AsyncResponse(await self.transport.handle_async_request(self.attempt(headers, body, timeout_s)))


class SyncUpstreamOf(_UpstreamOf):
    def send(self, headers: Headers, body: bytes, timeout_s: float | None) -> _SyncResponse:
        return _SyncResponse(self.transport.handle_request(self.attempt(headers, body, timeout_s)))


class AsyncTransportShell(Generic[W, Rq, Rs]):
    """An async transport that applies tether's policy and records every LLM call.

    ``(interceptor=..., wrapped=...)`` or with the :class:`~._core.Interceptor` options
    (``bus``, ``policies``, ``mode``, ``capture``...); ``wrapped`` defaults to the package's
    ``AsyncHTTPTransport()``. Every other request goes straight to the wrapped transport.
    """

    package: ClassVar[Any]  # httpx or httpx2

    def __init__(self, wrapped: W | None = None, *, interceptor: Interceptor | None = None, **options: Any) -> None:
        self.wrapped: W = wrapped if wrapped is not None else self.package.AsyncHTTPTransport()
        self.interceptor = interceptor if interceptor is not None else Interceptor(**options)

    async def handle_async_request(self, request: Rq) -> Rs:
        interceptor, wrapped, seen = self.interceptor, cast(Any, self.wrapped), cast(Any, request)
        if interceptor.operation(seen.method, seen.url.path) is None:
            return cast(Rs, await wrapped.handle_async_request(request))
        body = await seen.aread()
        proxied = await interceptor.handle(seen.method, seen.url.path, headers_of(seen.headers.raw), body,
                                           AsyncUpstreamOf(self.package, wrapped, request))
        return cast(Rs, _response(self.package, proxied, _byte_streams(self.package)[0]))

    async def aclose(self) -> None:
        await cast(Any, self.wrapped).aclose()


class SyncTransportShell(Generic[W, Rq, Rs]):
    """:class:`AsyncTransportShell` for sync clients (``wrapped``: ``HTTPTransport()``)."""

    package: ClassVar[Any]

    def __init__(self, wrapped: W | None = None, *, interceptor: Interceptor | None = None, **options: Any) -> None:
        self.wrapped: W = wrapped if wrapped is not None else self.package.HTTPTransport()
        self.interceptor = interceptor if interceptor is not None else Interceptor(**options)

    def handle_request(self, request: Rq) -> Rs:
        interceptor, wrapped, seen = self.interceptor, cast(Any, self.wrapped), cast(Any, request)
        if interceptor.operation(seen.method, seen.url.path) is None:
            return cast(Rs, wrapped.handle_request(request))
        body = seen.read()
        proxied = interceptor.handle_sync(seen.method, seen.url.path, headers_of(seen.headers.raw), body,
                                          SyncUpstreamOf(self.package, wrapped, request))
        return cast(Rs, _response(self.package, proxied, _byte_streams(self.package)[1]))

    def close(self) -> None:
        cast(Any, self.wrapped).close()


def _response(package: Any, proxied: ProxyResponse | SyncProxyResponse, stream_class: Any) -> Any:
    if proxied.stream is None:
        return package.Response(proxied.status, headers=proxied.headers, content=proxied.content or b"",
                                extensions=proxied.extensions)
    return package.Response(proxied.status, headers=proxied.headers, stream=stream_class(proxied.stream),
                            extensions=proxied.extensions)


class _Closed:
    """A stream closed: nothing more to read (what tether's stream classes hold once closed)."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration

    async def aclose(self) -> None:
        pass

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        pass


_CLOSED = _Closed()


@functools.cache
def _byte_streams(package: Any) -> tuple[Any, Any]:
    """The package's ``AsyncByteStream`` and ``SyncByteStream`` over tether's streams (its
    ``Response`` reads only its own stream classes)."""

    def __init__(self: Any, inner: Any) -> None:
        self.inner = inner

    def __aiter__(self: Any) -> AsyncIterator[bytes]:  # tether's stream itself: no generator between, per chunk
        inner: AsyncIterator[bytes] = self.inner.__aiter__()
        return inner

    async def aclose(self: Any) -> None:
        inner, self.inner = self.inner, _CLOSED  # the package's response and its stream may be a cycle (httpx's are):
        await inner.aclose()  # without tether's stream in it (the call, its chunks), reference counting frees that

    def __iter__(self: Any) -> Iterator[bytes]:
        inner: Iterator[bytes] = self.inner.__iter__()
        return inner

    def close(self: Any) -> None:
        inner, self.inner = self.inner, _CLOSED
        inner.close()

    made = (type("AsyncStream", (package.AsyncByteStream,), {"__init__": __init__, "__aiter__": __aiter__,
                                                              "aclose": aclose, "__module__": __name__}),
            type("SyncStream", (package.SyncByteStream,), {"__init__": __init__, "__iter__": __iter__,
                                                           "close": close, "__module__": __name__}))
    return made
