"""The real openai SDK (3.x, on httpx2) through ``tether.instrument``, against the fake provider.

Each test checks three things: the caller sees the answer; the SDK made no retries of its
own (the fake's log: ``x-stainless-retry-count`` always 0, as many requests as tether's
attempts); the events tell the whole story.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import openai
import pytest

import tether
from tether.bus import Bus
from tether.middleware import PolicySet
from tether.testing.fake_provider import FakeProvider

from .conftest import Background, data, fast_policies, kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


Client = Callable[..., openai.AsyncOpenAI]


@pytest.fixture
async def client(fake: FakeProvider, bus: Bus, policies: PolicySet) -> AsyncIterator[Client]:
    """``client(**options)``: an instrumented AsyncOpenAI, closed after the test."""
    made: list[openai.AsyncOpenAI] = []

    def make(**options: object) -> openai.AsyncOpenAI:
        sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="sk-test-key"), bus=bus,
                                policies=options.pop("policies", policies), **options)  # type: ignore[arg-type]
        made.append(sdk)
        return sdk

    yield make
    for sdk in made:
        await sdk.close()


def no_sdk_retries(fake: FakeProvider, attempts: int) -> None:
    llm = [r for r in fake.log if r.api != "models"]
    assert [r.retry_count for r in llm] == [0] * attempts, "the SDK retried on its own"


async def test_instrument_sets_max_retries_to_zero(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    sdk = openai.AsyncOpenAI(base_url=fake.url, api_key="x")
    assert sdk.max_retries == 2
    assert tether.instrument(sdk, bus=bus, policies=policies) is sdk
    assert sdk.max_retries == 0
    assert sdk.with_options(timeout=5).max_retries == 0
    await sdk.close()


async def test_chat_after_a_rate_limit(fake: FakeProvider, bus: Bus, client: Client) -> None:
    fake.set_faults("429(0.1s)#1")
    sdk = client()
    async with tether.run(agent="bot", bus=bus) as run:
        answer = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=20)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    no_sdk_retries(fake, 2)
    events = await run_events(bus, run.run_id)
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                             "run.finished"]
    failed = data(events, "attempt_failed")[0]
    assert (failed.decision, failed.error.status_code) == ("retry", 429)
    assert failed.retry_in_s == pytest.approx(0.1, abs=0.01), "Retry-After was honoured"
    requested, completed = data(events, "requested")[0], data(events, "completed")[0]
    assert (requested.provider, requested.model, requested.mode, requested.stream) == (
        "openai", "gpt-4o-mini", "inline", False)
    assert requested.parameters == {"max_tokens": 20}
    assert requested.request["messages"] == CHAT
    assert completed.attempt == 2 and completed.usage.input_tokens == answer.usage.prompt_tokens  # type: ignore[union-attr]
    assert completed.usage.output_tokens == answer.usage.completion_tokens  # type: ignore[union-attr]
    assert completed.response["choices"][0]["message"]["content"] == answer.choices[0].message.content
    assert completed.latency_ms > 0
    assert {e.agentid for e in events} == {"bot"} and {e.runid for e in events} == {run.run_id}


async def test_stream_after_server_errors(fake: FakeProvider, bus: Bus, client: Client) -> None:
    fake.set_faults("500#1-2")
    sdk = client()
    async with tether.run(agent="bot", bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        pieces = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert text.startswith("This is fake reply")
    assert all(c.choices for c in pieces), "tether asked for usage; the usage-only chunk is not the caller's"
    no_sdk_retries(fake, 3)
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.attempt_failed",
                                   "llm.call.completed"]
    assert [f.error.status_code for f in data(events, "attempt_failed")] == [500, 500]
    requested, completed = data(events, "requested")[0], data(events, "completed")[0]
    assert requested.stream is True
    assert "stream_options" not in requested.request, "the record is the caller's request"
    assert completed.usage.output_tokens > 0 and completed.usage.input_tokens > 0
    assert completed.ttft_ms is not None and 0 < completed.ttft_ms <= completed.latency_ms
    assert completed.finish_reason == "stop"
    assert completed.response["choices"][0]["message"]["content"] == text, "the streamed answer, rebuilt"


async def test_stream_keeps_the_callers_usage_chunk(fake: FakeProvider, bus: Bus, client: Client) -> None:
    sdk = client()
    async with tether.run(bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True,  # type: ignore[arg-type]
                                                   stream_options={"include_usage": True})
        pieces = [chunk async for chunk in stream]
    assert pieces[-1].usage is not None and not pieces[-1].choices
    completed = data(await run_events(bus, run.run_id), "completed")[0]
    assert completed.usage.output_tokens == pieces[-1].usage.completion_tokens


async def test_tool_call_round_trip(fake: FakeProvider, bus: Bus, client: Client) -> None:
    sdk = client()

    @tether.tool(bus=bus)
    def get_weather(city: str) -> dict[str, str]:
        return {"city": city, "weather": "sunny"}

    async with tether.run(agent="bot", bus=bus) as run:
        first = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, tools=TOOLS)  # type: ignore[arg-type]
        call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        result = get_weather(**json.loads(call.function.arguments))  # type: ignore[union-attr]
        messages = [*CHAT, first.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]
        final = await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert final.choices[0].message.content
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.completed", "tool.call.requested",
                                   "tool.call.completed", "llm.call.requested", "llm.call.completed"]
    assert data(events, "llm.call.completed")[0].finish_reason == "tool_calls"
    assert data(events, "tool.call.requested")[0].arguments == json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert data(events, "tool.call.completed")[0].result == result
    requested = data(events, "llm.call.requested")
    assert "tools" not in requested[0].parameters and requested[0].request["tools"] == TOOLS
    assert requested[1].request["messages"][-1]["role"] == "tool"


async def test_streamed_tool_call_is_rebuilt(fake: FakeProvider, bus: Bus, client: Client) -> None:
    sdk = client()
    async with tether.run(bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, tools=TOOLS, stream=True)  # type: ignore[arg-type]
        arguments = "".join([c.choices[0].delta.tool_calls[0].function.arguments or ""  # type: ignore[index, union-attr]
                             async for c in stream if c.choices and c.choices[0].delta.tool_calls])
    completed = data(await run_events(bus, run.run_id), "completed")[0]
    message = completed.response["choices"][0]["message"]
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": arguments}
    assert completed.finish_reason == "tool_calls"


async def test_responses_api_streamed_and_not(fake: FakeProvider, bus: Bus, client: Client) -> None:
    fake.set_faults("503#1")
    sdk = client()
    async with tether.run(bus=bus) as run:
        whole = await sdk.responses.create(model="gpt-4o-mini", input="Say hello")
        stream = await sdk.responses.create(model="gpt-4o-mini", input="Say hello", stream=True)
        streamed = [event async for event in stream]
    assert whole.output_text
    assert streamed[-1].type == "response.completed"
    no_sdk_retries(fake, 3)
    events = await run_events(bus, run.run_id)
    completed = data(events, "llm.call.completed")
    assert [c.usage.input_tokens > 0 and c.usage.output_tokens > 0 for c in completed] == [True, True]
    assert completed[1].ttft_ms is not None and completed[1].finish_reason == "completed"
    assert completed[1].response["output"][0]["content"][0]["text"] == whole.output_text or \
        completed[1].response["output"]
    assert [r.operation for r in data(events, "requested")] == ["responses", "responses"]


async def test_embeddings(fake: FakeProvider, bus: Bus, client: Client) -> None:
    sdk = client(capture=False)
    async with tether.run(bus=bus) as run:
        vectors = await sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(vectors.data) == 2
    events = await run_events(bus, run.run_id)
    requested, completed = data(events, "requested")[0], data(events, "completed")[0]
    assert requested.operation == "embeddings" and requested.request is None, "capture=False records no body"
    assert completed.response is None and completed.usage.input_tokens == vectors.usage.prompt_tokens


async def test_other_requests_pass_through(fake: FakeProvider, bus: Bus, client: Client) -> None:
    sdk = client()
    models = await sdk.models.list()
    assert [m.id async for m in models]


async def test_gives_up_with_x_should_retry_false(fake: FakeProvider, bus: Bus, client: Client) -> None:
    fake.set_faults("503")
    sdk = client()
    # Even a client that would retry honours tether's verdict.
    sdk.max_retries = 3
    async with tether.run(bus=bus) as run:
        with pytest.raises(openai.InternalServerError) as info:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.response.headers["x-tether-call-id"]
    no_sdk_retries(fake, 3)
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", *["llm.call.attempt_failed"] * 3, "llm.call.failed",
                                   "call.dead_lettered"]
    assert [f.decision for f in data(events, "attempt_failed")] == ["retry", "retry", "give_up"]


def test_sync_client_with_the_background_bus(fake_in_thread: FakeProvider, background: Background) -> None:
    """The default set-up: a sync client, no bus given; events through tether's own thread."""
    fake_in_thread.set_faults("429(0.05s)#1")
    sdk = tether.instrument(openai.OpenAI(base_url=fake_in_thread.url, api_key="sk-x"),
                            policies=fast_policies())
    with sdk, tether.run(agent="sync-bot") as run:
        answer = sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
        with sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True) as stream:  # type: ignore[arg-type]
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert answer.choices[0].message.content and text
    assert [r.retry_count for r in fake_in_thread.log] == [0, 0, 0]
    events = background.events(run.run_id)
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                             "llm.call.requested", "llm.call.completed", "run.finished"]
    assert data(events, "completed")[1].ttft_ms is not None
    assert data(events, "finished")[0].status == "ok"


async def test_sync_client_on_an_explicit_bus_from_a_thread(fake: FakeProvider, bus: Bus,
                                                            policies: PolicySet) -> None:
    fake.set_faults("500#1,reset_mid_stream(0)#3")
    sdk = tether.instrument(openai.OpenAI(base_url=fake.url, api_key="sk-x"), bus=bus, policies=policies)

    def work() -> tuple[str, str]:
        with tether.run(agent="threaded", bus=bus) as run:
            answer = sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
            stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert answer.choices[0].message.content == text
        return run.run_id, text

    with sdk:
        run_id, text = await asyncio.to_thread(work)
    assert text
    no_sdk_retries(fake, 4)
    events = await run_events(bus, run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                                   "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]
    assert data(events, "attempt_failed")[1].error.type == "MalformedResponseError" or \
        data(events, "attempt_failed")[1].error.type == "APIConnectionError"


async def test_sync_client_on_the_loop_thread_is_a_clear_error(fake: FakeProvider, bus: Bus,
                                                               policies: PolicySet) -> None:
    sdk = tether.instrument(openai.OpenAI(base_url=fake.url, api_key="sk-x"), bus=bus, policies=policies)
    with sdk, pytest.raises(tether.adapters.LoopThreadError, match="async client"):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]


async def test_async_client_with_the_background_bus(fake: FakeProvider, background: Background) -> None:
    """No bus anywhere: an async client on the test's loop publishes through tether's own thread."""
    fake.set_faults("500#1")
    async with tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"),
                                 policies=fast_policies()) as sdk, tether.run(agent="async-bg") as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert kinds(background.events(run.run_id)) == [
        "run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed", "run.finished"]


async def test_an_instrumented_call_is_redacted_once_by_the_clients_rules(
        fake: FakeProvider, bus: Bus, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter redacts with the client's Redactor; the engine must not redact its events again
    (twice the work on every call, and the defaults back where the client replaced them)."""
    import tether.middleware._engine as engine

    again: list[object] = []
    monkeypatch.setattr(engine, "redacted", lambda payload: again.append(payload) or payload)
    fake.set_faults("500#1")  # an attempt_failed event too
    sdk = client(redact=tether.adapters.Redactor(replace_defaults=True, fields={"ssn"}))
    async with tether.run(bus=bus) as run:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        async for _ in stream:
            pass
    events = await run_events(bus, run.run_id)
    assert kinds(events).count("llm.call.completed") == 2 and "llm.call.attempt_failed" in kinds(events)
    assert again == [], f"the engine redacted {len(again)} adapter event(s) a second time"
