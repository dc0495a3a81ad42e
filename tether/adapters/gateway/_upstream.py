"""The upstream providers as the interceptor sees them: one attempt at a time, keys added here.

:class:`Upstreams` holds the configured providers and the HTTP client the workers use too
(:class:`~tether.middleware.ProviderHttp`, aiohttp: pooled keep-alive connections, the
agent's bytes forwarded as they came); :meth:`Upstreams.call` gives the :class:`~tether.adapters.RoutedUpstream`
of one request: ``send`` goes to the provider the model resolved to, ``send_to`` to a
fallback target's provider (same wire format). The provider's key is added to each attempt
here, and only here: it never reaches the interceptor, the events or the agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tether.middleware import ProviderConfig, ProviderHttp, ProviderStream, Target

from ._errors import Headers

__all__ = ["CallUpstream", "Upstreams"]

_CREDENTIALS = frozenset({"authorization", "x-api-key", "api-key"})
_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "host", "te", "upgrade",
                  "proxy-connection", "expect"})
"""Set by the client for each request (a pass-through, such as count_tokens, brings the agent's)."""
PASSTHROUGH_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 1000
"""Open connections to the providers at once, across them; a request past that waits for one."""


class UpstreamResponse:
    """An answer being received: ``status`` and ``headers`` now, the body chunk by chunk."""

    __slots__ = ("_stream", "extensions", "headers", "status")

    def __init__(self, stream: ProviderStream) -> None:
        self._stream = stream
        self.status = stream.status_code
        self.headers: Headers = list(stream.headers.items())
        self.extensions: dict[str, Any] = {}

    async def next_chunk(self) -> bytes | None:
        return await self._stream.next_chunk()

    async def aclose(self) -> None:
        await self._stream.aclose()


class Upstreams:
    """The providers the gateway forwards to, with their keys, over pooled connections.

    The client is made on the first request (it belongs to the running loop) unless given.
    """

    def __init__(self, providers: Mapping[str, ProviderConfig], *, http: ProviderHttp | None = None) -> None:
        self.providers = dict(providers)
        self.http = http
        self._bases = {name: p.base_url.rstrip("/") for name, p in self.providers.items()}
        self._auth = {name: _auth_headers(p) for name, p in self.providers.items()}
        self._auth_names = {name: frozenset(k.lower() for k, _ in headers) for name, headers in self._auth.items()}

    def call(self, provider: str, suffix: str) -> CallUpstream:
        """The upstream of one request to ``suffix`` (the path after ``/v1``, with the query) of ``provider``."""
        return CallUpstream(self, provider, suffix)

    async def send(self, method: str, provider: str, suffix: str, headers: Headers, body: bytes,
                   timeout_s: float | None) -> UpstreamResponse:
        """One attempt: the caller's headers without its credentials, plus the provider's."""
        replaced = _CREDENTIALS | _HOP | self._auth_names[provider]
        out = [(k, v) for k, v in headers if k.lower() not in replaced]
        if self.providers[provider].kind == "anthropic" and not any(k.lower() == "anthropic-version" for k, _ in out):
            out.append(("anthropic-version", "2023-06-01"))
        out.extend(self._auth[provider])
        wait = PASSTHROUGH_TIMEOUT_S if timeout_s is None else timeout_s
        http = self.http
        if http is None:
            http = self.http = ProviderHttp(max_connections=MAX_CONNECTIONS, decompress=False)
        return UpstreamResponse(await http.request(method, self._bases[provider] + suffix, data=body, headers=out,
                                                   timeout_s=wait))

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()


class CallUpstream:
    """One request's upstream: its provider by default, a fallback target's when asked."""

    __slots__ = ("method", "provider", "suffix", "upstreams")

    def __init__(self, upstreams: Upstreams, provider: str, suffix: str, method: str = "POST") -> None:
        self.upstreams = upstreams
        self.provider = provider
        self.suffix = suffix
        self.method = method

    async def send(self, headers: Headers, body: bytes, timeout_s: float | None) -> UpstreamResponse:
        return await self.upstreams.send(self.method, self.provider, self.suffix, headers, body, timeout_s)

    async def send_to(self, target: Target, headers: Headers, body: bytes,
                      timeout_s: float | None) -> UpstreamResponse:
        provider = target.provider if target.provider in self.upstreams.providers else self.provider
        return await self.upstreams.send(self.method, provider, self.suffix, headers, body, timeout_s)


def _auth_headers(provider: ProviderConfig) -> Headers:
    """The provider's key and extra headers (``anthropic-version`` is the caller's when sent)."""
    headers = {k.lower(): v for k, v in provider.headers.items()}
    if provider.api_key:
        if provider.kind == "anthropic":
            headers["x-api-key"] = provider.api_key
        else:
            headers["authorization"] = f"Bearer {provider.api_key}"
    return list(headers.items())
