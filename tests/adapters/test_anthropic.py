"""The real anthropic SDK (2.x, on httpx2) through ``tether.instrument``, against the fake provider."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import pytest

import tether
from tether.bus import Bus
from tether.middleware import PolicySet
from tether.testing.fake_provider import FakeProvider

from .conftest import data, fast_policies, kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.fixture
async def claude(fake: FakeProvider, bus: Bus, policies: PolicySet) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = tether.instrument(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="sk-ant-test-0123456789"),
                            bus=bus, policies=policies)
    assert sdk.max_retries == 0
    yield sdk
    await sdk.close()


async def test_message_after_a_rate_limit(fake: FakeProvider, bus: Bus, claude: anthropic.AsyncAnthropic) -> None:
    fake.set_faults("429(0.1s)#1")
    async with tether.run(agent="claude-bot", bus=bus) as run:
        message = await claude.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=ASK,  # type: ignore[arg-type]
                                               system="Be brief.")
    assert message.content[0].text  # type: ignore[union-attr]
    assert [r.retry_count for r in fake.log] == [0, 0]
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]
    requested, completed = data(events, "requested")[0], data(events, "completed")[0]
    assert (requested.provider, requested.operation, requested.model) == ("anthropic", "messages", "claude-haiku-4-5")
    assert requested.parameters == {"max_tokens": 64} and requested.request["system"] == "Be brief."
    assert completed.usage.input_tokens == message.usage.input_tokens
    assert completed.usage.output_tokens == message.usage.output_tokens
    assert completed.finish_reason == "end_turn"
    assert data(events, "attempt_failed")[0].retry_in_s == pytest.approx(0.1, abs=0.01)


async def test_stream_after_overload(fake: FakeProvider, bus: Bus, claude: anthropic.AsyncAnthropic) -> None:
    fake.set_faults("503#1,500#2")  # (529 "overloaded" is not in the default retry_statuses)
    async with (tether.run(bus=bus) as run,
                claude.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=ASK) as stream):  # type: ignore[arg-type]
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text and final.usage.output_tokens > 1
    assert [r.retry_count for r in fake.log] == [0, 0, 0]
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.attempt_failed",
                                   "llm.call.completed"]
    assert [f.error.status_code for f in data(events, "attempt_failed")] == [503, 500]
    completed = data(events, "completed")[0]
    assert completed.usage.input_tokens == final.usage.input_tokens, "from message_start"
    assert completed.usage.output_tokens == final.usage.output_tokens, "from message_delta"
    assert completed.ttft_ms is not None and completed.finish_reason == "end_turn"
    assert completed.response["content"][0]["text"] == text


async def test_tool_use_streamed(fake: FakeProvider, bus: Bus, claude: anthropic.AsyncAnthropic) -> None:
    async with (tether.run(bus=bus) as run,
                claude.messages.stream(model="claude-haiku-4-5", max_tokens=128, messages=ASK,  # type: ignore[arg-type]
                                       tools=TOOLS) as stream):  # type: ignore[arg-type]
        final = await stream.get_final_message()
    block = final.content[0]
    assert block.type == "tool_use"
    completed = data(await run_events(bus, run.run_id), "completed")[0]
    recorded = completed.response["content"][0]
    assert (recorded["type"], recorded["name"], recorded["input"]) == ("tool_use", "get_weather", block.input)
    assert completed.finish_reason == "tool_use"


def test_sync_anthropic_client(fake_in_thread: FakeProvider, background: object) -> None:
    fake_in_thread.set_faults("500#1")
    with tether.instrument(anthropic.Anthropic(base_url=fake_in_thread.anthropic_url, api_key="sk-ant-x0123456789"),
                           policies=fast_policies()) as sdk, tether.run(agent="sync-claude") as run:
        message = sdk.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=ASK)  # type: ignore[arg-type]
        with sdk.messages.stream(model="claude-haiku-4-5", max_tokens=32, messages=ASK) as stream:  # type: ignore[arg-type]
            final = stream.get_final_message()
    assert message.content and final.content
    assert [r.retry_count for r in fake_in_thread.log] == [0, 0, 0]
    events = background.events(run.run_id)  # type: ignore[attr-defined]
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                                   "llm.call.requested", "llm.call.completed"]


async def test_unknown_model_is_not_retried(bus: Bus, policies: PolicySet) -> None:
    async with FakeProvider(models=["claude-haiku-4-5"]) as only:
        sdk = tether.instrument(anthropic.AsyncAnthropic(base_url=only.anthropic_url, api_key="k"), bus=bus,
                                policies=policies)
        async with sdk, tether.run(bus=bus) as run:
            with pytest.raises(anthropic.NotFoundError) as info:
                await sdk.messages.create(model="claude-nope", max_tokens=8, messages=ASK)  # type: ignore[arg-type]
        assert len(only.log) == 1, "a 404 is not retried, by tether or by the SDK"
    assert info.value.response.headers["x-should-retry"] == "false"
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.failed",
                                   "call.dead_lettered"]
    assert data(events, "attempt_failed")[0].decision == "give_up"
    assert data(events, "llm.call.failed")[0].error.status_code == 404
