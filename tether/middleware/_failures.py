"""Failures: what went wrong with one attempt, normalised across providers, transports and tools.

Everything here is pure: a status, headers and a body (or an exception) go in, a frozen
:class:`Failure` comes out. Times are passed in as ``now`` (seconds since the epoch, as
``time.time()`` gives them), so HTTP-date and RFC 3339 headers can be turned into delays
without reading a clock.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Literal

import aiohttp
import httpx

from tether.schemas import ErrorInfo

__all__ = [
    "Failure",
    "FailureCategory",
    "FailureKind",
    "classify_exception",
    "classify_http",
    "parse_retry_after",
]

FailureKind = Literal[
    "http", "timeout", "connection", "malformed", "breaker_open", "rate_limited", "tool_error", "cancelled"
]
FailureCategory = Literal[
    "rate_limit",
    "server_error",
    "client_error",
    "timeout",
    "connection",
    "malformed",
    "breaker_open",
    "tool_error",
    "cancelled",
]

_BREAKER_CATEGORIES = frozenset({"server_error", "timeout", "connection", "malformed"})

# The names the OpenAI and Anthropic SDKs give their errors, so dashboards group alike.
_STATUS_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "APITimeoutError",
    409: "ConflictError",
    413: "RequestTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
    529: "OverloadedError",
}
_KIND_ERROR_TYPES: dict[str, str] = {
    "timeout": "APITimeoutError",
    "connection": "APIConnectionError",
    "malformed": "MalformedResponseError",
    "breaker_open": "CircuitOpenError",
    "rate_limited": "RateLimitError",
    "tool_error": "ToolError",
    "cancelled": "CancelledError",
}
_MAX_MESSAGE = 2000


@dataclass(frozen=True)
class Failure:
    """One failed attempt, in terms the policy engine decides on.

    ``kind`` says where it failed (an HTTP error status, a timeout, the breaker...);
    ``category`` folds that into the classes policies are written against.
    ``retry_after_s`` is the provider's (or the breaker's) own "come back in" hint.
    """

    kind: FailureKind
    status_code: int | None = None
    retry_after_s: float | None = None
    error_type: str = ""
    message: str = ""
    code: str | None = None

    @property
    def category(self) -> FailureCategory:
        if self.kind == "http":
            status = self.status_code or 0
            if status == 429:
                return "rate_limit"
            if status == 408:
                return "timeout"
            if status >= 500:
                return "server_error"
            return "client_error"
        if self.kind == "rate_limited":
            return "rate_limit"
        return self.kind

    @property
    def counts_for_breaker(self) -> bool:
        """Whether this failure says the route is unhealthy.

        Server errors, timeouts, connection errors and malformed responses count; a bad
        request, a 429 (the provider is up, just busy) or a cancellation does not.
        """
        return self.category in _BREAKER_CATEGORIES

    def to_error_info(self, retryable: bool | None = None) -> ErrorInfo:
        status = self.status_code if self.status_code is not None and 100 <= self.status_code <= 599 else None
        retry_after = self.retry_after_s
        if retry_after is not None and not math.isfinite(retry_after):
            retry_after = None
        return ErrorInfo(
            type=self.error_type or _default_error_type(self.kind, self.status_code),
            message=self.message,
            status_code=status,
            code=self.code,
            retryable=retryable,
            retry_after_s=None if retry_after is None else max(0.0, retry_after),
        )

    @classmethod
    def breaker_open(cls, route: str, *, retry_after_s: float | None) -> Failure:
        """The failure the executor records when the breaker of ``route`` refused a call."""
        return cls(
            kind="breaker_open",
            retry_after_s=None if retry_after_s is None else max(0.0, retry_after_s),
            error_type="CircuitOpenError",
            message=f"circuit for {route} is open",
        )


def _default_error_type(kind: str, status: int | None) -> str:
    if kind == "http":
        if status is not None and status in _STATUS_ERROR_TYPES:
            return _STATUS_ERROR_TYPES[status]
        if status is not None and status >= 500:
            return "InternalServerError"
        return "APIStatusError"
    return _KIND_ERROR_TYPES.get(kind, "Error")


# -- HTTP responses --------------------------------------------------------------------


def classify_http(status: int, headers: Mapping[str, str], body: bytes | None, *, now: float) -> Failure:
    """The failure an HTTP error response stands for.

    Reads the OpenAI (``{"error": {"message", "type", "code"}}``), Anthropic
    (``{"type": "error", "error": {"type", "message"}}``) and Google (``{"error": {"code",
    "message", "status", "details"}}``) error bodies; any other body is kept, shortened, as
    the message. The retry hint comes from :func:`parse_retry_after`, else from a Google
    body's ``google.rpc.RetryInfo`` detail (``"retryDelay": "34s"``).
    """
    return _classify_http(status, headers, body, now=now)


def _classify_http(status: int, headers: Mapping[str, str], body: bytes | None, *,
                   now: float | None) -> Failure:
    message, code, retry_info = _error_body(body)
    retry = _retry_after(headers, now=now, status=status)
    if not message:
        try:
            message = f"HTTP {status} {HTTPStatus(status).phrase}"
        except ValueError:
            message = f"HTTP {status}"
    return Failure(
        kind="http",
        status_code=status,
        retry_after_s=retry if retry is not None else retry_info,
        error_type=_default_error_type("http", status),
        message=message,
        code=code,
    )


def _error_body(body: bytes | None) -> tuple[str, str | None, float | None]:
    """The message, the code and Google's ``RetryInfo`` delay (seconds) of an error body."""
    if not body:
        return "", None, None
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data: Any = json.loads(text)
    except ValueError:
        return _shorten(text), None, None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # Google's streaming endpoints wrap their error body in a list
    if not isinstance(data, dict):
        return _shorten(text), None, None
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        code = error.get("code")
        if isinstance(error.get("status"), str) and not isinstance(code, str):
            code = error["status"]  # Google: ``code`` repeats the HTTP status, ``status`` names it
        if not isinstance(code, str | int) or isinstance(code, bool):
            code = error.get("type")  # Anthropic names the error by its type only
        return (
            _shorten(message) if isinstance(message, str) else _shorten(text),
            str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None,
            _retry_info(error.get("details")),
        )
    for key in ("error", "message", "detail"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return _shorten(value), None, None
    return _shorten(text), None, None


def _retry_info(details: Any) -> float | None:
    """The ``retryDelay`` of a ``google.rpc.RetryInfo`` among an error's details (``"34s"``, ``"0.5s"``)."""
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            seconds = _duration(delay) if isinstance(delay, str) else None
            if seconds is not None and seconds >= 0:
                return seconds
    return None


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


# -- retry hints -----------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
                   "d": 86400.0}
_RFC3339_FRACTION = re.compile(r"(\.\d{6})\d+")
_RESET_HEADERS = (
    # (reset header, matching remaining header, how the reset is written)
    ("x-ratelimit-reset-requests", "x-ratelimit-remaining-requests", "duration"),
    ("x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens", "duration"),
    ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-requests-remaining", "timestamp"),
    ("anthropic-ratelimit-tokens-reset", "anthropic-ratelimit-tokens-remaining", "timestamp"),
    ("anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-input-tokens-remaining", "timestamp"),
    ("anthropic-ratelimit-output-tokens-reset", "anthropic-ratelimit-output-tokens-remaining", "timestamp"),
)


def parse_retry_after(
    headers: Mapping[str, str], *, now: float, status: int | None = None
) -> float | None:
    """Seconds the provider asks us to wait, or ``None`` if its headers say nothing.

    In order of precedence (header names are case-insensitive):

    1. ``retry-after-ms`` (milliseconds);
    2. ``Retry-After``, as seconds or as an HTTP-date;
    3. the rate-limit reset headers: OpenAI's ``x-ratelimit-reset-requests`` /
       ``-tokens`` (durations such as ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) and
       Anthropic's ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset``
       (RFC 3339 timestamps). A reset applies when its ``remaining`` header is 0; the
       wait is the latest such reset, since every exhausted limit must have refilled.
       On a 429 where no remaining header reads 0 (the limit that tripped is not named),
       the soonest reset is used: the retry learns more if that was too early.

    ``now`` is the current epoch time in seconds; a negative result is returned as 0.
    Unparseable values are ignored rather than guessed.
    """
    return _retry_after(headers, now=now, status=status)


def _retry_after(headers: Mapping[str, str], *, now: float | None, status: int | None) -> float | None:
    lower = {k.lower(): v.strip() for k, v in headers.items()}
    ms = _number(lower.get("retry-after-ms"))
    if ms is not None:
        return max(0.0, ms / 1000.0)
    raw = lower.get("retry-after")
    if raw:
        seconds = _number(raw)
        if seconds is None and now is not None:
            seconds = _http_date(raw, now)
        if seconds is not None:
            return max(0.0, seconds)
    exhausted: list[float] = []
    unknown: list[float] = []
    for reset_header, remaining_header, form in _RESET_HEADERS:
        value = lower.get(reset_header)
        if not value:
            continue
        wait = _duration(value) if form == "duration" else _timestamp(value, now)
        if wait is None:
            continue
        remaining = _number(lower.get(remaining_header))
        if remaining is not None and remaining <= 0:
            exhausted.append(wait)
        elif status == 429:
            unknown.append(wait)
    if exhausted:
        return max(0.0, max(exhausted))
    if unknown:
        return max(0.0, min(unknown))
    return None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _http_date(value: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - now


def _duration(value: str) -> float | None:
    """Go-style durations as OpenAI writes them (``6m0s``, ``20ms``); a bare number is seconds."""
    plain = _number(value)
    if plain is not None:
        return plain
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            return None
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        position = match.end()
    return total if position == len(value) and position > 0 else None


def _timestamp(value: str, now: float | None) -> float | None:
    if now is None:
        return None
    text = _RFC3339_FRACTION.sub(r"\1", value.replace("z", "Z"))
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - now


# -- exceptions ------------------------------------------------------------------------

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.NetworkError,
    aiohttp.ClientConnectionError,  # refused, reset, disconnected, DNS, TLS
    aiohttp.ClientPayloadError,  # the body broke off
    ConnectionError,
)


def classify_exception(exc: BaseException, *, now: float | None = None) -> Failure:
    """The failure an exception raised by an attempt stands for.

    httpx timeouts and ``TimeoutError`` (aiohttp's included) are timeouts; httpx connect,
    read, write and protocol errors, aiohttp's connection errors and broken bodies
    (``ClientConnectionError``, ``ClientPayloadError``) and ``ConnectionError`` are
    connection failures; a cancelled task is ``cancelled``; a ``json.JSONDecodeError`` is
    a malformed response. An exception that
    carries an HTTP response (``httpx.HTTPStatusError``, the SDKs' ``APIStatusError``)
    is classified as that response (pass ``now`` to read date-valued retry headers).
    Anything else is a ``tool_error`` named after its class.
    """
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, asyncio.CancelledError):
        return Failure(kind="cancelled", error_type="CancelledError", message=_shorten(detail))
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return Failure(kind="timeout", error_type="APITimeoutError", message=_shorten(detail))
    if isinstance(exc, _CONNECTION_ERRORS):
        return Failure(kind="connection", error_type="APIConnectionError", message=_shorten(detail))
    if isinstance(exc, json.JSONDecodeError):
        return Failure(kind="malformed", error_type="MalformedResponseError", message=_shorten(detail))
    response = _response_of(exc)
    if response is not None:
        return _classify_http(*response, now=now)
    return Failure(kind="tool_error", error_type=type(exc).__name__, message=_shorten(str(exc)))


def _response_of(exc: BaseException) -> tuple[int, Mapping[str, str], bytes | None] | None:
    """Status, headers and body of an exception that wraps an HTTP error response."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        return None
    headers = getattr(response, "headers", None)
    try:
        body = response.content if isinstance(response, httpx.Response) else None
    except httpx.ResponseNotRead:
        body = None
    return status, dict(headers.items()) if isinstance(headers, Mapping) else {}, body
