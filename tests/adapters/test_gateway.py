"""The gateway with the real openai and anthropic SDKs, against the fake provider with faults.

uvicorn serves the gateway on a free loopback port; the SDKs' base URL is the gateway's, their
key a gateway key. Each test checks that the SDK sees the answer, that it made no retries of
its own (the fake's log: ``x-stainless-retry-count`` 0 on every request, as many requests as
tether's attempts), and that the events tell the whole story. Sync clients run on a thread:
the gateway shares the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import anthropic
import anyio
import openai
import pytest

from tether.adapters.gateway import GatewayServer, run_for_trace
from tether.bus import Bus
from tether.middleware import BreakerPolicy, FallbackPolicy, Policy, RetryPolicy
from tether.testing.fake_provider import FakeProvider

from .conftest import GATEWAY_KEY, data, fast_policies, gateway_config, kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
CLAUDE_TOOLS = [{"name": "get_weather", "description": "Weather for a city",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def new_trace() -> str:
    return secrets.token_hex(16)


def traceparent(trace: str, span: str = "00f067aa0ba902b7") -> str:
    return f"00-{trace}-{span}-01"


def no_sdk_retries(fake: FakeProvider, attempts: int) -> None:
    llm = [r for r in fake.log if r.api != "models"]
    assert [r.retry_count for r in llm] == [0] * attempts, "the SDK retried on its own"


def oai(server: GatewayServer, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=GATEWAY_KEY, **options)


def claude(server: GatewayServer, **options: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=server.url, api_key=GATEWAY_KEY, **options)


async def test_chat_after_a_rate_limit(fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    fake.set_faults("429(0.1s)#1")
    trace = new_trace()
    async with oai(gateway) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=CHAT, max_tokens=20,  # type: ignore[arg-type]
            extra_headers={"traceparent": traceparent(trace)})
    answer = raw.parse()
    assert answer.choices[0].message.content and raw.status_code == 200
    no_sdk_retries(fake, 2)
    run_id = run_for_trace("bot", trace)
    events = await run_events(bus, run_id)
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]
    assert data(events, "run.started")[0].tags == ("gateway",)
    failed = data(events, "attempt_failed")[0]
    assert (failed.decision, failed.error.status_code) == ("retry", 429)
    assert failed.retry_in_s == pytest.approx(0.1, abs=0.01), "the provider's Retry-After was honoured"
    requested, completed = data(events, "requested")[0], data(events, "completed")[0]
    assert (requested.provider, requested.model, requested.stream) == ("openai", "gpt-4o-mini", False)
    assert requested.request["messages"] == CHAT
    assert completed.usage.input_tokens == answer.usage.prompt_tokens  # type: ignore[union-attr]
    assert completed.response["choices"][0]["message"]["content"] == answer.choices[0].message.content
    assert {e.agentid for e in events} == {"bot"}
    assert all(e.traceparent and e.traceparent.split("-")[1] == trace for e in events)
    assert raw.headers["x-tether-call-id"] == requested.call_id
    assert [r.traceparent.split("-")[1] for r in fake.log] == [trace, trace], "the trace continues upstream"


async def test_stream_after_server_errors_and_a_run_of_two_calls(fake: FakeProvider, bus: Bus,
                                                                  gateway: GatewayServer) -> None:
    fake.set_faults("500#1-2")
    trace = new_trace()
    async with oai(gateway) as sdk:
        texts = []
        for span in ("00f067aa0ba902b7", "00f067aa0ba902b8"):  # one trace, a new span per call (OpenClaw's way)
            stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True,  # type: ignore[arg-type]
                                                       extra_headers={"traceparent": traceparent(trace, span)})
            pieces = [chunk async for chunk in stream]
            texts.append("".join(c.choices[0].delta.content or "" for c in pieces if c.choices))
            assert all(c.choices for c in pieces), "tether asked for usage; the usage chunk is not the agent's"
    assert all(t.startswith("This is fake reply") for t in texts)
    no_sdk_retries(fake, 4)
    events = await run_events(bus, run_for_trace("bot", trace))
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.attempt_failed",
                             "llm.call.attempt_failed", "llm.call.completed", "llm.call.requested",
                             "llm.call.completed"], "one run.started for the trace, both calls in its run"
    completed = data(events, "completed")
    assert completed[0].usage.output_tokens > 0 and completed[0].ttft_ms is not None
    assert completed[0].response["choices"][0]["message"]["content"] == texts[0]


async def test_sync_client_with_tools(fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    fake.set_faults("503#1")
    url = gateway.url + "/v1"

    def call() -> tuple[Any, list[Any]]:
        with openai.OpenAI(base_url=url, api_key=GATEWAY_KEY) as sdk:
            plain = sdk.chat.completions.create(model="gpt-4o", messages=CHAT, tools=TOOLS,  # type: ignore[arg-type]
                                                extra_headers={"x-tether-run-id": "sync-run"})
            stream = sdk.chat.completions.create(model="gpt-4o", messages=CHAT, tools=TOOLS,  # type: ignore[arg-type]
                                                 stream=True, extra_headers={"x-tether-run-id": "sync-run"})
            return plain, list(stream)

    plain, chunks = await asyncio.to_thread(call)
    tool_call = plain.choices[0].message.tool_calls[0]
    assert tool_call.function.name == "get_weather" and "city" in json.loads(tool_call.function.arguments)
    streamed = "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in chunks
                       if c.choices and c.choices[0].delta.tool_calls)
    assert "city" in json.loads(streamed)
    no_sdk_retries(fake, 3)
    events = await run_events(bus, "sync-run")
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                             "llm.call.requested", "llm.call.completed"], "a named run starts at its first call"
    assert data(events, "run.started")[0].name is None
    completed = data(events, "completed")
    assert completed[0].finish_reason == "tool_calls"
    assert completed[1].response["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == streamed


async def test_anthropic_messages_streaming_and_not(fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    fake.set_faults("503#1,429(0.05s)#3")
    async with claude(gateway) as sdk:
        message = await sdk.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=CHAT,  # type: ignore[arg-type]
                                            tools=CLAUDE_TOOLS,  # type: ignore[arg-type]
                                            extra_headers={"x-tether-run-id": "claude-run"})
        async with sdk.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=CHAT,  # type: ignore[arg-type]
                                       extra_headers={"x-tether-run-id": "claude-run"}) as stream:
            text = "".join([piece async for piece in stream.text_stream])
    assert message.content[0].type == "tool_use" and message.content[0].name == "get_weather"
    assert text.startswith("This is fake reply")
    no_sdk_retries(fake, 4)
    events = await run_events(bus, "claude-run")
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                             "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]
    completed = data(events, "completed")
    assert (completed[0].provider, completed[0].finish_reason) == ("anthropic", "tool_use")
    assert completed[1].response["content"][0]["text"] == text and completed[1].usage.output_tokens > 0


async def ended(bus: Bus, run_id: str, calls: int) -> list[Any]:
    """The run's events once ``calls`` calls have ended (completed or failed)."""
    with anyio.fail_after(20):
        while True:
            events = await run_events(bus, run_id)
            if sum(e.type in ("tether.llm.call.completed", "tether.llm.call.failed") for e in events) >= calls:
                return events
            await asyncio.sleep(0.05)


async def test_a_stream_read_to_its_end_is_completed_while_the_upstream_lingers(
        fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    """The SDKs read to the stream's last event and close it; the upstream ends it 0.3 s later.
    The call was delivered in full: completed, with its usage, not closed by the caller."""
    fake.set_faults("linger(300ms)")
    headers = {"x-tether-run-id": "lingering-run"}
    async with oai(gateway) as sdk, claude(gateway) as csdk:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True,  # type: ignore[arg-type]
                                                   extra_headers=headers)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        async with csdk.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=CHAT,  # type: ignore[arg-type]
                                        extra_headers=headers) as claude_stream:
            claude_text = "".join([piece async for piece in claude_stream.text_stream])
    assert text.startswith("This is fake reply") and claude_text.startswith("This is fake reply")
    assert [r.fault for r in fake.log] == ["linger", "linger"]
    events = await ended(bus, "lingering-run", 2)
    assert kinds(events) == ["run.started", *["llm.call.requested", "llm.call.completed"] * 2]
    completed = data(events, "completed")
    assert completed[0].response["choices"][0]["message"]["content"] == text
    assert completed[1].response["content"][0]["text"] == claude_text
    assert all(c.usage.output_tokens > 0 for c in completed)


async def test_every_request_upstream_is_an_attempt_with_its_event(fake: FakeProvider, bus: Bus,
                                                                   gateway: GatewayServer) -> None:
    """A reset after the upstream read the request, on a kept-alive connection, then a 503: each
    is an attempt the policy saw, none a hidden resend (the upstream's log and the events agree)."""
    headers = {"x-tether-run-id": "no-hidden-resend"}
    async with oai(gateway) as sdk:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, extra_headers=headers)  # type: ignore[arg-type]
        fake.set_faults("reset#1,503#2")  # the next request goes on the connection kept alive
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True,  # type: ignore[arg-type]
                                                   extra_headers=headers)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    events = await ended(bus, "no-hidden-resend", 2)
    assert [r.outcome for r in fake.log] == ["200", "reset", "503", "200"]
    attempts = [e for e in events if e.type in ("tether.llm.call.attempt_failed", "tether.llm.call.completed")]
    assert len(attempts) == len(fake.log), "one event per request the upstream got"
    failed = data(events, "attempt_failed")
    assert [(f.attempt, f.error.type, f.error.status_code, f.decision) for f in failed] == [
        (1, "APIConnectionError", None, "retry"), (2, "ServiceUnavailableError", 503, "retry")]
    assert data(events, "completed")[1].attempt == 3


async def test_sync_anthropic(fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    url = gateway.url

    def call() -> str:
        with anthropic.Anthropic(base_url=url, api_key=GATEWAY_KEY) as sdk:
            reply = sdk.messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=CHAT,  # type: ignore[arg-type]
                                        extra_headers={"x-tether-run-id": "sync-claude"})
            block = reply.content[0]
            assert block.type == "text"
            return block.text

    assert (await asyncio.to_thread(call)).startswith("This is fake reply")
    assert kinds(await run_events(bus, "sync-claude")) == ["run.started", "llm.call.requested", "llm.call.completed"]


async def test_responses_and_embeddings(fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    fake.set_faults("500#1")
    headers = {"x-tether-run-id": "responses-run"}
    async with oai(gateway) as sdk:
        stream = await sdk.responses.create(model="gpt-4o-mini", input="Say hello", stream=True, extra_headers=headers)
        kinds_seen = [event.type async for event in stream]
        vectors = await sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"], extra_headers=headers)
    assert kinds_seen[-1] == "response.completed" and len(vectors.data) == 2
    events = await run_events(bus, "responses-run")
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                             "llm.call.requested", "llm.call.completed"]
    completed = data(events, "completed")
    assert completed[0].usage.output_tokens > 0 and completed[1].usage.input_tokens > 0
    no_sdk_retries(fake, 3)


async def test_gave_up_in_the_providers_format_with_retry_after(fake: FakeProvider, bus: Bus,
                                                                 gateway: GatewayServer) -> None:
    fake.set_faults("500")
    async with oai(gateway) as sdk, claude(gateway) as csdk:
        with pytest.raises(openai.InternalServerError) as caught:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT,  # type: ignore[arg-type]
                                              extra_headers={"x-tether-run-id": "gave-up"})
        with pytest.raises(anthropic.InternalServerError) as claude_caught:
            await csdk.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=CHAT,  # type: ignore[arg-type]
                                       extra_headers={"x-tether-run-id": "gave-up-claude"})
    response = caught.value.response
    assert response.headers["x-should-retry"] == "false"
    assert response.headers["retry-after"] == "7", "no hint from the provider: the gateway's retry_after_s"
    assert response.json()["error"]["type"] == "server_error", "the provider's own error body"
    assert claude_caught.value.response.json()["type"] == "error"
    no_sdk_retries(fake, 6)
    events = await run_events(bus, "gave-up")
    assert kinds(events) == ["run.started", "llm.call.requested", *["llm.call.attempt_failed"] * 3, "llm.call.failed",
                             "call.dead_lettered"]
    assert [f.decision for f in data(events, "attempt_failed")] == ["retry", "retry", "give_up"]


async def test_open_breaker_answers_at_once_with_its_cooldown(fake: FakeProvider, bus: Bus) -> None:
    tight = Policy(retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02), timeout_s=5.0,
                   deadline_s=1.0, breaker=BreakerPolicy(failure_streak=2, min_calls=2, window=2, cooldown_s=30))
    model = f"gpt-breaker-{secrets.token_hex(4)}"  # breakers live in KV, shared by every test on this server
    config = gateway_config(fake, fast_policies(**{f"openai:{model}": tight}))
    fake.set_faults("500")
    async with GatewayServer(config, bus, port=0, grace_s=1) as server, oai(server) as sdk:
        with pytest.raises(openai.InternalServerError):
            await sdk.chat.completions.create(model=model, messages=CHAT)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)  # the breaker's transition is shared through KV
        sent = len(fake.log)
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(model=model, messages=CHAT,  # type: ignore[arg-type]
                                              extra_headers={"x-tether-run-id": "breaker"})
    response = caught.value.response
    assert response.status_code == 503 and response.json()["error"]["code"] == "circuit_open"
    assert 25 <= int(response.headers["retry-after"]) <= 30, "stop hammering until the breaker's cooldown ends"
    assert len(fake.log) == sent, "nothing reached the provider"
    events = await run_events(bus, "breaker")
    assert kinds(events)[-2:] == ["llm.call.failed", "call.dead_lettered"]


async def test_fallback_to_another_upstream(fake: FakeProvider, bus: Bus) -> None:
    route = Policy(retry=RetryPolicy(max_attempts=1), timeout_s=5.0, breaker=BreakerPolicy(enabled=False),
                   fallback=FallbackPolicy(targets=("backup:gpt-4o-mini", "anthropic:claude-haiku-4-5")))
    config = gateway_config(fake, fast_policies(**{"openai:gpt-4o": route}))
    fake.set_faults("500=gpt-4o")
    async with GatewayServer(config, bus, port=0, grace_s=1) as server, oai(server) as sdk:
        answer = await sdk.chat.completions.create(model="gpt-4o", messages=CHAT,  # type: ignore[arg-type]
                                                   extra_headers={"x-tether-run-id": "fallback"})
    assert answer.model == "gpt-4o-mini"
    assert [(r.model, r.outcome) for r in fake.log] == [("gpt-4o", "500"), ("gpt-4o-mini", "200")]
    events = await run_events(bus, "fallback")
    failed, completed = data(events, "attempt_failed")[0], data(events, "completed")[0]
    assert (failed.decision, failed.next_model) == ("fallback", "gpt-4o-mini")
    assert (completed.provider, completed.model) == ("backup", "gpt-4o-mini"), \
        "another upstream of the same wire format (the Anthropic target is skipped)"


async def test_model_alias_and_provider_prefix(fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    async with oai(gateway) as sdk:
        await sdk.chat.completions.create(model="fast", messages=CHAT,  # type: ignore[arg-type]
                                          extra_headers={"x-tether-run-id": "alias"})
        await sdk.chat.completions.create(model="backup/gpt-4.1", messages=CHAT,  # type: ignore[arg-type]
                                          extra_headers={"x-tether-run-id": "alias"})
    assert [r.model for r in fake.log] == ["gpt-4o-mini", "gpt-4.1"]
    requested = data(await run_events(bus, "alias"), "requested")
    assert [(r.provider, r.model) for r in requested] == [("openai", "gpt-4o-mini"), ("backup", "gpt-4.1")]


async def test_agent_header_sub_agent_and_impersonation(fake: FakeProvider, bus: Bus,
                                                        gateway: GatewayServer) -> None:
    async with oai(gateway) as sdk:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT,  # type: ignore[arg-type]
                                          extra_headers={"x-tether-run-id": "sub", "x-tether-agent": "bot/researcher"})
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT,  # type: ignore[arg-type]
                                              extra_headers={"x-tether-agent": "other-bot"})
    assert caught.value.code == "agent_not_allowed"
    assert {e.agentid for e in await run_events(bus, "sub")} == {"bot/researcher"}
    assert len(fake.log) == 1


async def test_models_list_in_both_formats(gateway: GatewayServer) -> None:
    async with oai(gateway) as sdk, claude(gateway) as csdk:
        names = [m.id async for m in sdk.models.list()]
        claude_names = [m.id async for m in csdk.models.list()]
        one = await sdk.models.retrieve("gpt-4o")
    assert names == ["fast"], "the exact names of [gateway.models] in the OpenAI format"
    assert claude_names == [] and one.owned_by == "openai"


async def test_upstream_keys_replace_the_agents(fake: FakeProvider, gateway: GatewayServer) -> None:
    seen: list[dict[str, str]] = []
    pool = gateway.gateway.upstreams.pool
    original = pool.request

    async def spy(method: str, origin: Any, path: str, headers: list[tuple[str, str]], body: bytes,
                  timeout_s: float) -> Any:
        seen.append(dict(headers))
        return await original(method, origin, path, headers, body, timeout_s)

    pool.request = spy  # type: ignore[method-assign]
    async with oai(gateway) as sdk, claude(gateway) as csdk:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
        await csdk.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=CHAT)  # type: ignore[arg-type]
    chat, messages = seen
    assert chat["authorization"] == "Bearer sk-upstream-openai-0123456789abcdef"
    assert "x-api-key" not in chat and GATEWAY_KEY not in str(chat)
    assert messages["x-api-key"] == "sk-ant-upstream-0123456789" and "authorization" not in messages
    assert messages["anthropic-version"] == csdk.default_headers["anthropic-version"], "the agent's version is kept"
    assert "host" not in chat and "x-tether-run-id" not in chat
    assert chat["accept-encoding"] == "identity" and chat["idempotency-key"]
