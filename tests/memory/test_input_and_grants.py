"""Bad input gets clear errors; grants are enforced on every call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether.bus import PublishRejected, connect
from tether.memory import AsyncMemory, Grants, InvalidMemory, MemoryAccessDenied, MemoryNotFound
from tether.memory._codec import seal_entry
from tether.schemas import Event, MemoryWritten
from tether.testing import NatsServer

from .conftest import Opener, settings_for

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


@pytest.mark.parametrize(("text", "match"), [
    ("", "text is empty"), ("   \n\t", "text is empty"), (None, "text must be a string"),
    ("x" * 40_000, r"text is 40,000 bytes; the limit is 32,768 \(memory.max_text_bytes\)"),
    ("é" * 20_000, "text is 40,000 bytes"),
])
async def test_bad_text(memory: AsyncMemory, text: Any, match: str) -> None:
    with pytest.raises(InvalidMemory, match=match):
        await memory.write("agent:bot", text)
    assert memory.position == 0  # nothing was published


@pytest.mark.parametrize("namespace", ["", "bot", "agent:", "user:a b", "USER:1", "user:*", "x" * 200,
                                       "team:docs\n", "global\n", "team:docs\r\n"])
async def test_invalid_namespace(memory: AsyncMemory, namespace: str) -> None:
    with pytest.raises(InvalidMemory, match="namespace"):
        await memory.write(namespace, "hello")
    with pytest.raises(InvalidMemory, match="namespace"):
        await memory.search("hello", [namespace])


async def test_a_bad_namespace_blocks_no_later_write(memory: AsyncMemory) -> None:
    """A namespace with a trailing newline used to be accepted; its publish failed with a bad
    subject, which sent it and every later write to the outbox (read-your-writes broken)."""
    with pytest.raises(InvalidMemory, match=r"invalid namespace 'team:docs\\n'.*'team:docs'"):
        await memory.write("team:docs\n", "a note")
    written = await memory.write("team:docs", "a note", key="k")
    assert not written.outboxed and written.seq is not None
    assert (await memory.get("team:docs", "k")).text == "a note"
    assert memory.bus.publisher.outbox_depth() == 0 and not memory.bus.publisher.degraded


async def test_a_write_nats_can_never_take_is_refused_and_later_writes_are_read(
        home: Path) -> None:
    """A permanent publish error (here: above the server's max_payload) is an error for the
    caller, not an outage: nothing is outboxed and the next writes are read back at once."""
    with NatsServer(max_payload=32 * 1024) as server:
        async with await connect(server.url, home=home) as bus, \
                AsyncMemory(bus, settings=settings_for(home)) as memory:
            await memory.start()
            with pytest.raises(PublishRejected, match=r"can never be delivered.*max_payload"):
                await memory.write("team:docs", "long " * 6000, key="big")
            for i in range(3):
                written = await memory.write("team:docs", f"note {i}", key=f"k{i}")
                assert not written.outboxed
                assert (await memory.get("team:docs", f"k{i}")).text == f"note {i}"
            with pytest.raises(MemoryNotFound):
                await memory.get("team:docs", "big")
            assert bus.publisher.outbox_depth() == 0 and not bus.publisher.degraded


async def test_unknown_keys(memory: AsyncMemory) -> None:
    await memory.write("agent:bot", "something", key="known")
    with pytest.raises(MemoryNotFound, match="no memory 'nope' in namespace 'agent:bot'") as info:
        await memory.get("agent:bot", "nope")
    assert isinstance(info.value, KeyError) and (info.value.namespace, info.value.key) == ("agent:bot", "nope")
    with pytest.raises(MemoryNotFound, match="never written"):
        await memory.history("agent:bot", "nope")
    with pytest.raises(MemoryNotFound):
        await memory.delete("agent:bot", "nope")
    await memory.delete("agent:bot", "known")
    with pytest.raises(MemoryNotFound, match=r"\(deleted\)"):
        await memory.get("agent:bot", "known")
    with pytest.raises(MemoryNotFound):
        await memory.delete("agent:bot", "known")


@pytest.mark.parametrize(("call", "match"), [
    (lambda m: m.write("agent:bot", "x", key="k", expected_version=-1), "expected_version"),
    (lambda m: m.write("agent:bot", "x", expected_version=2), "expected_version needs a key"),
    (lambda m: m.write("agent:bot", "x", ttl=0), "ttl must be a positive"),
    (lambda m: m.write("agent:bot", "x", ttl="1h"), "ttl must be a positive"),
    (lambda m: m.write("agent:bot", "x", key="*"), "reserved"),
    (lambda m: m.write("agent:bot", "x", metadata={"a": object()}), "metadata must be JSON"),
    (lambda m: m.write("agent:bot", "x", metadata={"a": "y" * 20_000}), "metadata is"),
    (lambda m: m.search(""), "query is empty"),
    (lambda m: m.search("x", k=0), "k must be"),
    (lambda m: m.search("x", mode="fuzzy"), "mode must be"),
    (lambda m: m.search("x", mode="semantic"), "needs an embedder"),
    (lambda m: m.search("x", filters={"a b": 1}), "filter field"),
    (lambda m: m.search("x", filters={"a\n": 1}), "filter field"),
    (lambda m: m.search("x", filters={"a": {"like": 1}}), "unknown operator"),
    (lambda m: m.search("x", filters={"a": [1, {"b": 2}]}), "values must be"),
    (lambda m: m.get("agent:bot", "k", as_of=-5), "as_of must be"),
    (lambda m: m.context("x", token_budget=3), "token_budget"),
    (lambda m: m.compact("agent:bot", 0), "token_budget"),
])
async def test_bad_arguments(memory: AsyncMemory, call: Any, match: str) -> None:
    await memory.write("agent:bot", "a fact to search", key="k")
    with pytest.raises(InvalidMemory, match=match):
        await call(memory)


async def test_metadata_filters(memory: AsyncMemory) -> None:
    await memory.write("agent:bot", "red apple", key="a", metadata={"color": "red", "n": 1, "tags": {"fruit": True}})
    await memory.write("agent:bot", "green apple", key="b", metadata={"color": "green", "n": 5})
    await memory.write("agent:bot", "red car", key="c", metadata={"color": "red", "n": 9})
    assert {h.entry.key for h in await memory.search("apple", filters={"color": "red"})} == {"a"}
    assert {h.entry.key for h in await memory.search("apple car", filters={"n": {"gte": 5}})} == {"b", "c"}
    assert {h.entry.key for h in await memory.search("apple car", filters={"color": ["green", "red"],
                                                                           "n": {"lt": 9}})} == {"a", "b"}
    assert {h.entry.key for h in await memory.search("apple", filters={"tags.fruit": True})} == {"a"}
    assert {h.entry.key for h in await memory.search("apple car", filters={"tags": None})} == {"b", "c"}


GRANTS = Grants.from_mapping({
    "support-bot": {"read": ["agent:{agent}", "team:docs", "global"], "write": ["agent:{agent}", "team:docs"]},
    "intern": {"read": ["team:docs"], "write": []},
    "*": {"read": ["global"], "write": []},
})


async def test_grants_are_enforced_on_every_call(open_memory: Opener) -> None:
    admin = await open_memory(agent=None)  # no grants: an operator
    bot = await open_memory(agent="support-bot", grants=GRANTS)
    intern = await open_memory(agent="intern", grants=GRANTS)
    stranger = await open_memory(agent="stranger", grants=GRANTS)
    await admin.write("user:1", "private note about user one", key="u")
    await admin.write("global", "public note for everyone", key="g")
    await bot.write("team:docs", "docs note for the team", key="d")
    await bot.write("agent:support-bot", "bot's own note", key="b")

    denied = [
        bot.write("user:1", "x"), bot.get("user:1", "u"), bot.history("user:1", "u"),
        bot.search("note", ["user:1"]), bot.context("note", ["user:1"]), bot.delete("user:1", "u"),
        bot.forget("user:1"), bot.erase("user:1"), bot.compact("user:1", 100),
        bot.write("global", "bot may read global but not write it"),
        intern.write("team:docs", "x"), intern.get("agent:support-bot", "b"),
        stranger.get("team:docs", "d"), stranger.write("global", "x"),
    ]
    for call in denied:
        with pytest.raises(MemoryAccessDenied, match="may not") as info:
            await call
        assert isinstance(info.value, PermissionError)
    assert (await intern.get("team:docs", "d", after=bot.position)).text == "docs note for the team"
    assert (await stranger.get("global", "g", after=admin.position)).text == "public note for everyone"
    # Without namespaces, a search covers exactly what the agent may read.
    assert {h.entry.namespace for h in await bot.search("note", k=10)} == {"team:docs", "global",
                                                                        "agent:support-bot"}
    assert {h.entry.namespace for h in await intern.search("note", k=10)} == {"team:docs", "global"}  # + "*"
    assert {h.entry.namespace for h in await stranger.search("note", k=10)} == {"global"}
    assert "private" not in (await bot.context("note")).text
    assert dict(await intern.namespaces()) == {"team:docs": 1, "global": 1}


@pytest.mark.parametrize(("metadata", "match"), [
    ({"score": float("nan")}, "metadata score is nan"),
    ({"score": float("inf")}, "metadata score is inf"),
    ({"scores": [1.0, float("-inf")]}, "metadata scores.1 is -inf"),
    ({"a": {"b": float("nan")}}, "metadata a.b is nan"),
])
async def test_non_finite_metadata_is_refused(memory: AsyncMemory, metadata: dict[str, Any], match: str) -> None:
    """NaN used to be accepted and then broke every filtered search and forget of the namespace."""
    await memory.write("agent:bot", "a fact", key="k", metadata={"score": 1})
    position = memory.position
    with pytest.raises(InvalidMemory, match=rf"{match}: JSON has no NaN or Infinity"):
        await memory.write("agent:bot", "another fact", key="k2", metadata=metadata)
    with pytest.raises(InvalidMemory, match=match):
        await memory.write_many([{"text": "one more", "metadata": metadata}], namespace="agent:bot")
    assert memory.position == position  # nothing was published
    assert [h.entry.key for h in await memory.search("fact", filters={"score": 1})] == ["k"]
    with pytest.raises(InvalidMemory, match="filter 'score': nan matches nothing"):
        await memory.search("fact", filters={"score": float("nan")})
    with pytest.raises(InvalidMemory, match="filter 'score': inf matches nothing"):
        await memory.forget("agent:bot", filters={"score": {"lt": float("inf")}})


async def test_nan_written_by_an_older_tether_does_not_break_filters(memory: AsyncMemory) -> None:
    """An older tether sealed NaN into an entry's metadata; the view keeps it as null, so
    filtered search and forget still work (SQLite's JSON functions refuse NaN)."""
    await memory.write("agent:bot", "a fact about apples", key="good", metadata={"score": 1})
    sealed = seal_entry(memory.keys, "agent:bot", "old", "a fact about pears", {"score": float("nan"), "n": 2}, None)
    receipt = await memory.bus.publish(Event.of(MemoryWritten(namespace="agent:bot", key="old", version=1, **sealed),
                                                agentid="bot"))
    await memory.wait_for(receipt.stream_seq or 0)
    assert [h.entry.key for h in await memory.search("fact", filters={"score": 1})] == ["good"]
    assert [h.entry.key for h in await memory.search("fact", filters={"n": 2})] == ["old"]
    assert (await memory.get("agent:bot", "old")).metadata == {"score": None, "n": 2}
    assert await memory.forget("agent:bot", filters={"score": None}) == ["old"]
