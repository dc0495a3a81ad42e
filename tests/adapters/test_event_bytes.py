"""A real run's messages, as the publisher hands them to NATS, are byte for byte what tether wrote before
its one-pass encoder (``tests/bus/_old_wire.py``, frozen): every event type the call loop emits, taken
from the real openai SDK against the fake provider, on the session's nats-server."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

import tether
from tether.bus import Bus
from tether.bus._headers import HeaderBlock
from tether.bus._natspriv import HookedClient
from tether.bus._publisher import Publisher
from tether.middleware import PolicySet
from tether.schemas import Event
from tether.testing.fake_provider import FakeProvider

from ..bus._old_wire import old_block, old_message
from .conftest import kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


async def test_a_real_runs_messages_are_the_bytes_tether_wrote_before(
        fake: FakeProvider, bus: Bus, policies: PolicySet, monkeypatch: pytest.MonkeyPatch) -> None:
    events: dict[str, Event] = {}
    sent: dict[str, tuple[str, bytes, bytes]] = {}  # Nats-Msg-Id -> subject, header block, body
    prepare, publish_now, send_publish = Publisher.prepare, HookedClient.publish_now, HookedClient._send_publish

    def prepared(self: Publisher, event: Event) -> Any:
        events[event.id] = event
        return prepare(self, event)

    def keep(subject: str, headers: dict[str, str] | None, payload: bytes) -> None:
        if subject.startswith("tether.evt.") and headers is not None:
            block = headers.block if type(headers) is HeaderBlock else old_block(headers)  # as nats-py writes it
            sent[headers["Nats-Msg-Id"]] = (subject, block, payload)

    def now(self: HookedClient, subject: str, reply: str, payload: bytes, headers: HeaderBlock, **kw: Any) -> bool:
        done = publish_now(self, subject, reply, payload, headers, **kw)
        if done:
            keep(subject, headers, payload)
        return done

    async def later(self: HookedClient, subject: str, reply: str, payload: bytes, size: int,
                    headers: dict[str, Any] | None) -> None:
        await send_publish(self, subject, reply, payload, size, headers)
        keep(subject, headers, payload)

    monkeypatch.setattr(Publisher, "prepare", prepared)
    monkeypatch.setattr(HookedClient, "publish_now", now)
    monkeypatch.setattr(HookedClient, "_send_publish", later)

    sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="sk-test-key"), bus=bus, policies=policies)

    @tether.tool(bus=bus, policies=policies)
    def get_weather(city: str) -> dict[str, str]:
        return {"city": city, "weather": "sunny"}

    @tether.tool(bus=bus, policies=policies)
    def broken(city: str) -> None:
        raise ValueError(f"no station in {city}")

    async with tether.run(agent="bot", bus=bus) as run:
        fake.set_faults("429(0.01s)#1")
        first = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, tools=TOOLS)  # type: ignore[arg-type]
        call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
        get_weather(**json.loads(call.function.arguments))  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="no station"):
            broken("Paris")
        fake.set_faults("503")
        with pytest.raises(openai.InternalServerError):
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
        fake.clear_faults()
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        async for _ in stream:
            pass
    await sdk.close()
    logged = await run_events(bus, run.run_id)
    assert set(kinds(logged)) >= {"run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                                  "tool.call.requested", "tool.call.completed", "tool.call.failed", "llm.call.failed",
                                  "call.dead_lettered", "run.finished"}
    for event in logged:
        assert event.id in sent, f"{event.type} {event.id} was not seen leaving the publisher"
        subject, block, body = sent[event.id]
        old_subject, _, old_written, old_body = old_message(events[event.id])
        assert (subject, block, body) == (old_subject, old_written, old_body), event.type
