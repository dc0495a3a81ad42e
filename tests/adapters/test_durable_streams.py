"""Durable streaming: ``mode="durable"`` with ``stream=True``, real SDK clients, a real executor.

The caller submits the call to WORK and listens on its relay subject; the worker streams
from the fake provider and relays the chunks as they come. Each test checks what the
caller sees, what the provider received (all from the worker, never retried by the SDK),
and what the log says.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anthropic
import anyio
import openai
import pytest

import tether
from tether.adapters import Hub
from tether.bus import WORK_STREAM, Bus, connect
from tether.middleware import Executor, PolicySet, ProviderConfig, deadletter
from tether.middleware._relay import RelayListener
from tether.middleware._work import CALLS_BUCKET, CallRecord
from tether.schemas import Event
from tether.testing import NatsServer
from tether.testing.fake_provider import FakeProvider

from .conftest import Background, data, kinds, story

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

CHAT = [{"role": "user", "content": "Tell me a story"}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def providers(fake: FakeProvider) -> dict[str, ProviderConfig]:
    return {"openai": ProviderConfig("openai", "openai", fake.url),
            "anthropic": ProviderConfig("anthropic", "anthropic", fake.url)}


@pytest.fixture
async def worker(fake: FakeProvider, bus: Bus, policies: PolicySet) -> AsyncIterator[Executor]:
    await bus.js.purge_stream(WORK_STREAM)
    async with Executor(bus, policies=policies, providers=providers(fake), concurrency=8, seed=1) as executor:
        yield executor


Make = Callable[..., Any]


@pytest.fixture
async def durable(bus: Bus, policies: PolicySet, worker: Executor) -> AsyncIterator[Make]:
    """``durable(client, **options)``: the client instrumented in durable mode, closed after the test."""
    made: list[Any] = []

    def make(client: Any, **options: Any) -> Any:
        made.append(tether.instrument(client, bus=bus, policies=policies, mode="durable", **options))
        return client

    yield make
    for client in made:
        closing = client.close()
        if asyncio.iscoroutine(closing):
            await closing


def calls(events: list[Event]) -> list[str]:
    """The call's events, without the run's (``run.finished`` may come before the worker's last)."""
    return [k for k in kinds(events) if not k.startswith("run.")]


def from_the_worker(fake: FakeProvider, attempts: int) -> None:
    """Every request came from the worker, streaming; the SDK sent none and retried none."""
    assert len(fake.log) == attempts
    assert all(r.retry_count is None and r.stream for r in fake.log), [(r.retry_count, r.stream) for r in fake.log]


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- the answer, relayed ------------------------------------------------------------------------


async def test_openai_chat_stream_after_a_rate_limit_and_a_server_error(
        fake: FakeProvider, bus: Bus, durable: Make) -> None:
    fake.set_faults("429(0.05s)#1,500#2")
    sdk = durable(openai.AsyncOpenAI(base_url=fake.url, api_key="sk-caller"))
    async with tether.run(agent="streamer", bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        call_id = stream.response.headers["x-tether-call-id"]
        pieces = [chunk async for chunk in stream]
    text = text_of(pieces)
    assert text.startswith("This is fake reply"), "the whole answer, after two attempts the caller never saw"
    assert all(c.choices for c in pieces), "tether asked for usage; the usage-only chunk is not the caller's"
    from_the_worker(fake, 3)
    assert {r.idempotency_key for r in fake.log} == {call_id}
    events = await story(bus, run.run_id, "llm.call.completed")
    assert calls(events) == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.attempt_failed",
                             "llm.call.completed"]
    requested, completed = data(events, "requested")[0], data(events, "completed")[0]
    assert (requested.mode, requested.stream) == ("durable", True)
    assert "stream_options" not in requested.request, "the record is the caller's request"
    failed = data(events, "attempt_failed")
    assert [(f.error.status_code, f.decision) for f in failed] == [(429, "retry"), (500, "retry")]
    assert failed[0].retry_in_s == pytest.approx(0.05, abs=0.01), "Retry-After was honoured"
    assert completed.attempt == 3 and completed.finish_reason == "stop"
    assert completed.usage.input_tokens > 0 and completed.usage.output_tokens > 0
    assert completed.ttft_ms is not None and 0 < completed.ttft_ms <= completed.latency_ms
    assert completed.response["choices"][0]["message"]["content"] == text, "the streamed answer, rebuilt"
    assert {e.agentid for e in events} == {"streamer"}


async def test_openai_stream_keeps_the_callers_usage_chunk(fake: FakeProvider, bus: Bus, durable: Make) -> None:
    sdk = durable(openai.AsyncOpenAI(base_url=fake.url, api_key="k"))
    async with tether.run(bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True,  # type: ignore[arg-type]
                                                   stream_options={"include_usage": True})
        pieces = [chunk async for chunk in stream]
    assert pieces[-1].usage is not None and not pieces[-1].choices
    completed = data(await story(bus, run.run_id, "llm.call.completed"), "completed")[0]
    assert completed.usage.output_tokens == pieces[-1].usage.completion_tokens


async def test_a_secret_split_across_a_relayed_streams_events_is_not_recorded(fake: FakeProvider, bus: Bus,
                                                                             durable: Make) -> None:
    """The worker's record of a stream: the answer redacted, and its events (the fake's answer repeats the
    prompt a word an event, "Bearer" then the token) not kept, since joined they spell the token again."""
    token = "ab12cd34ef56gh78ij90kl12"
    sdk = durable(openai.AsyncOpenAI(base_url=fake.url, api_key="k"))
    async with tether.run(bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", stream=True,  # type: ignore[arg-type]
                                                   messages=[{"role": "user", "content": f"Bearer {token}"}])
        said = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert f"Bearer {token}" in said, "the caller's stream is whole"
    events = await story(bus, run.run_id, "llm.call.completed")
    completed = data(events, "completed")[0]
    assert completed.chunks is None and "[redacted]" in completed.response["choices"][0]["message"]["content"]
    assert token not in str([e.data for e in events])


async def test_openai_responses_stream(fake: FakeProvider, bus: Bus, durable: Make) -> None:
    fake.set_faults("503#1")
    sdk = durable(openai.AsyncOpenAI(base_url=fake.url, api_key="k"))
    async with tether.run(bus=bus) as run:
        stream = await sdk.responses.create(model="gpt-4o-mini", input="Say hello", stream=True)
        streamed = [event async for event in stream]
    assert streamed[-1].type == "response.completed"
    from_the_worker(fake, 2)
    events = await story(bus, run.run_id, "llm.call.completed")
    assert calls(events) == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]
    completed = data(events, "completed")[0]
    assert data(events, "requested")[0].operation == "responses"
    assert completed.finish_reason == "completed" and completed.ttft_ms is not None
    assert completed.usage.input_tokens == streamed[-1].response.usage.input_tokens  # type: ignore[union-attr]
    assert completed.response["output"][0]["content"][0]["text"] == streamed[-1].response.output_text  # type: ignore[union-attr]


async def test_anthropic_messages_stream(fake: FakeProvider, bus: Bus, durable: Make) -> None:
    fake.set_faults("503#1,500#2")
    claude = durable(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="sk-ant-caller-0123456789"))
    async with (tether.run(bus=bus) as run,
                claude.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=ASK) as stream):  # type: ignore[arg-type]
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text and final.usage.output_tokens > 1
    from_the_worker(fake, 3)
    events = await story(bus, run.run_id, "llm.call.completed")
    assert calls(events) == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.attempt_failed",
                             "llm.call.completed"]
    completed = data(events, "completed")[0]
    assert completed.usage.input_tokens == final.usage.input_tokens, "from message_start"
    assert completed.usage.output_tokens == final.usage.output_tokens, "from message_delta"
    assert completed.finish_reason == "end_turn" and completed.ttft_ms is not None
    assert completed.response["content"][0]["text"] == text


async def test_sync_clients_from_a_thread(fake: FakeProvider, bus: Bus, durable: Make) -> None:
    fake.set_faults("500#1")
    sdk = durable(openai.OpenAI(base_url=fake.url, api_key="k"))
    claude = durable(anthropic.Anthropic(base_url=fake.anthropic_url, api_key="sk-ant-x0123456789"))

    def work() -> tuple[str, str, str]:
        with tether.run(agent="threaded", bus=bus) as run:
            with sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True) as stream:  # type: ignore[arg-type]
                text = text_of(list(stream))
            with claude.messages.stream(model="claude-haiku-4-5", max_tokens=32, messages=ASK) as messages:  # type: ignore[arg-type]
                said = "".join(messages.text_stream)
        return run.run_id, text, said

    run_id, text, said = await asyncio.to_thread(work)
    assert text and said
    from_the_worker(fake, 3)
    events = await story(bus, run_id, "llm.call.completed", count=2)
    completed = data(events, "llm.call.completed")
    assert [c.provider for c in completed] == ["openai", "anthropic"]
    assert completed[0].response["choices"][0]["message"]["content"] == text
    assert completed[1].response["content"][0]["text"] == said


async def test_sync_client_with_the_background_bus(fake: FakeProvider, worker: Executor, policies: PolicySet,
                                                  background: Background) -> None:
    """The default set-up of a sync client (no bus given): the relay is read on tether's own thread."""
    fake.set_faults("429(0.05s)#1")
    sdk = tether.instrument(openai.OpenAI(base_url=fake.url, api_key="k"), policies=policies, mode="durable")

    def work() -> tuple[str, str]:
        with sdk, tether.run(agent="sync-bg") as run, \
                sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True) as stream:  # type: ignore[arg-type]
            return run.run_id, text_of(list(stream))

    run_id, text = await asyncio.to_thread(work)
    assert text
    from_the_worker(fake, 2)
    for _ in range(600):  # the worker records the end right after the caller read it
        events = await asyncio.to_thread(background.events, run_id)
        if data(events, "llm.call.completed"):
            break
        await asyncio.sleep(0.1)
    assert calls(events) == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]


# -- failures before the first chunk: attempts like any other ------------------------------------


async def test_a_connection_reset_before_the_first_byte_is_retried(fake: FakeProvider, bus: Bus,
                                                                    durable: Make) -> None:
    fake.set_faults("reset_mid_stream(0)#1,reset#2")
    sdk = durable(openai.AsyncOpenAI(base_url=fake.url, api_key="k"))
    async with tether.run(bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        text = text_of([chunk async for chunk in stream])
    assert text
    from_the_worker(fake, 3)
    events = await story(bus, run.run_id, "llm.call.completed")
    assert [f.error.type for f in data(events, "attempt_failed")] == ["APIConnectionError", "APIConnectionError"]


@pytest.mark.parametrize(("faults", "error", "attempts"), [
    ("400", openai.BadRequestError, 1),
    ("503", openai.InternalServerError, 3),
])
async def test_giving_up_before_the_first_byte_is_an_ordinary_error(
        fake: FakeProvider, bus: Bus, durable: Make, faults: str, error: type[Exception], attempts: int) -> None:
    fake.set_faults(faults)
    sdk = durable(openai.AsyncOpenAI(base_url=fake.url, api_key="k"))
    async with tether.run(bus=bus) as run:
        with pytest.raises(error) as info:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
    response = info.value.response  # type: ignore[attr-defined]
    assert response.headers["x-should-retry"] == "false" and response.headers["x-tether-call-id"]
    assert "tether gave up" in str(info.value)
    from_the_worker(fake, attempts)
    events = await story(bus, run.run_id, "call.dead_lettered")
    assert calls(events) == ["llm.call.requested", *["llm.call.attempt_failed"] * attempts, "llm.call.failed",
                             "call.dead_lettered"]


# -- failures after the first chunk: never retried -----------------------------------------------


async def test_openai_stream_broken_after_the_first_byte_is_not_retried(fake: FakeProvider, bus: Bus,
                                                                         durable: Make) -> None:
    fake.set_faults("reset_mid_stream(3)#1")
    sdk = durable(openai.AsyncOpenAI(base_url=fake.url, api_key="k"))
    got = 0
    async with tether.run(bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        call_id = stream.response.headers["x-tether-call-id"]
        with pytest.raises(openai.APIError, match="after the first byte reached the caller: not retried"):
            async for _ in stream:
                got += 1
    assert got >= 1, "the caller had part of the answer: tether cannot take it back"
    from_the_worker(fake, 1)
    events = await story(bus, run.run_id, "call.dead_lettered")
    assert calls(events) == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.failed",
                             "call.dead_lettered"]
    failed = data(events, "attempt_failed")[0]
    assert failed.decision == "give_up" and failed.error.type == "APIConnectionError"
    assert "after the first byte" in failed.error.message
    assert data(events, "dead_lettered")[0].reason == "not_retryable"
    # Redriven, it runs without a relay (its caller is gone): the answer goes to the log.
    [letter] = await deadletter.list_dead_letters(bus, {"call_id": call_id})
    assert letter.doc["item"]["relay"] is not None
    new_id = await deadletter.redrive(bus, letter)
    calls_api = await Hub.of(bus).durable()
    result = await calls_api.attach(new_id, timeout=30)
    assert result.response["choices"][0]["message"]["content"]
    assert [r.stream for r in fake.log] == [True, False]


async def test_anthropic_stream_broken_after_the_first_byte_is_not_retried(fake: FakeProvider, bus: Bus,
                                                                            durable: Make) -> None:
    fake.set_faults("reset_mid_stream(4)#1")
    claude = durable(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="sk-ant-x0123456789"))
    async with tether.run(bus=bus) as run:
        with pytest.raises(anthropic.APIError, match="not retried"):
            async with claude.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=ASK) as stream:  # type: ignore[arg-type]
                async for _ in stream:
                    pass
    from_the_worker(fake, 1)
    events = await story(bus, run.run_id, "call.dead_lettered")
    assert calls(events)[-2:] == ["llm.call.failed", "call.dead_lettered"]


# -- the caller stops ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "cancel task"])
async def test_the_caller_stopping_mid_stream_stops_the_worker(fake: FakeProvider, bus: Bus, durable: Make,
                                                               worker: Executor, how: str) -> None:
    fake.set_faults("stall_mid_stream(2,60s)#1")  # the provider would go on for a minute
    sdk = durable(openai.AsyncOpenAI(base_url=fake.url, api_key="k"))
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
                    if how == "close":
                        break
                    await asyncio.sleep(60)

    task = asyncio.create_task(consume())
    with anyio.fail_after(30):
        await started.wait()
    if how == "cancel task":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        await task
    events = await story(bus, run_id, "llm.call.failed")
    assert calls(events) == ["llm.call.requested", "llm.call.failed"], "one clear final event, no dead letter"
    error = data(events, "llm.call.failed")[0].error
    assert (error.type, error.code) == ("Cancelled", "client_closed")
    assert "bytes" in error.message and "before it ended" in error.message
    from_the_worker(fake, 1)
    # the worker let go of the provider and of the message: the next stream is served at once
    async with tether.run(bus=bus) as again:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        assert text_of([chunk async for chunk in stream])
    await story(bus, again.run_id, "llm.call.completed")


async def test_the_caller_cancelled_before_the_first_chunk(fake: FakeProvider, bus: Bus, durable: Make) -> None:
    fake.set_faults("slow_first_byte(60s)#1")
    sdk = durable(openai.AsyncOpenAI(base_url=fake.url, api_key="k"))
    run_id = ""

    async def call() -> None:
        nonlocal run_id
        async with tether.run(bus=bus) as run:
            run_id = run.run_id
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]

    task = asyncio.create_task(call())
    for _ in range(3000):  # until the worker waits for the provider's first byte
        if fake.log:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    events = await story(bus, run_id, "llm.call.failed")
    assert calls(events) == ["llm.call.requested", "llm.call.failed"]
    error = data(events, "llm.call.failed")[0].error
    assert (error.type, error.code) == ("Cancelled", "client_cancelled")
    assert "before the stream started" in error.message


async def test_a_caller_that_vanished_is_noticed_by_the_worker(fake: FakeProvider, bus: Bus, durable: Make,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """No cancel message at all (the caller's process died, say): its unanswered heartbeat tells."""

    async def vanish(self: RelayListener, code: str, message: str) -> None:
        await self.close()  # stops listening without a word

    monkeypatch.setattr(RelayListener, "cancel", vanish)
    fake.set_faults("stall_mid_stream(2,60s)#1")
    sdk = durable(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), stream_idle_timeout_s=1.0)
    async with tether.run(bus=bus) as run:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        await stream.__anext__()
        await stream.close()
    events = await story(bus, run.run_id, "llm.call.failed")
    error = data(events, "llm.call.failed")[0].error
    assert (error.type, error.code) == ("Cancelled", "client_gone") and "stopped listening" in error.message
    assert calls(events) == ["llm.call.requested", "llm.call.failed"]


# -- the worker dies mid-stream -------------------------------------------------------------------


def worker_config(path: Path, fake: FakeProvider) -> Path:
    path.write_text("\n".join([
        "[providers.openai]", 'kind = "openai"', f'base_url = "{fake.url}"', "",
        '[routes."*"]', "timeout_s = 120.0", "",
        '[routes."*".retry]', "max_attempts = 3", "base_delay_s = 0.01", "max_delay_s = 0.05", "",
        '[routes."*".breaker]', "enabled = false", "",
    ]), encoding="utf-8")
    return path


@pytest.mark.slow
async def test_a_worker_killed_mid_stream_is_a_clear_error_and_a_dead_letter(
        fresh_nats_server: NatsServer, tmp_path: Path, policies: PolicySet) -> None:
    from tests.middleware.test_chaos import workers

    with anyio.fail_after(150):
        async with AsyncExitStack() as stack:
            fake = await stack.enter_async_context(FakeProvider(seed=3, faults="stall_mid_stream(2,90s)#1"))
            bus = await stack.enter_async_context(await connect(fresh_nats_server.url, home=tmp_path / "home"))
            [doomed] = await stack.enter_async_context(
                workers(fresh_nats_server.url, worker_config(tmp_path / "tether.toml", fake), tmp_path, 1,
                        concurrency=4, ack_wait=3.0))
            sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus,
                                    policies=policies, mode="durable", stream_idle_timeout_s=2.0)
            calls_kv = await bus.js.key_value(CALLS_BUCKET)
            got = 0
            async with sdk, tether.run(bus=bus) as run:
                stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
                call_id = stream.response.headers["x-tether-call-id"]
                with pytest.raises(openai.APIError, match="no word from the worker") as info:
                    async for _ in stream:
                        got += 1
                        if got == 1:
                            while True:  # once its record says bytes reached the caller...
                                entry = await calls_kv.get(call_id)
                                rec = CallRecord.from_json(entry.value or b"{}")
                                if rec.in_flight and rec.in_flight.get("relayed"):
                                    break
                                await asyncio.sleep(0.01)
                            doomed.proc.send_signal(signal.SIGKILL)  # ...the worker dies, by its PID
            assert got >= 1 and "the worker is gone" in str(info.value)
            await doomed.proc.wait()
            # Another worker takes the message over after ack_wait, and records what happened.
            stack.push_async_callback(Hub.of(bus).aclose)
            await stack.enter_async_context(Executor(bus, policies=policies, providers=providers(fake),
                                                     ack_wait_s=3.0))
            events = await story(bus, run.run_id, "call.dead_lettered", timeout=90)
    assert calls(events) == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.failed",
                             "call.dead_lettered"]
    lost = data(events, "attempt_failed")[0]
    assert (lost.error.type, lost.decision) == ("WorkerLost", "give_up")
    assert "relayed stream" in lost.error.message and "not retried" in lost.error.message
    assert data(events, "dead_lettered")[0].reason == "not_retryable"
    assert len(fake.log) == 1, "never sent again: the caller had part of the answer"
    assert data(events, "llm.call.failed")[0].error.type == "WorkerLost"
