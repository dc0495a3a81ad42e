"""Errors in each provider's own format, and the Retry-After of a give-up: pure.

An agent's SDK turns the gateway's answers into its usual exceptions only if they look like
the provider's: OpenAI ``{"error": {"message", "type", "param", "code"}}``, Anthropic
``{"type": "error", "error": {"type", "message"}}``, Google's ``{"error": {"code", "message", "status"}}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .._wire import Kind, gemini_error

__all__ = ["Headers", "problem", "with_retry_after"]

Headers = list[tuple[str, str]]

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                    415: "invalid_request_error", 429: "rate_limit_error", 503: "overloaded_error",
                    529: "overloaded_error"}


def problem(kind: Kind, status: int, message: str, *, code: str | None = None, param: str | None = None,
            extra: dict[str, Any] | None = None) -> tuple[int, Headers, bytes]:
    """A complete error answer: status, headers (``x-should-retry: false``: the gateway's own
    refusals are final) and body."""
    if kind == "gemini":  # google-genai raises its ClientError / ServerError on it
        doc: dict[str, Any] = gemini_error(status, message, reason=code)
        if extra:
            doc["error"].update(extra)
    elif kind == "anthropic":
        etype = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        doc = {"type": "error", "error": {"type": etype, "message": message, **(extra or {})}}
    else:
        etype = ("requests" if status == 429 else "server_error" if status >= 500
                 else "invalid_request_error")
        doc = {"error": {"message": message, "type": etype, "param": param, "code": code, **(extra or {})}}
    body = json.dumps(doc, separators=(",", ":")).encode()
    return status, [("content-type", "application/json"), ("x-should-retry", "false")], body


def _has(headers: Sequence[tuple[str, str]], name: str) -> bool:
    return any(k.lower() == name for k, _ in headers)


def with_retry_after(status: int, headers: Headers, *, breaker_wait_s: float | None, default_s: float) -> Headers:
    """The headers of a final answer with a ``Retry-After`` that tells the agent to stop hammering.

    Only for a give-up (``x-should-retry: false``) that waiting may cure (429, 408, 409 and
    5xx). The provider's own hint is kept; else the rest of the route's breaker cooldown
    when it is open; else ``default_s``.
    """
    if not (status == 429 or status in (408, 409) or status >= 500) or _has(headers, "retry-after"):
        return headers
    if not any(k.lower() == "x-should-retry" and v == "false" for k, v in headers):
        return headers
    wait = breaker_wait_s if breaker_wait_s is not None and breaker_wait_s > 0 else default_s
    return [*headers, ("retry-after", str(max(1, round(wait + 0.499))))]
