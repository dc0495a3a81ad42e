"""A lean HTTP/1.1 client for the upstream side of the gateway: asyncio protocols and httptools.

The gateway makes one kind of request: a POST with a complete body, answered by a JSON body
or a server-sent event stream that must reach the agent chunk by chunk. ``httpx`` on
``httpcore`` (h11 and anyio) spent much of the gateway's CPU time on that (docs/benchmarks.md,
Adapters and gateway); this client does the same with uvicorn's C parser (``httptools``),
one ``write`` per request and keep-alive connections, and nothing else: no redirects, no
cookies, no proxies, no HTTP/2, no compression (the gateway asks for ``identity``).

* A connection is an :class:`asyncio.Protocol` that feeds what it receives to an
  ``httptools.HttpResponseParser``; body chunks queue until the response reads them
  (reading pauses past 1 MB queued).
* :class:`HttpPool` keeps idle connections per origin (last used first) and, before reusing
  one, drops it if the server closed it (its socket polls readable: an end of file nobody
  read yet) or it idled past ``idle_s``. A request is written once: if the connection then
  breaks before the answer, the server may have read it (an LLM call it may have run), so
  that is the attempt's failure, for the policy to retry or not, never a hidden resend.
* The transport is used only through what asyncio's and uvloop's both provide
  (:class:`_Transport`): uvloop's ``TCPTransport`` is not an ``asyncio.Transport``.
* ``timeout_s`` bounds connecting, waiting for the head, and each wait for body bytes, as
  ``httpx``'s connect and read timeouts do. Failures raise :class:`UpstreamTimeout` (a
  ``TimeoutError``) or :class:`UpstreamConnectionError` (a ``ConnectionError``), which the
  policy classifies as timeouts and connection errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httptools

__all__ = ["HttpPool", "Origin", "UpstreamConnectionError", "UpstreamResponse", "UpstreamTimeout"]

Headers = list[tuple[str, str]]
_PAUSE_AT = 1024 * 1024
_RESUME_AT = 256 * 1024


class UpstreamTimeout(TimeoutError):
    """Connecting, or waiting for the upstream's answer, took longer than the attempt's timeout."""


class UpstreamConnectionError(ConnectionError):
    """The connection could not be made, broke, or carried something that is not HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host, port, and the path prefix of the base URL."""

    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an upstream base URL is http(s)://host[:port]/path, not {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class _Transport(Protocol):
    """What the connection uses of its transport: asyncio's and uvloop's both have it."""

    def write(self, data: bytes) -> None: ...

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


class _Connection(asyncio.Protocol):
    """One keep-alive connection; the state of the response it is receiving."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: _Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: Headers = []
        self.head_done = False
        self.keep_alive = False
        self.done = False
        self.received = False
        self.chunked_or_sized = False
        self.chunks: deque[bytes] = deque()
        self.queued = 0
        self.paused = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    # -- the protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(_Transport, transport)  # a stream transport; uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamConnectionError(f"the upstream's answer is not valid HTTP/1.1: {exc}"))
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done:
            return
        if self.head_done and not self.chunked_or_sized and exc is None:
            self.done = True  # a body delimited by the end of the connection
            self._wake()
            return
        what = "before its answer was complete" if self.received else "before it answered"
        self._fail(UpstreamConnectionError(f"the upstream closed the connection {what}"
                                           + (f": {exc}" if exc else "")))

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer: wait for the real one
            self.headers = []
            return
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()  # asked now: the parser forgets once the message ends
        self.chunked_or_sized = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in self.headers)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.queued += len(body)
        if self.queued > _PAUSE_AT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True
            self._wake()

    # -- waiting --------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    async def wait(self, timeout_s: float) -> None:
        """Until something new arrived (or the connection failed); UpstreamTimeout after ``timeout_s``."""
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout_s, self._expire, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            self.abort()  # the caller gave up: this connection's state is unknown
            raise
        finally:
            timer.cancel()
            self.waiter = None

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamTimeout("the upstream did not answer within the attempt's timeout"))
            self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def take(self) -> bytes:
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.queued = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return self.done and not self.closed and self.error is None and self.keep_alive

    def stale(self) -> bool:
        """Closed, or idle yet readable: the server closed it (or sent what no request asked for)."""
        if self.closed or self.transport is None:
            return True
        sock = self.transport.get_extra_info("socket")
        if sock is None or not hasattr(select, "poll"):  # nothing to ask (Windows): what connection_lost told
            return False
        try:
            fd = sock.fileno()
        except OSError:
            return True
        if fd < 0:
            return True  # the socket is closed
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        return bool(poll.poll(0))


class UpstreamResponse:
    """An answer being received: ``status`` and ``headers`` now, the body chunk by chunk."""

    __slots__ = ("_conn", "_origin", "_pool", "_timeout", "extensions", "headers", "status")

    def __init__(self, pool: HttpPool, origin: Origin, conn: _Connection, timeout_s: float) -> None:
        self._pool: HttpPool | None = pool
        self._origin = origin
        self._conn = conn
        self._timeout = timeout_s
        self.status = conn.status
        self.headers = conn.headers
        self.extensions: dict[str, Any] = {}

    async def next_chunk(self) -> bytes | None:
        conn = self._conn
        while True:
            if conn.chunks:
                return conn.take()
            if conn.error is not None:
                raise conn.error
            if conn.done:
                self._release()
                return None
            await conn.wait(self._timeout)

    async def aclose(self) -> None:
        if self._pool is not None:
            if not self._conn.done:
                self._conn.abort()  # closed before its end: it cannot carry another request
            self._release()

    def _release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.release(self._origin, self._conn)


class HttpPool:
    """Keep-alive connections per origin; :meth:`request` sends one request on one of them."""

    def __init__(self, *, idle_s: float = 30.0, max_idle: int = 256) -> None:
        self.idle_s = idle_s
        self.max_idle = max_idle
        self._idle: dict[Origin, list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def request(self, method: str, origin: Origin, path: str, headers: Headers, body: bytes,
                      timeout_s: float) -> UpstreamResponse:
        """Send the request; return once the head of the answer arrived."""
        lines = [f"{method} {origin.prefix}{path} HTTP/1.1\r\nhost: {origin.authority}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers)
        lines.append(f"content-length: {len(body)}\r\n\r\n")
        data = "".join(lines).encode("latin-1") + body
        conn = self._checkout(origin) or await self._connect(origin, timeout_s)
        conn._reset()
        assert conn.transport is not None
        conn.transport.write(data)
        try:
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(timeout_s)
        except BaseException:
            conn.abort()  # sent: whatever broke, the server may have read the request; no resend here
            raise
        return UpstreamResponse(self, origin, conn, timeout_s)

    def _checkout(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self.idle_s and not conn.stale():
                return conn
            conn.abort()
        return None

    async def _connect(self, origin: Origin, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        ssl_context = self._ssl_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), origin.host, origin.port, ssl=ssl_context,
                    server_hostname=origin.host if ssl_context is not None else None)
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {origin.authority} took longer than {timeout_s:g} s") from None
        except OSError as exc:
            raise UpstreamConnectionError(f"cannot connect to {origin.authority}: {exc}") from exc
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            cafile = None
            with contextlib.suppress(ImportError):
                import certifi  # what httpx trusts; the system's store otherwise

                cafile = certifi.where()
            self._ssl = ssl.create_default_context(cafile=cafile)
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    def release(self, origin: Origin, conn: _Connection) -> None:
        if not conn.reusable:
            conn.abort()
            return
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
