"""``tether.instrument(client)`` and ready-made HTTP clients for frameworks that take one.

Both put a tether transport in front of the transport the client would have used, for
``httpx`` and for ``httpx2`` (openai 3.x and anthropic 2.x build on ``httpx2``; openai
2.x, CrewAI, LiteLLM and google-genai on ``httpx``), so tether sees every attempt. The
private attributes this reaches (the SDKs' ``_client``, the HTTP clients' ``_transport`` and
``_mounts``) are used only through :mod:`._sdkpriv` and :mod:`._httpxpriv`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any, Literal, TypeVar

import httpx

from tether.bus import Bus
from tether.middleware import PolicySet

from . import _httpx
from ._core import Interceptor, Mode
from ._httpxpriv import has_transports, wrap_transports
from ._redact import Hook, Redactor
from ._sdkpriv import http_client_of
from ._wire import Kind

__all__ = ["async_http_client", "http_client", "instrument"]

C = TypeVar("C")
Package = Literal["httpx", "httpx2"]


def _httpx2() -> Any:
    if importlib.util.find_spec("httpx2") is None:
        raise ImportError("httpx2 is not installed (pip install httpx2); use package='httpx'")
    from . import _httpx2 as module

    return module


def instrument(client: C, *, bus: Bus | None = None, policies: PolicySet | None = None, mode: Mode = "inline",
               capture: bool = True, agent: str | None = None, provider: str | None = None,
               redact: Redactor | Hook | Iterable[str] | None = None, stream_usage: bool = True,
               stream_idle_timeout_s: float = 15.0) -> C:
    """Route an OpenAI or Anthropic client (sync or async) through tether; returns the same client.

    Every chat completion, Responses, embeddings or messages call is recorded (model,
    parameters, messages unless ``capture=False``, usage, latency, time to first token)
    and runs under the policy: retries (honouring Retry-After) before the first byte of
    an answer reaches the caller, the route's breaker, fallbacks to other models of the
    same provider, budgets and the runaway guard. tether owns the retries: the client's
    ``max_retries`` is set to 0 and a final failure says ``x-should-retry: false``.

    ``mode="durable"`` sends calls through the WORK stream to ``tether worker`` (which must
    have a provider named ``provider``, with its own key); a stream is relayed back by the
    worker as it comes, and ends with an error if it stays silent ``stream_idle_timeout_s``
    (its worker is gone). For the other options see :class:`Interceptor`.
    """
    http = http_client_of(client)
    if http is None or not has_transports(http):
        if type(client).__module__.startswith("google.genai"):
            raise TypeError("tether.instrument takes an openai or anthropic client; give google-genai tether's HTTP "
                            "clients instead: genai.Client(http_options=types.HttpOptions(httpx_async_client="
                            "tether.async_http_client(), httpx_client=tether.http_client(), "
                            "retry_options=types.HttpRetryOptions(attempts=1))) (docs/adapters.md)")
        raise TypeError(f"tether.instrument takes an openai or anthropic client, not {type(client).__name__}; "
                        "for other frameworks pass tether.http_client() / tether.async_http_client()")
    kind = _kind_of(client)
    interceptor = Interceptor(bus=bus, policies=policies, mode=mode, capture=capture, agent=agent,
                              provider=provider or kind, kind=kind, redact=redact, stream_usage=stream_usage,
                              stream_idle_timeout_s=stream_idle_timeout_s)
    _wrap(http, interceptor)
    if hasattr(client, "max_retries"):
        client.max_retries = 0  # tether retries; the SDK would multiply the attempts
    return client


def _kind_of(client: object) -> Kind:
    for cls in type(client).__mro__:
        root = cls.__module__.partition(".")[0]
        if root in ("openai", "anthropic"):
            return "anthropic" if root == "anthropic" else "openai"
    raise TypeError(f"tether.instrument knows openai and anthropic clients, not {type(client).__name__}")


def _wrap(http: Any, interceptor: Interceptor) -> None:
    """Put a tether transport in front of every transport of an httpx or httpx2 client."""
    transport_cls: Any
    if isinstance(http, httpx.AsyncClient):
        transport_cls = _httpx.AsyncTetherTransport
    elif isinstance(http, httpx.Client):
        transport_cls = _httpx.TetherTransport
    else:
        module = _httpx2()
        import httpx2

        if isinstance(http, httpx2.AsyncClient):
            transport_cls = module.AsyncTetherTransport
        elif isinstance(http, httpx2.Client):
            transport_cls = module.TetherTransport
        else:
            raise TypeError(f"the client's HTTP client is a {type(http).__name__}, not an httpx or httpx2 client")

    def wrapped(transport: Any) -> Any:
        if transport is None:
            return None
        if hasattr(transport, "interceptor") and type(transport).__name__.endswith("TetherTransport"):
            transport.interceptor = interceptor  # instrumented again: the new options win
            return transport
        return transport_cls(transport, interceptor=interceptor)

    wrap_transports(http, wrapped)


def http_client(*, package: Package = "httpx", bus: Bus | None = None, policies: PolicySet | None = None,
                mode: Mode = "inline", capture: bool = True, agent: str | None = None, provider: str | None = None,
                redact: Redactor | Hook | Iterable[str] | None = None, stream_usage: bool = True,
                stream_idle_timeout_s: float = 15.0, transport: Any = None, **client_options: Any) -> Any:
    """A sync ``httpx.Client`` (``package="httpx2"``: an ``httpx2.Client``) whose LLM calls
    go through tether, for frameworks that accept an HTTP client. The wire format is read
    from each request's path (``/messages`` is Anthropic's); ``provider`` names the routes
    (default: ``openai`` or ``anthropic``). A framework's own SDK retries are stopped by
    ``x-should-retry: false`` on tether's final answers; set its ``max_retries=0`` too
    where you can. ``client_options`` go to the client (``timeout``, ``base_url``...)."""
    interceptor = Interceptor(bus=bus, policies=policies, mode=mode, capture=capture, agent=agent, provider=provider,
                              redact=redact, stream_usage=stream_usage, stream_idle_timeout_s=stream_idle_timeout_s)
    if package == "httpx2":
        module = _httpx2()
        import httpx2

        return httpx2.Client(transport=module.TetherTransport(transport, interceptor=interceptor), **client_options)
    return httpx.Client(transport=_httpx.TetherTransport(transport, interceptor=interceptor), **client_options)


def async_http_client(*, package: Package = "httpx", bus: Bus | None = None, policies: PolicySet | None = None,
                      mode: Mode = "inline", capture: bool = True, agent: str | None = None,
                      provider: str | None = None, redact: Redactor | Hook | Iterable[str] | None = None,
                      stream_usage: bool = True, stream_idle_timeout_s: float = 15.0, transport: Any = None,
                      **client_options: Any) -> Any:
    """The async twin of :func:`http_client`: an ``httpx.AsyncClient`` (or ``httpx2.AsyncClient``),
    e.g. for ``ChatOpenAI(http_async_client=...)`` or ``OpenAIProvider(http_client=...)``."""
    interceptor = Interceptor(bus=bus, policies=policies, mode=mode, capture=capture, agent=agent, provider=provider,
                              redact=redact, stream_usage=stream_usage, stream_idle_timeout_s=stream_idle_timeout_s)
    if package == "httpx2":
        module = _httpx2()
        import httpx2

        return httpx2.AsyncClient(transport=module.AsyncTetherTransport(transport, interceptor=interceptor),
                                  **client_options)
    return httpx.AsyncClient(transport=_httpx.AsyncTetherTransport(transport, interceptor=interceptor),
                             **client_options)
