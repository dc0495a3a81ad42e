"""What goes wrong: cancellation, broken streams, huge and invalid requests, unknown models,
timeouts, fallbacks, breakers, budgets, durable mode, and frameworks' own HTTP clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import openai
import pytest

import tether
from tether.adapters import Hub
from tether.bus import WORK_STREAM, Bus, event_filter
from tether.middleware import (
    BreakerPolicy,
    BudgetLimits,
    Executor,
    FallbackPolicy,
    Policy,
    PolicySet,
    ProviderConfig,
    RetryPolicy,
    RunawayGuard,
    Target,
)
from tether.testing import collect
from tether.testing.fake_provider import FakeProvider

from .conftest import data, fast_policies, kinds, run_events, story

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

CHAT = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture
async def sdk(fake: FakeProvider, bus: Bus, policies: PolicySet) -> AsyncIterator[openai.AsyncOpenAI]:
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="sk-x"), bus=bus, policies=policies)
    yield client
    await client.close()


def busy_connections(client: openai.AsyncOpenAI) -> list[Any]:
    """Connections of the SDK's pool that are still in use (a leak if the call is over)."""
    pool = client._client._transport.wrapped._pool  # type: ignore[attr-defined]
    return [c for c in pool.connections if not (c.is_idle() or c.is_closed())]


# -- cancellation --------------------------------------------------------------------------------


async def test_consumer_stops_reading_mid_stream(bus: Bus, sdk: openai.AsyncOpenAI) -> None:
    async with tether.run(bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        async for _ in stream:
            break
        await stream.close()
    assert busy_connections(sdk) == []
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.failed"], "one clear final event, no DLQ"
    error = data(events, "llm.call.failed")[0].error
    assert (error.type, error.code) == ("Cancelled", "client_closed")
    assert "closed the stream" in error.message


async def test_task_cancelled_mid_stream(bus: Bus, sdk: openai.AsyncOpenAI) -> None:
    started = asyncio.Event()
    run_id = ""

    async def consume() -> None:
        nonlocal run_id
        async with tether.run(bus=bus) as run:
            run_id = run.run_id
            stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
            async with stream:
                async for _ in stream:
                    started.set()
                    await asyncio.sleep(30)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert busy_connections(sdk) == []
    events = await run_events(bus, run_id)
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.failed", "run.finished"]
    assert data(events, "llm.call.failed")[0].error.code == "client_closed"
    assert data(events, "run.finished")[0].status == "cancelled"


async def test_task_cancelled_while_tether_waits_to_retry(fake: FakeProvider, bus: Bus,
                                                          sdk: openai.AsyncOpenAI) -> None:
    fake.set_faults("429(5s)")
    run_id = ""

    async def call() -> None:
        nonlocal run_id
        async with tether.run(bus=bus) as run:
            run_id = run.run_id
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]

    task = asyncio.create_task(call())
    with anyio.fail_after(20):  # until the first attempt was answered with its 429 (tether then waits 5 s)
        while not run_id or "llm.call.attempt_failed" not in kinds(await run_events(bus, run_id)):  # noqa: ASYNC110 - in the log
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    events = await run_events(bus, run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.failed"]
    assert data(events, "llm.call.failed")[0].error.code == "client_cancelled"
    assert len(fake.log) == 1


# -- broken streams ----------------------------------------------------------------------------


async def test_stream_reset_before_the_first_byte_is_retried(fake: FakeProvider, bus: Bus,
                                                              sdk: openai.AsyncOpenAI) -> None:
    fake.set_faults("reset_mid_stream(0)#1,reset#2")
    async with tether.run(bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text
    assert [r.retry_count for r in fake.log] == [0, 0, 0]
    events = await run_events(bus, run.run_id)
    assert [f.error.type for f in data(events, "attempt_failed")] == ["APIConnectionError", "APIConnectionError"]
    assert kinds(events)[-2] == "llm.call.completed"


async def test_stream_reset_after_the_first_byte_is_not_retried(fake: FakeProvider, bus: Bus,
                                                                 sdk: openai.AsyncOpenAI) -> None:
    fake.set_faults("reset_mid_stream(3)#1")
    got = 0
    async with tether.run(bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        with pytest.raises((httpx2.HTTPError, openai.APIError)):
            async for _ in stream:
                got += 1
    assert got >= 1, "the caller had part of the answer: tether cannot take it back"
    assert len(fake.log) == 1
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.failed",
                                   "call.dead_lettered"]
    failed = data(events, "attempt_failed")[0]
    assert failed.decision == "give_up" and "after the first byte" in failed.error.message


async def test_malformed_answer_is_retried(fake: FakeProvider, bus: Bus, sdk: openai.AsyncOpenAI) -> None:
    fake.set_faults("malformed_json#1")
    async with tether.run(bus=bus) as run:
        answer = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    events = await run_events(bus, run.run_id)
    assert data(events, "attempt_failed")[0].error.type == "MalformedResponseError"


async def test_hung_attempt_times_out_and_is_retried(fake: FakeProvider, bus: Bus) -> None:
    policies = fast_policies(**{"openai:*": Policy(retry=RetryPolicy(base_delay_s=0.01), timeout_s=0.3,
                                                    breaker=BreakerPolicy(enabled=False))})
    fake.set_faults("hang#1")
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    async with client, tether.run(bus=bus) as run:
        answer = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    failed = data(await run_events(bus, run.run_id), "attempt_failed")[0]
    assert failed.error.type == "APITimeoutError" and failed.decision == "retry"


# -- requests tether cannot read -------------------------------------------------------------------


async def test_huge_request_body(fake: FakeProvider, bus: Bus, sdk: openai.AsyncOpenAI) -> None:
    essay = "lorem ipsum dolor sit amet " * 120_000  # ~3.2 MB
    async with tether.run(bus=bus) as run:
        answer = await sdk.chat.completions.create(model="gpt-4o-mini", max_tokens=5,  # type: ignore[arg-type]
                                                   messages=[{"role": "user", "content": essay}])
    assert answer.choices[0].message.content
    events = await run_events(bus, run.run_id)
    requested = next(e for e in events if e.type.endswith("requested"))
    assert requested.data.request["messages"][0]["content"] == essay  # type: ignore[attr-defined]
    assert requested.dataref and requested.dataref.startswith("nats-obj://"), "claim-checked to the object store"


async def test_invalid_json_gets_the_providers_400(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    async with tether.async_http_client(bus=bus, policies=policies) as http, tether.run(bus=bus) as run:
        response = await http.post(f"{fake.url}/chat/completions", content=b'{"model": "gpt-4o-mini", oops',
                                   headers={"content-type": "application/json", "authorization": "Bearer sk-x"})
    assert response.status_code == 400 and response.headers["x-should-retry"] == "false"
    assert "parse the JSON" in response.json()["error"]["message"]
    assert len(fake.log) == 1
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.failed",
                                   "call.dead_lettered"]
    requested = data(events, "requested")[0]
    assert requested.model == "unknown" and requested.request == '{"model": "gpt-4o-mini", oops'


async def test_unknown_openai_model_is_not_retried(bus: Bus, policies: PolicySet) -> None:
    async with FakeProvider(models=["gpt-4o-mini"]) as only:
        client = tether.instrument(openai.AsyncOpenAI(base_url=only.url, api_key="k"), bus=bus, policies=policies)
        async with client:
            with pytest.raises(openai.NotFoundError, match="does not exist"):
                await client.chat.completions.create(model="gpt-9", messages=CHAT)  # type: ignore[arg-type]
        assert len(only.log) == 1


# -- policy --------------------------------------------------------------------------------------


async def test_falls_back_to_another_model_of_the_same_provider(fake: FakeProvider, bus: Bus) -> None:
    policy = Policy(retry=RetryPolicy(max_attempts=2, base_delay_s=0.01), breaker=BreakerPolicy(enabled=False),
                    fallback=FallbackPolicy(targets=(Target("anthropic", "claude-haiku-4-5"),
                                                     Target("openai", "gpt-b")), max_fallbacks=2))
    fake.set_faults("503=gpt-a")
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus,
                               policies=fast_policies(**{"openai:gpt-a": policy}))
    async with client, tether.run(bus=bus) as run:
        answer = await client.chat.completions.create(model="gpt-a", messages=CHAT)  # type: ignore[arg-type]
    assert answer.model == "gpt-b"
    assert [r.model for r in fake.log] == ["gpt-a", "gpt-a", "gpt-b"], "never to another provider"
    events = await run_events(bus, run.run_id)
    assert [f.decision for f in data(events, "attempt_failed")] == ["retry", "fallback"]
    assert data(events, "attempt_failed")[1].next_model == "gpt-b"
    assert data(events, "completed")[0].model == "gpt-b"


async def test_open_breaker_answers_without_calling(fake: FakeProvider, bus: Bus) -> None:
    route = f"brk{id(fake)}"
    policy = Policy(retry=RetryPolicy(max_attempts=2, base_delay_s=0.01), deadline_s=0.5,
                    breaker=BreakerPolicy(failure_streak=2, cooldown_s=30))
    policies = fast_policies(**{f"{route}:*": policy})
    fake.set_faults("500")
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, provider=route,
                               policies=policies)
    async with client, tether.run(bus=bus) as run:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
        engine = Hub.of(bus).engine_nowait(policies)
        assert engine is not None
        with anyio.fail_after(20):  # the shared state arrives through the breaker's KV watch
            while engine.breakers.state(f"{route}:gpt-4o-mini").state != "open":  # noqa: ASYNC110 - a KV watch's
                await asyncio.sleep(0.01)
        before = len(fake.log)
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert len(fake.log) == before == 2, "an open breaker sends nothing"
    assert info.value.status_code in (503, 504) and info.value.response.headers["x-should-retry"] == "false"
    events = await run_events(bus, run.run_id)
    assert data(events, "attempt_failed")[-1].error.type == "CircuitOpenError"
    opened = [r.event for r in await collect(bus, event_filter(kind="circuit", key=f"{route}:gpt-4o-mini"))]
    assert [e.type for e in opened if e is not None][:1] == ["tether.circuit.opened"]


async def test_budget_refuses_before_sending(fake: FakeProvider, bus: Bus) -> None:
    policies = PolicySet(routes=fast_policies().routes, budgets={("run", "*"): BudgetLimits(tokens=5)},
                         runaway=RunawayGuard(max_calls_per_run=None, max_identical_calls=None))
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    async with client, tether.run(bus=bus) as run:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=100)  # type: ignore[arg-type]
    assert not fake.log
    assert info.value.code == "budget_exceeded" and info.value.response.headers["x-should-retry"] == "false"
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "budget.exceeded", "llm.call.failed", "call.dead_lettered"]


async def test_runaway_guard_stops_a_loop(fake: FakeProvider, bus: Bus) -> None:
    policies = PolicySet(routes=fast_policies().routes, runaway=RunawayGuard(max_identical_calls=2))
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    async with client, tether.run(bus=bus) as run:
        for _ in range(2):
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError, match="runaway"):
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert len(fake.log) == 2
    failed = data(await run_events(bus, run.run_id), "llm.call.failed")[0]
    assert failed.error.type == "RunawayGuard"
    # the one guard's message, as inline calls and workers word it
    assert failed.error.message == f"run {run.run_id} repeated the same call 3 times (runaway.max_identical_calls=2)"


# -- durable mode ----------------------------------------------------------------------------------


async def test_durable_mode_goes_through_a_worker(fake: FakeProvider, bus: Bus, policies: PolicySet,
                                                  tmp_path: Path) -> None:
    await bus.js.purge_stream(WORK_STREAM)
    fake.set_faults("429(0.05s)#1")
    providers = {"openai": ProviderConfig("openai", "openai", fake.url)}
    async with Executor(bus, policies=policies, providers=providers, concurrency=4, seed=1):
        client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="sk-caller"), bus=bus,
                                   policies=policies, mode="durable")
        async with client, tether.run(agent="durable-bot", bus=bus) as run:
            answer = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            events = await story(bus, run.run_id, "llm.call.completed", count=2)  # the stream's by the worker
    assert answer.choices[0].message.content and streamed  # streams too: tests/adapters/test_durable_streams.py
    assert kinds(events)[1:] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                                 "llm.call.requested", "llm.call.completed"]
    assert [r.mode for r in data(events, "requested")] == ["durable", "durable"]
    assert [r.stream for r in data(events, "requested")] == [False, True]
    assert len(fake.log) == 3 and all(r.retry_count is None for r in fake.log), "the worker sent them"


# -- frameworks' own clients ----------------------------------------------------------------------


async def test_ready_made_httpx_client_for_a_framework(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    """openai 3.x accepts a plain httpx client: tether's, whose final answers stop the SDK's retries."""
    fake.set_faults("503")
    http = tether.async_http_client(bus=bus, policies=policies)
    assert isinstance(http, httpx.AsyncClient)
    client = openai.AsyncOpenAI(base_url=fake.url, api_key="k", http_client=http)  # max_retries left at 2
    async with client, tether.run(bus=bus) as run:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert len(fake.log) == 3, "tether's 3 attempts; the SDK added none"
    assert [r.retry_count for r in fake.log] == [0, 0, 0]
    assert len(data(await run_events(bus, run.run_id), "attempt_failed")) == 3


async def test_instrument_a_client_built_on_httpx(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    fake.set_faults("500#1")
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k", http_client=httpx.AsyncClient()),
                               bus=bus, policies=policies)
    assert type(client._client._transport).__module__ == "tether.adapters._httpx"
    async with client, tether.run(bus=bus) as run:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert kinds(await run_events(bus, run.run_id))[1:-1] == [
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]


def test_ready_made_sync_httpx2_client(fake_in_thread: FakeProvider, background: Any) -> None:
    with tether.http_client(package="httpx2", policies=fast_policies()) as http:
        assert isinstance(http, httpx2.Client)
        with openai.OpenAI(base_url=fake_in_thread.url, api_key="k", http_client=http) as client, \
                tether.run() as run:
            fake_in_thread.set_faults("500#1")
            assert client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert [r.retry_count for r in fake_in_thread.log] == [0, 0]
    assert len(data(background.events(run.run_id), "attempt_failed")) == 1

