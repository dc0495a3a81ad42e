"""Bad requests get the provider-format 4xx they would get upstream; agents that go away are let go.

Each refusal is checked with the SDK that would see it (it must raise its usual exception)
or raw HTTP where an SDK cannot send the request (invalid JSON). Nothing refused reaches the
provider. Streams are cut by a scripted upstream that sends one event and then waits, so the
gateway's handling of a cancelled or disconnected agent is seen mid-stream for sure.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tether.adapters.gateway import GatewayServer
from tether.bus import Bus
from tether.middleware import PolicySet, ProviderConfig
from tether.testing.fake_provider import FakeProvider

from .conftest import GATEWAY_KEY, data, gateway_config, kinds, run_events, story

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

CHAT = [{"role": "user", "content": "hi"}]
CHUNK = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"slow-1","choices":[{"index":0,'
         b'"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\n')


class SlowUpstream:
    """An OpenAI-compatible upstream that streams one chunk, then waits until the connection closes."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        found = re.search(rb"content-length: *(\d+)", head, re.I)
        await reader.readexactly(int(found[1]) if found else 0)
        self.requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(), 30)  # b"" once the gateway lets go
        finally:
            self.closed.set()
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"


@pytest.fixture
async def slow() -> AsyncIterator[SlowUpstream]:
    upstream = SlowUpstream()
    upstream.server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    async with upstream.server:
        yield upstream


@pytest.fixture
async def strict(fake: FakeProvider, bus: Bus, policies: PolicySet, slow: SlowUpstream) -> AsyncIterator[Any]:
    """A gateway with a 1 MB body limit and a slow upstream for ``slow-*`` models."""
    slow_provider = ProviderConfig("slow", "openai", slow.url, api_key="sk-slow-0000000000")
    config = gateway_config(fake, policies, providers={"slow": slow_provider}, max_body_mb=1,
                            models={"slow-*": "slow", "gpt-*": "openai", "claude-*": "anthropic"})
    async with GatewayServer(config, bus, port=0, grace_s=1) as server:
        yield server


def oai(server: GatewayServer, key: str = GATEWAY_KEY, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, **options)


async def test_unknown_gateway_key(fake: FakeProvider, strict: GatewayServer) -> None:
    async with oai(strict, key="tg-not-a-key-at-all") as sdk, \
            anthropic.AsyncAnthropic(base_url=strict.url, api_key="sk-ant-nope-nope") as claude:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
        with pytest.raises(anthropic.AuthenticationError) as claude_caught:
            await claude.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=CHAT)  # type: ignore[arg-type]
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()
    assert caught.value.code == "invalid_api_key" and caught.value.response.headers["x-should-retry"] == "false"
    assert claude_caught.value.response.json() == {
        "type": "error", "error": {"type": "authentication_error",
                                   "message": "Incorrect API key provided (not a key of this tether gateway)"}}
    async with httpx.AsyncClient() as http:
        missing = await http.post(strict.url + "/v1/chat/completions", json={"model": "gpt-4o-mini"})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert fake.log == [], "nothing reached the provider"


async def test_huge_request_body(fake: FakeProvider, strict: GatewayServer) -> None:
    big = "x" * (1024 * 1024 + 10)
    async with oai(strict) as sdk, anthropic.AsyncAnthropic(base_url=strict.url, api_key=GATEWAY_KEY) as claude:
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": big}])  # type: ignore[arg-type]
        with pytest.raises(anthropic.APIStatusError) as claude_caught:
            await claude.messages.create(model="claude-haiku-4-5", max_tokens=5,
                                         messages=[{"role": "user", "content": big}])  # type: ignore[arg-type]
    assert caught.value.status_code == 413 and caught.value.code == "request_too_large"
    assert claude_caught.value.status_code == 413
    assert claude_caught.value.response.json()["error"]["type"] == "request_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(20):
            yield b" " * 100_000

    async with httpx.AsyncClient() as http:
        chunked = await http.post(strict.url + "/v1/chat/completions", content=chunks(),
                                  headers={"authorization": f"Bearer {GATEWAY_KEY}"})
    assert chunked.status_code == 413
    assert fake.log == []


async def test_invalid_json_and_missing_model(fake: FakeProvider, strict: GatewayServer) -> None:
    auth = {"authorization": f"Bearer {GATEWAY_KEY}", "content-type": "application/json"}
    async with httpx.AsyncClient() as http:
        broken = await http.post(strict.url + "/v1/chat/completions", content=b'{"model": "gpt-4o-mini", ',
                                 headers=auth)
        not_object = await http.post(strict.url + "/v1/messages", content=b"[1, 2]",
                                     headers={"x-api-key": GATEWAY_KEY, "content-type": "application/json"})
        no_model = await http.post(strict.url + "/v1/chat/completions", json={"messages": CHAT}, headers=auth)
    assert broken.status_code == 400
    assert broken.json()["error"]["type"] == "invalid_request_error"
    assert broken.json()["error"]["code"] == "invalid_json"
    assert not_object.status_code == 400 and not_object.json()["type"] == "error"
    assert not_object.json()["error"]["type"] == "invalid_request_error"
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    assert fake.log == []


async def test_unknown_model(fake: FakeProvider, strict: GatewayServer) -> None:
    async with oai(strict) as sdk, anthropic.AsyncAnthropic(base_url=strict.url, api_key=GATEWAY_KEY) as claude:
        with pytest.raises(openai.NotFoundError) as caught:
            await sdk.chat.completions.create(model="o9-imaginary", messages=CHAT)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError) as wrong_format:
            await sdk.chat.completions.create(model="claude-haiku-4-5", messages=CHAT)  # type: ignore[arg-type]
        with pytest.raises(anthropic.NotFoundError):
            await claude.messages.create(model="gpt-4o", max_tokens=5, messages=CHAT)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("o9-imaginary")
    assert caught.value.code == "model_not_found"
    assert "Anthropic" in str(wrong_format.value), "the message says which format serves that model"
    assert fake.log == []


async def test_unknown_model_upstream_is_the_providers_404(bus: Bus, policies: PolicySet) -> None:
    async with FakeProvider(models=["gpt-4o-mini"]) as fake:
        config = gateway_config(fake, policies)
        async with GatewayServer(config, bus, port=0, grace_s=1) as server, oai(server) as sdk:
            with pytest.raises(openai.NotFoundError) as caught:
                await sdk.chat.completions.create(model="gpt-5-unreleased", messages=CHAT,  # type: ignore[arg-type]
                                                  extra_headers={"x-tether-run-id": "upstream-404"})
    assert caught.value.code == "model_not_found"
    assert len(fake.log) == 1, "a 404 is not retried"
    events = await run_events(bus, "upstream-404")
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.failed",
                             "call.dead_lettered"]


async def test_unknown_path_and_method(strict: GatewayServer) -> None:
    async with httpx.AsyncClient() as http:
        path = await http.post(strict.url + "/v1/assistants", json={}, headers={"authorization": "Bearer x"})
        method = await http.get(strict.url + "/v1/chat/completions")
        health = await http.get(strict.url + "/healthz")
    assert path.status_code == 404 and path.json()["error"]["message"] == "Invalid URL (POST /v1/assistants)"
    assert method.status_code == 405 and "error" in method.json()
    assert health.json()["status"] == "ok"


async def test_cancelled_mid_stream(bus: Bus, strict: GatewayServer, slow: SlowUpstream) -> None:
    got = asyncio.Event()

    async def consume() -> None:
        async with oai(strict) as sdk:
            stream = await sdk.chat.completions.create(model="slow-1", messages=CHAT, stream=True,  # type: ignore[arg-type]
                                                       extra_headers={"x-tether-run-id": "cancelled"})
            async for _ in stream:
                got.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(slow.closed.wait(), 10)  # the gateway let go of the upstream
    events = await story(bus, "cancelled", "llm.call.failed", timeout=20)
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.failed"]
    assert data(events, "failed")[0].error.code == "client_closed"


async def test_client_disconnects_mid_stream(bus: Bus, strict: GatewayServer, slow: SlowUpstream) -> None:
    async with oai(strict) as sdk:
        stream = await sdk.chat.completions.create(model="slow-1", messages=CHAT, stream=True,  # type: ignore[arg-type]
                                                   extra_headers={"x-tether-run-id": "disconnect"})
        first = await stream.__anext__()
        await stream.close()
    assert first.choices[0].delta.content == "Hel"
    await asyncio.wait_for(slow.closed.wait(), 10)
    await asyncio.sleep(0.1)
    events = await run_events(bus, "disconnect")
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.failed"]
    failed = data(events, "failed")[0]
    assert failed.error.code == "client_closed" and "before it ended" in failed.error.message


async def test_client_disconnects_before_the_answer(fake: FakeProvider, bus: Bus, strict: GatewayServer) -> None:
    fake.set_faults("hang(20s)")
    async with httpx.AsyncClient(timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(strict.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": CHAT},
                            headers={"authorization": f"Bearer {GATEWAY_KEY}", "x-tether-run-id": "gone"})
    events = await story(bus, "gone", "llm.call.failed", timeout=20)
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.failed"]
    assert data(events, "failed")[0].error.code == "client_cancelled"
    assert [r.outcome for r in fake.log] == ["hang"]


async def test_stream_broken_after_the_first_byte_ends_with_an_error_event(fake: FakeProvider, bus: Bus,
                                                                           strict: GatewayServer) -> None:
    fake.set_faults("reset_mid_stream(3)")
    async with oai(strict) as sdk:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True,  # type: ignore[arg-type]
                                                   extra_headers={"x-tether-run-id": "broken"})
        with pytest.raises(openai.APIError, match="upstream stream broke"):
            async for _ in stream:
                pass
    assert len(fake.log) == 1, "after the first byte nothing is retried"
    events = await run_events(bus, "broken")
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.failed",
                             "call.dead_lettered"]


async def test_non_json_stream_error_body_is_json(strict: GatewayServer) -> None:
    """Every answer the gateway writes itself is JSON in the provider's format."""
    async with httpx.AsyncClient() as http:
        answer = await http.post(strict.url + "/v1/embeddings", content=b"\x00\x01",
                                 headers={"authorization": f"Bearer {GATEWAY_KEY}"})
    assert answer.headers["content-type"] == "application/json"
    assert json.loads(answer.content)["error"]["code"] == "invalid_json"


async def test_count_tokens_and_query_strings_pass_through(fake: FakeProvider, bus: Bus, strict: GatewayServer) -> None:
    """count_tokens is no LLM call: forwarded as it is (the fake has no such endpoint: its own 404 comes back);
    the query string of a beta client reaches the provider."""
    headers = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01", "x-tether-run-id": "count-tokens"}
    async with httpx.AsyncClient() as http:
        counted = await http.post(strict.url + "/v1/messages/count_tokens", headers=headers,
                                  json={"model": "claude-haiku-4-5", "messages": CHAT})
        beta = await http.post(strict.url + "/v1/messages?beta=true", headers=headers,
                               json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": CHAT})
    assert counted.status_code == 404 and counted.json()["error"]["type"] == "not_found_error"
    assert "x-should-retry" not in counted.headers, "the provider's answer, not one the gateway wrote"
    assert beta.status_code == 200
    assert [r.path for r in fake.log] == ["/v1/messages"], "count_tokens went upstream, unlogged by the fake"
    assert kinds(await run_events(bus, "count-tokens")) == ["run.started", "llm.call.requested",
                                                                 "llm.call.completed"]
