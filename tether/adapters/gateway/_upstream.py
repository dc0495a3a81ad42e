"""The upstream providers as the interceptor sees them: one attempt at a time, keys added here.

:class:`Upstreams` holds the configured providers and a pool of keep-alive connections
(:mod:`._http`); :meth:`Upstreams.call` gives the :class:`~tether.adapters.RoutedUpstream`
of one request: ``send`` goes to the provider the model resolved to, ``send_to`` to a
fallback target's provider (same wire format). The provider's key is added to each attempt
here, and only here: it never reaches the interceptor, the events or the agent.
"""

from __future__ import annotations

from collections.abc import Mapping

from tether.middleware import ProviderConfig, Target

from ._errors import Headers
from ._http import HttpPool, Origin, UpstreamResponse

__all__ = ["CallUpstream", "Upstreams"]

_CREDENTIALS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key"})
_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "host", "te", "upgrade",
                  "proxy-connection", "expect"})
"""Set by the client for each request (a pass-through, such as count_tokens, brings the agent's)."""
PASSTHROUGH_TIMEOUT_S = 60.0


class Upstreams:
    """The providers the gateway forwards to, with their keys, over pooled connections."""

    def __init__(self, providers: Mapping[str, ProviderConfig], *, pool: HttpPool | None = None) -> None:
        self.providers = dict(providers)
        self.pool = pool if pool is not None else HttpPool()
        self._origins = {name: Origin.of(p.base_url) for name, p in self.providers.items()}
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
        return await self.pool.request(method, self._origins[provider], suffix, out, body, wait)

    async def aclose(self) -> None:
        await self.pool.aclose()


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
        elif provider.kind == "gemini":
            headers["x-goog-api-key"] = provider.api_key
        else:
            headers["authorization"] = f"Bearer {provider.api_key}"
    return list(headers.items())
