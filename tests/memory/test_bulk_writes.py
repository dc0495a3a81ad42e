"""write_many, the bulk path: every write acked by the stream or reported, nothing half sent on bad
input, new keys written without waiting for the view, and events the same as write()'s."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tether.bus import EVENTS_STREAM, PayloadTooLarge, connect
from tether.memory import BulkWriteFailed, InvalidMemory, MemoryNotFound
from tether.schemas import MemoryWritten
from tether.testing import NatsServer

from .conftest import Opener, settings_for

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def memory_messages(memory: Any) -> int:
    info = await memory.bus.js.stream_info(EVENTS_STREAM)
    return int(info.state.messages)


async def test_writes_the_stream_refuses_are_named_and_the_rest_land(open_memory: Opener) -> None:
    """An operator's stream limit refuses some writes of a batch: write_many says which (before, it
    returned as if all had landed, and the refused ones were only in a log line)."""
    memory = await open_memory(agent="bot")
    info = await memory.bus.js.stream_info(EVENTS_STREAM)
    info.config.max_msg_size = 3000
    await memory.bus.js.update_stream(info.config)
    items = [{"namespace": "agent:bot", "key": f"k{i}", "text": ("long " * 600 if i in (3, 7) else f"fact {i}")}
             for i in range(10)]
    with pytest.raises(BulkWriteFailed, match=r"2 of 10 writes did not land.*item 3 \(agent:bot/k3\)") as info_:
        await memory.write_many(items)
    failed = info_.value.failed
    assert [(i, ns, key) for i, ns, key, _ in failed] == [(3, "agent:bot", "k3"), (7, "agent:bot", "k7")]
    assert all("maximum" in why for *_, why in failed)
    written = info_.value.written
    assert written.count == 8 and written.keys == tuple(f"k{i}" for i in range(10) if i not in (3, 7))
    await memory.wait_for(written.seq)
    assert (await memory.get("agent:bot", "k9")).text == "fact 9"
    with pytest.raises(MemoryNotFound):
        await memory.get("agent:bot", "k3")


async def test_an_item_nats_can_never_take_refuses_the_batch_before_any_is_sent(
        fresh_nats_server: NatsServer, home: Path) -> None:
    """Too large for the bus: nothing of the batch is published (before, the items ahead of it were)."""
    from tether.memory import AsyncMemory

    bus = await connect(fresh_nats_server.url, home=home, max_event_bytes=4000)
    memory = await AsyncMemory(bus, agent="bot", settings=settings_for(home)).start()
    try:
        before = await memory_messages(memory)
        items = [{"namespace": "agent:bot", "text": "x " * 3000 if i == 5 else f"fact {i}"} for i in range(10)]
        with pytest.raises(PayloadTooLarge, match=r"event 5 of the batch of 10.*none of the batch was published"):
            await memory.write_many(items)
        await bus.flush()
        assert await memory_messages(memory) == before
    finally:
        await memory.close()
        await bus.close()


async def test_bad_input_names_the_item_and_writes_nothing(open_memory: Opener) -> None:
    memory = await open_memory(agent="bot")
    before = await memory_messages(memory)
    with pytest.raises(InvalidMemory, match=r"item 2 of write_many: text is empty.*nothing was written"):
        await memory.write_many([{"text": "one"}, {"text": "two"}, {"text": "  "}], namespace="agent:bot")
    with pytest.raises(InvalidMemory, match="item 1 of write_many: metadata n is nan"):
        await memory.write_many([{"text": "one"}, {"text": "two", "metadata": {"n": float("nan")}}],
                                namespace="agent:bot")
    assert await memory_messages(memory) == before


async def test_new_keys_do_not_wait_for_the_view_and_given_keys_get_their_next_version(
        open_memory: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk load of new entries is not held to the pace of the view's apply (before, each
    write_many first waited for the view to reach this client's last write)."""
    memory = await open_memory(agent="bot")
    await memory.write("agent:bot", "the first version", key="k")
    real_wait = memory.feed.wait_for
    waited: list[int] = []

    async def behind(seq: int, timeout: float = 10.0) -> None:  # a view that has not caught up
        waited.append(seq)
        await asyncio.sleep(3600)

    monkeypatch.setattr(memory.feed, "wait_for", behind)
    done = await asyncio.wait_for(memory.write_many([{"text": f"new fact {i}"} for i in range(50)],
                                                    namespace="agent:bot"), 10)
    assert done.count == 50 and len(set(done.keys)) == 50 and not waited
    monkeypatch.setattr(memory.feed, "wait_for", real_wait)
    again = await memory.write_many([{"key": "k", "text": "the second version"},
                                     {"key": "k", "text": "the third version"}], namespace="agent:bot")
    await memory.wait_for(again.seq)
    assert [v.version for v in await memory.history("agent:bot", "k")] == [1, 2, 3]
    fresh = await memory.get("agent:bot", done.keys[0])
    assert fresh.version == 1 and fresh.text == "new fact 0"


async def test_bulk_events_are_what_write_makes(open_memory: Opener) -> None:
    """The batch path builds the same events as write() does, field for field: the same envelope,
    the same sealed layout (key id, content hash) and the same header block layout."""
    memory = await open_memory(agent="bot", run="run-1")
    one = await memory.write("agent:bot", "Ann prefers email.", key="a", metadata={"topic": "contact"})
    many = await memory.write_many([{"key": "b", "text": "Ann prefers email.", "metadata": {"topic": "contact"}},
                                    {"key": "c", "text": "Bo prefers phone."}], namespace="agent:bot")
    await memory.wait_for(many.seq)
    msgs = [await memory.bus.js.get_msg(EVENTS_STREAM, seq) for seq in (one.seq, many.seq - 1)]
    single, bulk = msgs[0].headers or {}, msgs[1].headers or {}
    assert list(single) == list(bulk)
    assert {k: v for k, v in single.items() if k not in ("ce-id", "ce-time", "Nats-Msg-Id")} == \
        {k: v for k, v in bulk.items() if k not in ("ce-id", "ce-time", "Nats-Msg-Id")}
    assert bulk["ce-id"] == bulk["Nats-Msg-Id"] and bulk["ce-runid"] == "run-1"
    a, b = (MemoryWritten.parse_json(m.data) for m in msgs)
    assert a.key_id == b.key_id and a.content_hash == b.content_hash and a.text != b.text  # a nonce each
    assert (await memory.get("agent:bot", "b")).metadata == {"topic": "contact"}


def test_the_view_folds_a_batch_with_one_look_at_the_keyfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The fold opened each entry after a stat of the keystore file (one system call an event, a
    sixth of the apply's time in a profile); now one a batch, and the next batch sees an erasure
    another process made meanwhile."""
    from tether.memory import FileKeyStore, MemoryView
    from tether.memory._codec import seal_entry
    from tether.schemas import Event

    keys = FileKeyStore(tmp_path / "keys.json")
    events = [(i + 1, Event.of(MemoryWritten(namespace="team:a", key=f"k{i}", version=1,
                                             **seal_entry(keys, "team:a", f"k{i}", f"fact {i}", {}, None))))
              for i in range(50)]
    looks = 0
    real_stat = keys._stat

    def counted() -> Any:
        nonlocal looks
        looks += 1
        return real_stat()

    monkeypatch.setattr(keys, "_stat", counted)
    view = MemoryView(keys)
    ops, refused = view.fold(events)
    assert not refused and looks <= 2
    assert sorted(op.values["text"] for op in ops if op.table == "versions") == sorted(f"fact {i}" for i in range(50))
    FileKeyStore(tmp_path / "keys.json").destroy("team:a")  # another process erases the namespace
    again, _ = view.fold([(seq + 50, event) for seq, event in events])
    assert not [op for op in again if op.table == "versions" and op.values.get("text")]


async def test_a_big_batch_is_sent_part_by_part_as_it_is_built(open_memory: Opener,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """NATS stores one part while the next is sealed (before, nothing was sent until every write of the
    batch was built); every write lands, in order, with its version, and gc runs rarer meanwhile."""
    import gc

    from tether.memory import _codec, _writes

    monkeypatch.setattr(_writes, "BULK_PART", 4, raising=False)  # (raising=False: the check fails before it)
    memory = await open_memory(agent="bot")
    await memory.write("agent:bot", "the first version", key="k")
    publisher = memory.bus.publisher
    sent_before = publisher.stats.sent
    seen: list[tuple[str, int, int]] = []
    real_seal = _codec.Sealer.seal

    def seal(self: Any, namespace: str, key: str, text: str, *args: Any, **kw: Any) -> dict[str, Any]:
        seen.append((text, publisher.stats.sent - sent_before, gc.get_threshold()[0]))
        return real_seal(self, namespace, key, text, *args, **kw)

    monkeypatch.setattr(_codec.Sealer, "seal", seal)
    items = [{"key": "k" if i % 5 == 0 else f"n{i}", "text": f"fact number {i}"} for i in range(18)]
    done = await memory.write_many(items, namespace="agent:bot")
    assert done.count == 18
    assert [sent for _, sent, _ in seen] == [i // 4 * 4 for i in range(18)]  # each part sent before the next
    assert all(threshold >= 500_000 for *_, threshold in seen) and gc.get_threshold()[0] < 500_000
    await memory.wait_for(done.seq)
    assert [v.text for v in await memory.history("agent:bot", "k")] == \
        ["the first version", *(f"fact number {i}" for i in range(0, 18, 5))]
    assert (await memory.get("agent:bot", "n17")).text == "fact number 17"


async def test_refusals_in_later_parts_name_their_items(open_memory: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    from tether.memory import _writes

    monkeypatch.setattr(_writes, "BULK_PART", 4)
    memory = await open_memory(agent="bot")
    info = await memory.bus.js.stream_info(EVENTS_STREAM)
    info.config.max_msg_size = 3000
    await memory.bus.js.update_stream(info.config)
    items = [{"key": f"k{i}", "text": ("long " * 600 if i in (1, 9) else f"fact {i}")} for i in range(11)]
    with pytest.raises(BulkWriteFailed) as info_:
        await memory.write_many(items, namespace="agent:bot")
    assert [(i, key) for i, _, key, _ in info_.value.failed] == [(1, "k1"), (9, "k9")]
    assert info_.value.written.count == 9


async def test_a_too_large_item_in_a_later_part_refuses_the_batch_before_any_is_sent(
        fresh_nats_server: NatsServer, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that could hold a message too large for the bus is built whole before any part is sent."""
    from tether.memory import AsyncMemory, _writes

    monkeypatch.setattr(_writes, "BULK_PART", 4)
    bus = await connect(fresh_nats_server.url, home=home, max_event_bytes=4000)
    memory = await AsyncMemory(bus, agent="bot", settings=settings_for(home)).start()
    try:
        before = await memory_messages(memory)
        items = [{"namespace": "agent:bot", "text": "x " * 3000 if i == 9 else f"fact {i}"} for i in range(12)]
        with pytest.raises(PayloadTooLarge, match=r"event 9 of the batch of 12.*none of the batch was published"):
            await memory.write_many(items)
        await bus.flush()
        assert await memory_messages(memory) == before
    finally:
        await memory.close()
        await bus.close()


def test_the_size_bound_holds_for_what_is_sealed() -> None:
    """``sealed_size_bound`` (which decides whether a batch may go in parts) is never below a real
    payload: escapes, characters outside the BMP, metadata, vectors, valid times."""
    import json
    import random

    from tether.memory._codec import seal_entry, sealed_size_bound
    from tether.memory._keys import InMemoryKeyStore

    keys = InMemoryKeyStore()
    rng = random.Random(5)
    alphabet = ["a", " ", "\x00", "\x1f", '"', "\\", "é", "\u2028", "\U0001f600", "\n"]
    for i in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 400)))
        meta = {"k": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 50))), "n": i, "l": [1.5, None]}
        dims = rng.choice([0, 8, 384])
        vector = [rng.uniform(-1, 1) for _ in range(dims)] or None
        ns, key = f"team:{'é' * (i % 7)}x", f"key-{i}-\U0001f600"
        sealed = seal_entry(keys, ns, key, text, meta, vector, valid_from=1.5e9 + i, observed_at=1.6e9)
        payload = MemoryWritten.trusted(namespace=ns, key=key, version=10**6, expires_at=None, embedder="e" * 40,
                                        metadata={}, **sealed)
        size = len(type(payload).__pydantic_serializer__.to_json(payload))
        bound = sealed_size_bound(ns, key, text, len(json.dumps(meta, ensure_ascii=False)), dims, "e" * 40)
        assert size <= bound, (i, size, bound)


def test_a_batch_sealer_seals_as_each_entry_alone_would() -> None:
    """The batch sealer keys its HMACs once per namespace and draws nonces 64 at a time: each entry
    still gets its own derived key, the same content hash, a nonce of its own, and opens with
    the keys and code that open one sealed alone (a generation change between batches included)."""
    import base64

    from tether.memory._codec import Sealer, open_entry, seal_entry
    from tether.memory._keys import InMemoryKeyStore, content_hash, derive, open_sealed

    keys = InMemoryKeyStore()
    sealer = Sealer(keys)
    nonces = set()
    for i in range(150):  # more than one draw of nonces
        ns = f"team:{i % 3}"
        text, vector = f"  Fact   NUMBER {i}\tabout é ", [0.5, -0.25, float(i)]
        fields = sealer.seal(ns, f"k{i}", text, {"i": i}, vector, valid_from=1.7e9)
        alone = seal_entry(keys, ns, f"k{i}", text, {"i": i}, vector, valid_from=1.7e9)
        key_id, namespace_key = keys.current(ns)
        assert fields["key_id"] == alone["key_id"] == key_id + "/entry"
        assert fields["content_hash"] == alone["content_hash"] == content_hash(namespace_key, text)
        opened = open_entry(keys, ns, f"k{i}", fields["key_id"], fields["text"], {}, fields["embedding"])
        assert opened is not None and (opened.text, opened.metadata, opened.valid_from) == (text, {"i": i}, 1.7e9)
        assert open_sealed(derive(namespace_key, f"k{i}"), ns, f"k{i}", fields["text"])  # the entry's own key
        for sealed in (fields["text"], fields["embedding"]):
            nonces.add(base64.b64decode(sealed)[:12])
    assert len(nonces) == 300  # every seal its own nonce
    old_id = keys.current("team:0")[0]
    keys.destroy("team:0")  # erased: a later batch seals under a new generation
    later = Sealer(keys).seal("team:0", "k", "after", {}, None)
    assert later["key_id"] == keys.current("team:0")[0] + "/entry" != old_id + "/entry"
