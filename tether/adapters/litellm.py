"""LiteLLM under tether: its model calls through tether's policy by the HTTP clients LiteLLM takes
for every call it sends with the openai SDK (``litellm.client_session`` / ``aclient_session``),
set by :func:`install`; no callback is registered. The only module of tether that imports ``litellm``.
"""

from __future__ import annotations

import logging
from typing import Any

import litellm

from tether.adapters import async_http_client, http_client

__all__ = ["install", "route"]

_log = logging.getLogger(__name__)
_ours: tuple[Any, Any] | None = None


def route(**options: Any) -> None:
    """Send LiteLLM's calls through tether, with :func:`tether.http_client` options (``policies``,
    ``agent``, ``capture``, ``redact``...): ``litellm.client_session`` and ``aclient_session``
    become tether's HTTP clients. Called again, the new options replace the old ones.

    LiteLLM's own retries: a final failure tether answers says ``x-should-retry: false``, which
    the openai SDK under LiteLLM honours; ``litellm.num_retries`` set process-wide is unset here
    (it would send each failed call through tether's retries again). A call that passes
    ``num_retries=`` itself is still retried by LiteLLM: leave it out.

    tether sends the async calls on the transport LiteLLM would have used itself (its aiohttp one, unless
    ``litellm.disable_aiohttp_transport``), the sync ones on httpx's (as LiteLLM's sync calls).

    A session the application set itself is refused rather than replaced: build it with
    ``tether.http_client(transport=...)`` / ``tether.async_http_client(transport=...)`` instead."""
    global _ours
    for name in ("client_session", "aclient_session"):
        current = getattr(litellm, name, None)
        if current is not None and (_ours is None or current not in _ours):
            raise ValueError(f"tether.adapters.litellm: litellm.{name} is already set by the application; "
                             "give tether's transport to it instead (tether.http_client(transport=...) / "
                             "tether.async_http_client(transport=...)), or exclude LiteLLM: "
                             "tether.init(exclude={'litellm'})")
    if litellm.num_retries:
        _log.warning("tether owns the retries: litellm.num_retries=%s unset (LiteLLM would retry each call "
                     "tether gave up on, through tether's retries again)", litellm.num_retries)
        litellm.num_retries = None
    own = {} if "transport" in options else {"transport": _own_async_transport()}
    sync, async_ = http_client(**options), async_http_client(**own, **options)
    litellm.client_session, litellm.aclient_session = sync, async_
    _ours = (sync, async_)


def _own_async_transport() -> Any:
    """The transport LiteLLM's async calls would take without tether (its aiohttp one by default, whose HTTP
    parser is C: 1.3 M instructions a step fewer than httpx's, docs/frameworks/litellm.md), for tether to send them on;
    ``None`` (httpx's) if this LiteLLM has none to give, or with ``litellm.disable_aiohttp_transport`` its httpx
    one."""
    try:
        from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

        return AsyncHTTPHandler.create_async_transport()
    except Exception:  # an older or newer LiteLLM without it: httpx's transport
        _log.debug("LiteLLM's own async transport is not available here: tether sends through httpx's", exc_info=True)
        return None


def install() -> None:
    """Route LiteLLM's calls through tether with the default options (``tether.toml``), once."""
    if _ours is None:
        route()
