"""The worker's provider HTTP client (aiohttp) against the real fake provider over HTTP: answers,
headers, every fault classified as it was with httpx, streams chunk by chunk, closing."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tether.bus import connect
from tether.middleware import Executor, InlineCalls, ProviderConfig
from tether.middleware._failures import Failure, classify_exception, classify_http
from tether.middleware._http import ProviderHttp, UpstreamProtocolError
from tether.middleware._providers import run_llm_attempt
from tether.testing import NatsServer
from tether.testing.fake_provider import FakeProvider

pytestmark = pytest.mark.anyio

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "What is the weather like in Paris?"}]}
STREAM = {**CHAT, "stream": True}


@pytest.fixture(scope="module")
def shared() -> Iterator[FakeProvider]:
    with FakeProvider(seed=7) as provider:
        yield provider


@pytest.fixture
def fp(shared: FakeProvider) -> FakeProvider:
    shared.reset()
    return shared


@pytest.fixture
async def http() -> AsyncIterator[ProviderHttp]:
    client = ProviderHttp(max_connections=4)
    try:
        yield client
    finally:
        await client.aclose()


def chat_url(fp: FakeProvider) -> str:
    return fp.url + "/chat/completions"


async def failure_of(call: Awaitable[object]) -> Failure:
    try:
        await call
    except Exception as exc:
        return classify_exception(exc)
    raise AssertionError("the call did not fail")


async def test_an_answer_with_its_status_headers_and_body(fp: FakeProvider, http: ProviderHttp) -> None:
    response = await http.post(chat_url(fp), body=CHAT, headers={"Idempotency-Key": "k1"}, timeout_s=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == response.headers["Content-Type"] == "application/json"
    assert b'"chat.completion"' in response.content
    assert fp.log[0].status == 200


async def test_429_retry_after_and_rate_limit_headers_are_read(fp: FakeProvider, http: ProviderHttp) -> None:
    fp.set_faults("429(3s)")
    response = await http.post(chat_url(fp), body=CHAT, headers={}, timeout_s=5)
    assert response.status_code == 429
    assert response.headers["retry-after"] == response.headers["Retry-After"] == "3"
    assert response.headers["X-RateLimit-Remaining-Requests"] == "0"
    failure = classify_http(response.status_code, response.headers, response.content, now=time.time())
    assert (failure.kind, failure.category, failure.retry_after_s) == ("http", "rate_limit", 3.0)
    assert failure.error_type == "RateLimitError" and "Rate limit" in failure.message


@pytest.mark.parametrize(("spec", "category", "error_type"), [
    ("500", "server_error", "InternalServerError"),
    ("503", "server_error", "ServiceUnavailableError"),
    ("400", "client_error", "BadRequestError"),
])
async def test_error_statuses_are_classified_from_the_answer(fp: FakeProvider, http: ProviderHttp, spec: str,
                                                             category: str, error_type: str) -> None:
    fp.set_faults(spec)
    provider = ProviderConfig("fake", "openai", fp.url)
    out = await run_llm_attempt(http, provider, operation="chat", model="gpt-4o", body=CHAT, timeout_s=5,
                                call_id="c1")
    assert not out.ok and out.failure is not None
    assert (out.failure.status_code, out.failure.category, out.failure.error_type) == (int(spec), category,
                                                                                       error_type)


async def test_a_hang_past_the_timeout_is_a_timeout(fp: FakeProvider, http: ProviderHttp) -> None:
    fp.set_faults("hang")
    started = time.monotonic()
    failure = await failure_of(http.post(chat_url(fp), body=CHAT, headers={}, timeout_s=0.3))
    assert failure.kind == "timeout" and failure.error_type == "APITimeoutError"
    assert 0.3 <= time.monotonic() - started < 5.0  # the 0.3 s timeout, not the hang
    assert fp.outcomes == {"hang": 1}


async def test_a_slow_first_byte_within_the_timeout_is_waited_for(fp: FakeProvider, http: ProviderHttp) -> None:
    fp.set_faults("slow_first_byte(200ms)")
    assert (await http.post(chat_url(fp), body=CHAT, headers={}, timeout_s=2)).status_code == 200
    failure = await failure_of(http.post(chat_url(fp), body=CHAT, headers={}, timeout_s=0.05))
    assert failure.kind == "timeout"


async def test_a_reset_is_a_connection_failure(fp: FakeProvider, http: ProviderHttp) -> None:
    fp.set_faults("reset")
    failure = await failure_of(http.post(chat_url(fp), body=CHAT, headers={}, timeout_s=5))
    assert failure.kind == "connection" and failure.error_type == "APIConnectionError"
    fp.set_faults("reset_mid_stream")  # not streamed: half the body, then the reset
    failure = await failure_of(http.post(chat_url(fp), body=CHAT, headers={}, timeout_s=5))
    assert failure.kind == "connection"
    fp.clear_faults()
    assert (await http.post(chat_url(fp), body=CHAT, headers={}, timeout_s=5)).status_code == 200


async def test_a_stream_reset_midway_gives_its_chunks_then_a_connection_failure(fp: FakeProvider,
                                                                                 http: ProviderHttp) -> None:
    fp.set_faults("reset_mid_stream(3)")
    stream = await http.post_stream(chat_url(fp), body=STREAM, headers={}, timeout_s=5)
    received = b""
    try:
        assert stream.status_code == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
        with pytest.raises(Exception) as caught:
            async for chunk in stream.aiter_bytes():
                received += chunk
    finally:
        await stream.aclose()
    assert received.count(b"data: {") == 3
    assert classify_exception(caught.value).kind == "connection"


async def test_a_stream_arrives_chunk_by_chunk(fp: FakeProvider, http: ProviderHttp) -> None:
    fp.set_faults("stall_mid_stream(2,400ms)")
    stream = await http.post_stream(chat_url(fp), body=STREAM, headers={}, timeout_s=2)
    started = time.monotonic()
    arrivals: list[tuple[float, bytes]] = []
    try:
        async for chunk in stream.aiter_bytes():
            arrivals.append((time.monotonic() - started, chunk))
    finally:
        await stream.aclose()
    first, *_ = arrivals
    assert first[0] < 0.3 and first[1].startswith(b"data: {")  # before the stall: passed on at once
    assert b"".join(chunk for at, chunk in arrivals if at < 0.3).count(b"data: ") == 2
    assert arrivals[-1][0] >= 0.35 and b"".join(c for _, c in arrivals).rstrip().endswith(b"data: [DONE]")


async def test_a_stream_silent_past_the_timeout_is_a_timeout(fp: FakeProvider, http: ProviderHttp) -> None:
    fp.set_faults("stall_mid_stream(1,30s)")
    stream = await http.post_stream(chat_url(fp), body=STREAM, headers={}, timeout_s=0.3)
    chunks = []
    try:
        with pytest.raises(Exception) as caught:
            async for chunk in stream.aiter_bytes():
                chunks.append(chunk)
    finally:
        await stream.aclose()
    assert chunks and classify_exception(caught.value).kind == "timeout"


async def test_an_error_status_on_a_stream_reads_its_body(fp: FakeProvider, http: ProviderHttp) -> None:
    fp.set_faults("503")
    stream = await http.post_stream(chat_url(fp), body=STREAM, headers={}, timeout_s=5)
    try:
        body = await stream.aread()
    finally:
        await stream.aclose()
    assert stream.status_code == 503 and b"overloaded" in body


async def test_malformed_json_and_down_windows(fp: FakeProvider, http: ProviderHttp) -> None:
    provider = ProviderConfig("fake", "openai", fp.url)

    async def attempt() -> Failure | None:
        out = await run_llm_attempt(http, provider, operation="chat", model="gpt-4o", body=CHAT, timeout_s=5,
                                    call_id="c1")
        return out.failure

    fp.set_faults("malformed_json")
    failure = await attempt()
    assert failure is not None and failure.kind == "malformed"
    fp.clear_faults()
    fp.down_for(0.3)
    failure = await attempt()
    assert failure is not None and (failure.status_code, failure.category) == (503, "server_error")
    await asyncio.sleep(0.35)
    assert await attempt() is None
    fp.down_for(None, mode="reset")
    failure = await attempt()
    assert failure is not None and failure.kind == "connection"


async def _raw_server(answer: bytes, heads: list[bytes] | None = None) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if heads is not None:
            heads.append(head)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions"


async def test_an_answer_that_is_not_http_is_a_connection_failure(http: ProviderHttp) -> None:
    server, url = await _raw_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    async with server:
        with pytest.raises(UpstreamProtocolError) as caught:
            await http.post(url, body=CHAT, headers={}, timeout_s=5)
    assert classify_exception(caught.value).kind == "connection"


async def test_redirects_are_answers_not_followed(http: ProviderHttp) -> None:
    server, url = await _raw_server(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/x\r\n"
                                    b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    async with server:
        response = await http.post(url, body=CHAT, headers={}, timeout_s=5)
    assert response.status_code == 307 and response.headers["location"] == "http://127.0.0.1:9/x"


async def test_a_refused_connection_is_a_connection_failure(http: ProviderHttp) -> None:
    server, url = await _raw_server(b"")
    server.close()
    await server.wait_closed()
    failure = await failure_of(http.post(url, body=CHAT, headers={}, timeout_s=5))
    assert failure.kind == "connection"


async def test_the_environment_s_proxy_is_used_unless_no_proxy_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    heads: list[bytes] = []
    server, url = await _raw_server(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                                    b"Connection: close\r\n\r\n{}", heads)
    proxy = url.removesuffix("/v1/chat/completions")
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "direct.invalid")
    http = ProviderHttp(max_connections=2)
    try:
        async with server:
            response = await http.post("http://provider.invalid/v1/chat/completions", body=CHAT, headers={},
                                       timeout_s=5)
            assert response.status_code == 200 and response.content == b"{}"
            assert heads[0].startswith(b"POST http://provider.invalid/v1/chat/completions HTTP/1.1")
            failure = await failure_of(http.post("http://direct.invalid/v1/chat/completions", body=CHAT,
                                                 headers={}, timeout_s=5))
            assert failure.kind == "connection" and len(heads) == 1  # NO_PROXY: straight to (no) DNS
    finally:
        await http.aclose()


def test_the_client_is_built_inside_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        ProviderHttp(max_connections=1)


async def _no_unclosed_warnings(body: Callable[[], Awaitable[None]]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await body()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


@pytest.mark.nats
async def test_the_session_is_closed_when_the_executor_stops(fp: FakeProvider, nats_server: NatsServer,
                                                             tmp_path: Path) -> None:
    providers = {"fake": ProviderConfig("fake", "openai", fp.url)}

    async def run() -> None:
        async with await connect(nats_server.url, home=tmp_path / "home") as bus:
            executor = Executor(bus, providers=providers, concurrency=2)
            await executor.start()
            http = executor._http
            assert http is not None and not http.closed
            await executor.stop()
            assert http.closed
            async with InlineCalls(bus, providers=providers) as inline:
                await inline.llm("fake", "gpt-4o", CHAT)
                inline_http = inline._http
                assert inline_http is not None and not inline_http.closed
            assert inline_http.closed

    await _no_unclosed_warnings(run)


def test_tls_is_verified_with_httpx_s_trust_store() -> None:
    import ssl

    import certifi

    from tether.middleware._http import _ssl_context

    context = _ssl_context(None, None)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == ssl.create_default_context(
        cafile=certifi.where()).cert_store_stats()["x509_ca"]
