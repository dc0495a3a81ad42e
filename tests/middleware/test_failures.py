"""Failures: HTTP statuses, provider error bodies, retry hints and exceptions, normalised."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import httpx
import pytest
from aiohttp.client_reqrep import ConnectionKey

from tether.middleware import Failure, classify_exception, classify_http, parse_retry_after
from tether.middleware._http import UpstreamProtocolError
from tether.schemas import ErrorInfo

NOW = 1_800_000_000.0  # a fixed "current time", in epoch seconds


def _iso(seconds_from_now: float) -> str:
    return (datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=seconds_from_now)).isoformat().replace(
        "+00:00", "Z")


# -- categories ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "category", "error_type", "counts"),
    [
        (400, "client_error", "BadRequestError", False),
        (401, "client_error", "AuthenticationError", False),
        (403, "client_error", "PermissionDeniedError", False),
        (404, "client_error", "NotFoundError", False),
        (408, "timeout", "APITimeoutError", True),
        (409, "client_error", "ConflictError", False),
        (422, "client_error", "UnprocessableEntityError", False),
        (429, "rate_limit", "RateLimitError", False),
        (500, "server_error", "InternalServerError", True),
        (502, "server_error", "InternalServerError", True),
        (503, "server_error", "ServiceUnavailableError", True),
        (529, "server_error", "OverloadedError", True),
        (418, "client_error", "APIStatusError", False),
    ],
)
def test_http_status_category_and_sdk_name(status: int, category: str, error_type: str, counts: bool) -> None:
    failure = classify_http(status, {}, None, now=NOW)
    assert failure.kind == "http"
    assert failure.status_code == status
    assert failure.category == category
    assert failure.error_type == error_type
    assert failure.counts_for_breaker is counts
    assert failure.message.startswith(f"HTTP {status}")


@pytest.mark.parametrize(
    ("kind", "category", "counts"),
    [
        ("timeout", "timeout", True),
        ("connection", "connection", True),
        ("malformed", "malformed", True),
        ("breaker_open", "breaker_open", False),
        ("rate_limited", "rate_limit", False),
        ("tool_error", "tool_error", False),
        ("cancelled", "cancelled", False),
    ],
)
def test_non_http_kinds(kind: str, category: str, counts: bool) -> None:
    failure = Failure(kind=kind)  # type: ignore[arg-type]
    assert failure.category == category
    assert failure.counts_for_breaker is counts
    assert failure.to_error_info().type  # every kind has a readable default name


# -- error bodies ----------------------------------------------------------------------


def test_openai_error_body() -> None:
    body = json.dumps({"error": {"message": "Rate limit reached for gpt-4o", "type": "requests",
                                 "param": None, "code": "rate_limit_exceeded"}}).encode()
    failure = classify_http(429, {"retry-after": "2"}, body, now=NOW)
    assert failure.message == "Rate limit reached for gpt-4o"
    assert failure.code == "rate_limit_exceeded"
    assert failure.retry_after_s == 2.0


def test_openai_error_body_without_code_uses_type() -> None:
    body = b'{"error": {"message": "bad model", "type": "invalid_request_error", "code": null}}'
    failure = classify_http(400, {}, body, now=NOW)
    assert (failure.message, failure.code) == ("bad model", "invalid_request_error")


def test_anthropic_error_body() -> None:
    body = json.dumps({"type": "error",
                       "error": {"type": "overloaded_error", "message": "Overloaded"}}).encode()
    failure = classify_http(529, {}, body, now=NOW)
    assert failure.message == "Overloaded"
    assert failure.code == "overloaded_error"
    assert failure.category == "server_error"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
        (b"\xff\xfe not utf-8", "\ufffd\ufffd not utf-8"),
        (b"[1, 2]", "[1, 2]"),
        (b'{"error": "upstream closed"}', "upstream closed"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b'{"error": {"code": 42}}', '{"error": {"code": 42}}'),
        (b"   ", "HTTP 502 Bad Gateway"),
    ],
)
def test_garbage_bodies_are_kept_not_fatal(body: bytes, message: str) -> None:
    assert classify_http(502, {}, body, now=NOW).message == message


def test_huge_body_is_shortened() -> None:
    failure = classify_http(500, {}, b"x" * 100_000, now=NOW)
    assert len(failure.message) == 2000
    assert failure.message.endswith("…")


def test_error_info_round_trip() -> None:
    failure = classify_http(429, {"Retry-After": "3"}, b'{"error": {"message": "slow down"}}', now=NOW)
    info = failure.to_error_info(retryable=True)
    assert info == ErrorInfo(type="RateLimitError", message="slow down", status_code=429, code=None,
                             retryable=True, retry_after_s=3.0)


def test_error_info_drops_impossible_values() -> None:
    info = Failure(kind="http", status_code=999, retry_after_s=float("inf")).to_error_info()
    assert info.status_code is None
    assert info.retry_after_s is None
    assert info.type == "InternalServerError"


def test_breaker_open_failure() -> None:
    failure = Failure.breaker_open("openai:gpt-4o", retry_after_s=-1)
    assert failure.category == "breaker_open"
    assert failure.retry_after_s == 0.0
    assert "openai:gpt-4o" in failure.message


# -- retry hints -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"RETRY-AFTER": "0"}, 0.0),
        ({"Retry-After": "-4"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise one wins
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_forms(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_retry_after_http_date() -> None:
    when = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)
    assert when.endswith("GMT")
    assert parse_retry_after({"Retry-After": when}, now=NOW) == pytest.approx(30)
    past = datetime.fromtimestamp(NOW - 30, UTC)
    assert parse_retry_after({"Retry-After": format_datetime(past, usegmt=True)}, now=NOW) == 0.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5s", 0.5), ("2", 2.0)],
)
def test_openai_reset_durations_when_exhausted(value: str, seconds: float) -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": value}
    assert parse_retry_after(headers, now=NOW) == pytest.approx(seconds)


def test_openai_reset_ignored_while_budget_remains_unless_429() -> None:
    headers = {"x-ratelimit-remaining-tokens": "1200", "x-ratelimit-reset-tokens": "6m0s"}
    assert parse_retry_after(headers, now=NOW) is None
    assert parse_retry_after(headers, now=NOW, status=429) == 360.0
    assert classify_http(429, headers, None, now=NOW).retry_after_s == 360.0
    assert classify_http(500, headers, None, now=NOW).retry_after_s is None


def test_the_exhausted_limit_decides_not_the_other_one() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s",
    }
    assert parse_retry_after(headers, now=NOW, status=429) == 360.0
    headers["x-ratelimit-remaining-tokens"] = "500"
    headers["x-ratelimit-remaining-requests"] = "0"
    assert parse_retry_after(headers, now=NOW, status=429) == 1.0


def test_unparseable_reset_is_ignored() -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6 minutes"}
    assert parse_retry_after(headers, now=NOW) is None


def test_anthropic_reset_timestamps() -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": _iso(12),
        "anthropic-ratelimit-tokens-remaining": "40000",
        "anthropic-ratelimit-tokens-reset": _iso(50),
    }
    assert parse_retry_after(headers, now=NOW) == pytest.approx(12)
    headers["anthropic-ratelimit-output-tokens-remaining"] = "0"
    headers["anthropic-ratelimit-output-tokens-reset"] = _iso(20)
    assert parse_retry_after(headers, now=NOW) == pytest.approx(20)  # every exhausted limit must refill


def test_anthropic_reset_with_nanoseconds_and_offset() -> None:
    headers = {"anthropic-ratelimit-input-tokens-remaining": "0",
               "anthropic-ratelimit-input-tokens-reset": _iso(5).replace("Z", ".123456789+00:00")}
    assert parse_retry_after(headers, now=NOW) == pytest.approx(5.123456, abs=1e-5)


def test_anthropic_reset_in_the_past_is_zero() -> None:
    headers = {"anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": _iso(-10)}
    assert parse_retry_after(headers, now=NOW) == 0.0


def test_retry_after_beats_reset_headers() -> None:
    headers = {"retry-after": "3", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m"}
    assert parse_retry_after(headers, now=NOW, status=429) == 3.0


# -- exceptions ------------------------------------------------------------------------

_REQUEST = httpx.Request("POST", "http://provider.test/v1/chat/completions")
# a private aiohttp type whose fields grew (server_hostname, 3.11); by keyword, the ones every version has
_KEY = ConnectionKey(host="provider.test", port=443, is_ssl=True, ssl=True, proxy=None, proxy_auth=None,
                     proxy_headers_hash=None)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ReadTimeout("slow", request=_REQUEST), "timeout"),
        (httpx.ConnectTimeout("slow", request=_REQUEST), "timeout"),
        (httpx.PoolTimeout("slow", request=_REQUEST), "timeout"),
        (TimeoutError(), "timeout"),
        (httpx.ConnectError("refused", request=_REQUEST), "connection"),
        (httpx.RemoteProtocolError("peer closed connection", request=_REQUEST), "connection"),
        (httpx.ReadError("reset", request=_REQUEST), "connection"),
        (httpx.WriteError("broken pipe", request=_REQUEST), "connection"),
        (ConnectionResetError(104, "reset by peer"), "connection"),
        # the worker's provider client (aiohttp)
        (aiohttp.ServerTimeoutError("Timeout on reading data from socket"), "timeout"),
        (aiohttp.SocketTimeoutError("Timeout on reading data from socket"), "timeout"),
        (aiohttp.ConnectionTimeoutError("Connection timeout to host"), "timeout"),
        (aiohttp.ClientConnectorError(_KEY, OSError(111, "Connection refused")), "connection"),
        (aiohttp.ServerDisconnectedError(), "connection"),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "connection"),
        (aiohttp.ClientPayloadError("Response payload is not completed"), "connection"),
        (UpstreamProtocolError("Invalid HTTP response"), "connection"),
        (asyncio.CancelledError(), "cancelled"),
        (json.JSONDecodeError("Expecting value", "{", 1), "malformed"),
    ],
)
def test_exception_kinds(exc: BaseException, kind: str) -> None:
    failure = classify_exception(exc)
    assert failure.kind == kind
    assert type(exc).__name__ in failure.message or kind == "cancelled"


def test_anything_else_is_a_tool_error_named_after_its_class() -> None:
    failure = classify_exception(KeyError("city"))
    assert failure.kind == "tool_error"
    assert failure.error_type == "KeyError"
    assert failure.message == "'city'"
    assert not failure.counts_for_breaker


def test_exception_with_a_response_is_classified_as_that_response() -> None:
    response = httpx.Response(503, headers={"Retry-After": "4"}, content=b'{"error": {"message": "down"}}',
                              request=_REQUEST)
    exc = httpx.HTTPStatusError("503", request=_REQUEST, response=response)
    failure = classify_exception(exc, now=NOW)
    assert (failure.kind, failure.status_code, failure.retry_after_s) == ("http", 503, 4.0)
    assert failure.message == "down"


def test_exception_response_dates_need_now() -> None:
    headers = {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": _iso(8)}
    response = httpx.Response(429, headers=headers, request=_REQUEST)
    exc = httpx.HTTPStatusError("429", request=_REQUEST, response=response)
    assert classify_exception(exc).retry_after_s is None  # no clock read behind our back
    assert classify_exception(exc, now=NOW).retry_after_s == pytest.approx(8)
