"""The OpenAI and Anthropic SDKs' private API: every use tether makes of it, in this one module.

Both SDKs keep the HTTP client they send through in ``_client`` and offer no public way to
reach it once built; :func:`tether.instrument` needs it to put tether's transport in front.
``tests/adapters/test_sdkpriv.py`` checks :data:`HOOKS` against the installed SDKs.
"""

from __future__ import annotations

from typing import Any

from tether._hooks import Hook

__all__ = ["HOOKS", "http_client_of"]

_WHY = ("the httpx2 (or httpx) client every request of the SDK client goes through: tether.instrument() wraps "
        "its transports, so each LLM call runs under tether's policy and is recorded")

HOOKS = (
    Hook("openai", "openai.OpenAI / openai.AsyncOpenAI", "_client", _WHY, __name__),
    Hook("anthropic", "anthropic.Anthropic / anthropic.AsyncAnthropic", "_client", _WHY, __name__),
)


def http_client_of(client: object) -> Any:
    """The HTTP client an SDK client sends through, or None if ``client`` has none."""
    return getattr(client, "_client", None)
