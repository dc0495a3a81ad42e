"""Extraction (opt-in): operations proposed from a conversation by a model through tether (the fake
provider over HTTP) or by the offline extractive fallback, planned against what exists, and written
as memory events that carry the model call and the message they came from."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tether.bus import EVENTS_STREAM
from tether.memory import (
    AsyncMemory,
    ExtractiveExtractor,
    InvalidMemory,
    LlmExtractor,
    MemoryNotFound,
    Operation,
    Proposal,
)
from tether.memory._extract import parse_operations, plan
from tether.middleware import InlineCalls, PolicySet, ProviderConfig
from tether.schemas import LlmCallCompleted, MemoryWritten
from tether.testing.fake_provider import FakeProvider


async def _events(memory: AsyncMemory) -> list[object]:
    info = await memory.bus.js.stream_info(EVENTS_STREAM)
    out = []
    for seq in range(1, info.state.last_seq + 1):
        msg = await memory.bus.js.get_msg(EVENTS_STREAM, seq)
        out.append((await memory.bus.reader.read(msg.headers, msg.data or b"")).data)
    return out


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    async with FakeProvider(seed=5) as fake:
        yield fake


@pytest.mark.anyio
@pytest.mark.nats
async def test_a_model_proposes_operations_through_tether_and_they_are_written_with_provenance(
        memory: AsyncMemory, provider: FakeProvider) -> None:
    calls = InlineCalls(memory.bus, policies=PolicySet.default(),
                        providers={"fake": ProviderConfig("fake", "openai", provider.url)})
    async with calls:
        extractor = LlmExtractor(calls, "fake", "gpt-4o-mini")
        await memory.write("user:ann", "Ann lives in Paris.", key="city")
        dry = await memory.extract("user:ann", [{"role": "user", "content": "I moved to Lyon last month."}],
                                   extractor=extractor, apply=False, run="run-9", message_id="msg-3")
        assert dry.written == () and dry.call_id and len(dry.operations) == 1
        done = await memory.extract("user:ann", [{"role": "user", "content": "I moved to Lyon last month."}],
                                    extractor=extractor, run="run-9", message_id="msg-3")
    # the fake model answers the tool's schema with one plausible operation: add "fake key"
    assert done.extractor == "llm:fake:gpt-4o-mini"
    assert done.operations == (Operation("add", "fake key", "fake text"),)
    entry = await memory.get("user:ann", "fake key")
    assert entry.text == "fake text"
    assert (entry.source_call_id, entry.source_message_id, entry.run) == (done.call_id, "msg-3", "run-9")
    assert [(r.path, r.model, r.outcome) for r in provider.log] == [("/v1/chat/completions", "gpt-4o-mini", "200")] * 2
    events = await _events(memory)
    completed = [e for e in events if isinstance(e, LlmCallCompleted)]
    assert done.call_id in [c.call_id for c in completed]  # the proposing call is in the log
    written = [e for e in events if isinstance(e, MemoryWritten) and e.key == "fake key"]
    assert [w.source_call_id for w in written] == [done.call_id]


def test_model_answers_are_parsed_and_checked_against_what_exists() -> None:
    response = {"choices": [{"message": {"tool_calls": [{"function": {
        "name": "record_memory_operations",
        "arguments": '{"operations": [{"op": "update", "key": "city", "text": "Ann lives in Lyon."},'
                     ' {"op": "delete", "key": "pet", "text": ""}, {"op": "delete", "key": "nope", "text": ""},'
                     ' {"op": "add", "key": "city", "text": "Ann lives in Lyon."},'
                     ' {"op": "add", "key": "drink", "text": "Ann drinks tea."},'
                     ' {"op": "update", "key": "new", "text": "Ann has a bike."},'
                     ' {"op": "add", "key": "bad\\u0007", "text": "x"}, {"op": "add", "key": "k", "text": " "},'
                     ' {"op": "shout", "key": "k", "text": "x"}, "junk"]}'}}]}}]}
    ops = parse_operations(response)
    assert len(ops) == 8  # the unknown action and the non-object are dropped
    from datetime import UTC, datetime

    from tether.memory import Entry

    def entry(key: str, text: str) -> Entry:
        return Entry("user:ann", key, 1, text, {}, 1, datetime.now(UTC), datetime.now(UTC))

    todo, skipped = plan(Proposal(tuple(ops)), [entry("city", "Ann lives in Paris."), entry("pet", "A cat.")])
    assert [(o.action, o.key) for o in todo] == [("update", "city"), ("delete", "pet"), ("update", "city"),
                                                 ("add", "drink"), ("add", "new")]
    assert [(o.key, (o.reason or "")[:11]) for o in skipped] == [("nope", "no such ent"), ("bad\a", "invalid key"),
                                                                 ("k", "no text")]
    assert parse_operations({"choices": [{"message": {"content": "not json"}}]}) == []
    assert parse_operations({"choices": [{"message": {"content": '{"operations": [{"op": "add", "key": "a", '
                                                                  '"text": "b"}]}'}}]}) == [Operation("add", "a", "b")]
    assert parse_operations({}) == []


@pytest.mark.anyio
@pytest.mark.nats
async def test_the_offline_extractor_adds_updates_and_deletes_without_a_model(memory: AsyncMemory) -> None:
    first = await memory.extract("user:ann", [
        {"role": "user", "content": "Hi! I live in Paris. My manager is Leo Berg. What's the weather?"},
        {"role": "assistant", "content": "I am a bot and I live nowhere."},
        "I think that is fine. I prefer email over phone calls.",
    ], message_id="msg-1")
    assert first.call_id is None and first.extractor == "extractive"
    assert [(o.action, o.key) for o in first.operations] == [
        ("add", "fact:i-live-in"), ("add", "fact:my-manager-is"), ("add", "fact:i-prefer")]
    assert (await memory.get("user:ann", "fact:i-live-in")).text == "I live in Paris."
    assert (await memory.get("user:ann", "fact:i-live-in")).source_message_id == "msg-1"

    second = await memory.extract("user:ann", ["I live in Lyon now.", "I no longer prefer email.",
                                               "Forget that my manager is Leo Berg."])
    assert [(o.action, o.key) for o in second.operations] == [
        ("update", "fact:i-live-in"), ("delete", "fact:i-prefer"), ("delete", "fact:my-manager-is")]
    city = await memory.get("user:ann", "fact:i-live-in")
    assert (city.text, city.version) == ("I live in Lyon now.", 2)
    for key in ("fact:i-prefer", "fact:my-manager-is"):
        with pytest.raises(MemoryNotFound):
            await memory.get("user:ann", key)
    again = await memory.extract("user:ann", ["I live in Lyon now."])
    assert again.operations == () and [s.reason for s in again.skipped] == ["already remembered"]
    assert ExtractiveExtractor.statement("Do I live in Lyon?") is None


@pytest.mark.anyio
@pytest.mark.nats
async def test_extraction_refuses_bad_input_and_writes_nothing(memory: AsyncMemory) -> None:
    for bad in ("I live in Lyon", [], [3]):
        with pytest.raises(InvalidMemory, match="messages must be"):
            await memory.extract("user:ann", bad)  # type: ignore[arg-type]
    assert memory.position == 0


@pytest.mark.anyio
async def test_the_model_is_shown_the_existing_entries_and_the_conversation() -> None:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from tether.memory import Entry

    seen: list[dict[str, object]] = []

    class Calls:
        async def llm(self, provider: str, model: str, body: dict[str, object], **kw: object) -> SimpleNamespace:
            seen.append(body)
            return SimpleNamespace(call_id="c1", response={"choices": [{"message": {"content": "{}"}}]})

    existing = [Entry("user:ann", "city", 1, "Ann lives in Paris.", {}, 1, datetime.now(UTC), datetime.now(UTC))]
    proposal = await LlmExtractor(Calls(), "fake", "m").propose([{"role": "user", "content": "I moved to Lyon."}],
                                                                 existing)
    assert proposal == Proposal((), "c1")
    prompt = str(seen[0]["messages"])
    assert "[city] Ann lives in Paris." in prompt and "user: I moved to Lyon." in prompt
    assert seen[0]["tool_choice"] == {"type": "function", "function": {"name": "record_memory_operations"}}
