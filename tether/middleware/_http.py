"""The worker's HTTP client for its LLM providers: one ``aiohttp`` session, pooled keep-alive.

Workers and inline callers POST to providers through :class:`ProviderHttp`; the SDK
adapters keep their own ``httpx`` / ``httpx2`` transports. aiohttp costs about a quarter of
httpx's client CPU per request (``bench/executor.py``), which is most of what a durable
call's worker spends outside NATS.

What the engine and the relay see is small on purpose: a :class:`ProviderResponse`
(``status_code``, case-insensitive ``headers``, ``content``) for a whole answer, and a
:class:`ProviderStream` (``status_code``, ``headers``, ``aread()``, ``aiter_bytes()``,
``aclose()``) for a streamed one. Failures are raised as aiohttp raises them (timeouts are
``TimeoutError``; connection trouble ``aiohttp.ClientConnectionError`` or, mid-body,
``aiohttp.ClientPayloadError``), except an answer that is not HTTP at all, raised as
:class:`UpstreamProtocolError` (a ``ConnectionError``); :func:`classify_exception` maps
them as it maps httpx's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

__all__ = ["ProviderHttp", "ProviderResponse", "ProviderStream", "UpstreamProtocolError"]

KEEPALIVE_S = 5.0  # idle keep-alive connections are closed after this long (httpx's default)


class UpstreamProtocolError(ConnectionError):
    """The provider's answer could not be read as HTTP (a broken status line or header)."""


class ProviderResponse:
    """A whole answer: status, headers (case-insensitive) and body."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content


class ProviderStream:
    """An answer whose headers are in and whose body is read as it arrives.

    Read it with :meth:`aiter_bytes` (chunks as the socket delivers them) or :meth:`aread`,
    then :meth:`aclose` it: a body read to its end returns the connection to the pool, one
    left unread closes it.
    """

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers

    async def aread(self) -> bytes:
        return await self._response.read()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.content.iter_any():
            yield chunk

    async def aclose(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()
        else:
            response.close()


@functools.cache
def _ssl_context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """Verifying TLS with the trust store httpx used: ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
    when set, else certifi's bundle (else the system's)."""
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile or None, capath=capath or None)
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx depends on certifi
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class _Proxies:
    """The environment's proxies (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``),
    read once, as httpx read them when its client was built, and the choice per URL, cached.

    (aiohttp's ``trust_env=True`` reads them again for every request, in a thread, and looks
    in ``~/.netrc`` in another: two thread hops per call; see docs/benchmarks.md, Executor.)
    """

    def __init__(self) -> None:
        found = urllib.request.getproxies()
        self.env = {key: value for key, value in found.items() if key in ("http", "https", "all", "no") and value}
        self.chosen: dict[str, str | None] = {}

    def __call__(self, url: str) -> str | None:
        try:
            return self.chosen[url]
        except KeyError:
            pass
        parts = urlsplit(url)
        proxy = self.env.get(parts.scheme) or self.env.get("all")
        if proxy is not None:
            if "://" not in proxy:
                proxy = "http://" + proxy
            # (NO_PROXY as urllib reads it; typeshed omits this function)
            if parts.hostname and urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
                    parts.hostname, self.env):
                proxy = None
        if len(self.chosen) >= 256:
            self.chosen.clear()
        self.chosen[url] = proxy
        return proxy


class ProviderHttp:
    """One ``aiohttp.ClientSession`` with up to ``max_connections`` pooled connections.

    Build it inside the running loop (the session belongs to it) and :meth:`aclose` it when
    done. ``HTTP(S)_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` are honoured (as they were when it
    was built), TLS is verified. Each request has ``timeout_s`` to get a connection (from
    the pool or a new one) and ``timeout_s`` for every read of the answer (headers, then
    each chunk of the body), as ``httpx.Timeout(timeout_s)`` had: a stream that keeps
    coming is never cut by it, one that falls silent for ``timeout_s`` is. Redirects are
    not followed (a 3xx is an answer).
    """

    def __init__(self, *, max_connections: int, keepalive_s: float = KEEPALIVE_S) -> None:
        asyncio.get_running_loop()  # RuntimeError outside a loop: the session would belong to none
        connector = aiohttp.TCPConnector(
            limit=max_connections, limit_per_host=0, keepalive_timeout=keepalive_s,
            ssl=_ssl_context(os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None))
        # trust_env stays off: _Proxies reads the environment's proxies once (see there)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True,
                                              timeout=aiohttp.ClientTimeout(total=None))
        self._proxy = _Proxies()
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def closed(self) -> bool:
        return self._session.closed

    def _timeout(self, timeout_s: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            if len(self._timeouts) > 64:
                self._timeouts.clear()
            timeout = self._timeouts[timeout_s] = aiohttp.ClientTimeout(
                total=None, connect=timeout_s, sock_read=timeout_s)
        return timeout

    async def _send(self, url: str, body: Any, headers: Mapping[str, str], timeout_s: float) -> aiohttp.ClientResponse:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        sent = dict(headers)
        if not any(name.lower() == "content-type" for name in sent):
            sent["Content-Type"] = "application/json"
        try:
            return await self._session.post(url, data=data, headers=sent, timeout=self._timeout(timeout_s),
                                             allow_redirects=False, proxy=self._proxy(url))
        except aiohttp.ClientResponseError as exc:  # we never raise_for_status: the answer is not HTTP
            raise UpstreamProtocolError(f"{exc.message} ({url})") from exc

    async def post(self, url: str, *, body: Any, headers: Mapping[str, str], timeout_s: float) -> ProviderResponse:
        """POST ``body`` as JSON and read the whole answer."""
        response = await self._send(url, body, headers, timeout_s)
        try:
            content = await response.read()
        except BaseException:
            response.close()
            raise
        response.release()
        return ProviderResponse(response.status, response.headers, content)

    async def post_stream(self, url: str, *, body: Any, headers: Mapping[str, str],
                          timeout_s: float) -> ProviderStream:
        """POST ``body`` as JSON and return once the answer's headers are in; read the body
        from the :class:`ProviderStream`, then ``aclose()`` it."""
        return ProviderStream(await self._send(url, body, headers, timeout_s))

    async def aclose(self) -> None:
        await self._session.close()
