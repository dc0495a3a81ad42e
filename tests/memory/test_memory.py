"""The memory API against a real nats-server: writes as events, versions, as-of reads, restarts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tether.bus import EVENTS_STREAM
from tether.memory import AsyncMemory, HashEmbedder, Memory, MemoryNotFound
from tether.schemas import MemoryWritten
from tether.testing import NatsServer

from .conftest import Opener

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def test_a_write_is_an_event_with_provenance_and_a_position(memory: AsyncMemory) -> None:
    written = await memory.write("agent:bot", "The customer prefers email.", key="contact",
                                 metadata={"topic": "contact"}, run="run-7", call_id="call-1", message_id="msg-9")
    assert written.seq is not None and written.version == 1 and not written.outboxed
    stored = await memory.bus.js.get_msg(EVENTS_STREAM, written.seq)
    assert stored.subject == "tether.evt.bot.run-7.memory.written.agent:bot"
    event = await memory.bus.reader.read(stored.headers, stored.data or b"")
    assert isinstance(event.data, MemoryWritten)
    assert (event.agentid, event.runid) == ("bot", "run-7")
    assert (event.data.source_call_id, event.data.source_message_id) == ("call-1", "msg-9")
    assert event.data.key_id == "agent:bot#1/entry" and "email" not in event.data.text  # sealed, own key
    entry = await memory.get("agent:bot", "contact")  # read-your-writes: no wait needed
    assert (entry.text, entry.metadata, entry.version, entry.seq) == ("The customer prefers email.",
                                                                      {"topic": "contact"}, 1, written.seq)
    assert (entry.agent, entry.run, entry.source_call_id, entry.source_message_id) == ("bot", "run-7", "call-1",
                                                                                         "msg-9")


async def test_versions_history_and_as_of_after_many_versions(memory: AsyncMemory) -> None:
    seqs = []
    stamps = []
    for i in range(1, 41):
        written = await memory.write("agent:bot", f"counter is {i}", key="counter")
        assert written.version == i
        seqs.append(written.seq)
        stamps.append((await memory.get("agent:bot", "counter")).updated_at)
        if i == 20:
            await memory.delete("agent:bot", "counter")
            seqs.append(memory.position)
    history = await memory.history("agent:bot", "counter")
    assert [v.version for v in history if v.action == "written"] == list(range(1, 41))
    assert [v.action for v in history].count("deleted") == 1
    assert history[20].action == "deleted" and history[20].version == 20
    assert (await memory.get("agent:bot", "counter")).text == "counter is 40"
    for i in (1, 7, 20, 33, 40):
        seq = seqs[i - 1] if i <= 20 else seqs[i]
        entry = await memory.get("agent:bot", "counter", as_of=seq)
        assert (entry.text, entry.version) == (f"counter is {i}", i)
    with pytest.raises(MemoryNotFound, match=r"\(deleted\) as of"):
        await memory.get("agent:bot", "counter", as_of=seqs[20])
    with pytest.raises(MemoryNotFound):
        await memory.get("agent:bot", "counter", as_of=seqs[0] - 1)
    mid = stamps[9]
    assert mid is not None
    assert (await memory.get("agent:bot", "counter", as_of=mid)).text == "counter is 10"
    old = await memory.search("counter", ["agent:bot"], as_of=seqs[4])
    assert [h.entry.text for h in old] == ["counter is 5"]


async def test_ttl_hides_entries_and_expire_records_it(open_memory: Opener) -> None:
    now = [1_900_000_000.0]
    memory = await open_memory(agent="bot", clock=lambda: now[0])
    await memory.write("agent:bot", "short lived fact", key="soon", ttl=60)
    await memory.write("agent:bot", "long lived fact", key="later", ttl=timedelta(days=1))
    assert len(await memory.search("fact")) == 2
    now[0] += 120
    with pytest.raises(MemoryNotFound, match="expired"):
        await memory.get("agent:bot", "soon")
    assert [h.entry.key for h in await memory.search("fact")] == ["later"]
    assert await memory.expire() == 1
    assert [v.reason for v in await memory.history("agent:bot", "soon")] == [None, "expired"]
    assert await memory.expire() == 0


async def test_forget_deletes_by_filter_and_time(memory: AsyncMemory) -> None:
    for i in range(6):
        await memory.write("agent:bot", f"note {i}", key=f"n{i}", metadata={"kind": "a" if i % 2 else "b"})
    gone = await memory.forget("agent:bot", filters={"kind": "a"})
    assert sorted(gone) == ["n1", "n3", "n5"]
    assert sorted(h.entry.key for h in await memory.search("note", k=10)) == ["n0", "n2", "n4"]
    assert await memory.forget("agent:bot", keys=["n0"]) == ["n0"]
    assert await memory.forget("agent:bot", before=datetime(2000, 1, 1, tzinfo=UTC)) == []


async def test_near_duplicates_merge_instead_of_piling_up(memory: AsyncMemory) -> None:
    first = await memory.write("agent:bot", "Bob likes pizza and pasta for lunch.")
    same = await memory.write("agent:bot", "Bob likes pizza and pasta for lunch.")
    assert same.merged_into == first.key and same.version == 1  # exact repeat: nothing new written
    near = await memory.write("agent:bot", "Bob likes pizza and pasta for lunch!", metadata={"src": "chat"})
    assert near.merged_into == first.key and near.version == 2
    other = await memory.write("agent:bot", "Carol is allergic to peanuts.")
    assert other.merged_into is None and other.key != first.key
    assert len(await memory.search("pizza pasta lunch", k=10)) == 1


async def test_the_view_goes_on_when_the_server_drops_its_consumer(memory: AsyncMemory) -> None:
    # The feed's consumer is ephemeral: the server deletes it after a minute without a pull (seen
    # on a loaded machine while a large batch was being applied). Before, every later pull failed
    # ("ServiceUnavailableError; retrying") and the view never moved again.
    first = await memory.write("agent:bot", "before the consumer went", key="a")
    await memory.wait_for(first.seq)
    info = await memory.feed._sub.consumer_info()
    await memory.bus.js.delete_consumer(EVENTS_STREAM, info.name)
    later = await memory.write("agent:bot", "after the consumer went", key="b")
    await memory.wait_for(later.seq, timeout=10)
    assert (await memory.get("agent:bot", "b")).text == "after the consumer went"
    assert [h.entry.key for h in await memory.search("consumer went", k=5, mode="keyword")] == ["b", "a"]


async def test_two_clients_one_view_follower_sees_leader_writes(open_memory: Opener) -> None:
    leader = await open_memory(agent="a")
    follower = await open_memory(agent="b")
    assert leader.feed.leading and not follower.feed.leading
    written = await leader.write("global", "shared fact about the moon", key="moon")
    entry = await follower.get("global", "moon", after=written.seq)
    assert entry.text == "shared fact about the moon"
    await leader.close()  # the leader goes away: the follower takes over the view
    more = await follower.write("global", "another fact about mars", key="mars")
    assert (await follower.get("global", "mars")).seq == more.seq
    assert follower.feed.leading


def test_sync_api_round_trip(fresh_nats_server: NatsServer, home: Path) -> None:
    with Memory.connect(fresh_nats_server.url, agent="bot") as memory:
        written = memory.write("agent:bot", "synchronous memories work too", key="sync")
        assert memory.get("agent:bot", "sync").seq == written.seq
        assert memory.search("synchronous")[0].entry.key == "sync"
        assert "synchronous" in memory.context("synchronous", token_budget=100).text
        assert [v.version for v in memory.history("agent:bot", "sync")] == [1]
        memory.aio.embedder = HashEmbedder(32)
        done = memory.reembed("agent:bot")
        assert (done.count, done.embedder) == (1, "tether-hash-32")
        assert memory.search("synchronous", mode="semantic")[0].entry.key == "sync"


SCRIPT = textwrap.dedent("""
    import asyncio, sys
    import tether.memory

    async def main(step):
        memory = await tether.memory.connect(agent="bot")
        try:
            if step == "write":
                for i in range(50):
                    await memory.write("agent:bot", f"persisted fact number {i}", key=f"k{i}")
                await memory.write("agent:bot", "the final version", key="k0")
                print(memory.position)
            else:
                await memory.catch_up()
                entry = await memory.get("agent:bot", "k0")
                hits = await memory.search("persisted fact", k=100)
                print(entry.version, entry.text, len(hits))
        finally:
            await memory.close()

    asyncio.run(main(sys.argv[1]))
""")


def test_memory_persists_across_process_and_server_restarts(fresh_nats_server: NatsServer, home: Path,
                                                             tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "TETHER_HOME": str(home), "TETHER_NATS_URL": fresh_nats_server.url}

    def step(name: str) -> str:
        done = subprocess.run([sys.executable, str(script), name], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert int(step("write")) == 51
    assert step("read") == "2 the final version 49"  # k0 was rewritten; its old text no longer matches
    fresh_nats_server.stop()
    fresh_nats_server.start()
    assert step("read") == "2 the final version 49"  # view file reused, log intact
    for path in (home / "memory").glob("memory.v*.db*"):
        path.unlink()
    assert step("read") == "2 the final version 49"  # view rebuilt from the log


async def test_the_main_projector_can_feed_the_view(fresh_nats_server: NatsServer, home: Path) -> None:
    """A Projector hosting MemoryView leads; memory clients pointed at its directory follow it."""
    from tether.bus import connect
    from tether.memory import FileKeyStore, MemoryView
    from tether.projections import Projector

    from .conftest import settings_for

    settings = settings_for(home)
    bus = await connect(fresh_nats_server.url, home=home)
    projector = await Projector(bus, [MemoryView(FileKeyStore(settings.keyfile))], home / "views").start()
    memory = await AsyncMemory(bus, agent="bot", settings=settings, view_dir=home / "views").start()
    try:
        assert not memory.feed.leading
        written = await memory.write("agent:bot", "projected by the main projector", key="p")
        assert (await memory.get("agent:bot", "p")).seq == written.seq
        assert (await memory.search("projector"))[0].entry.key == "p"
    finally:
        await memory.close()
        await projector.stop()
        await bus.close()


async def test_reads_wait_for_someone_elses_position(open_memory: Opener) -> None:
    writer = await open_memory(agent="w", view_dir=None)
    reader = await open_memory(agent="r")
    written = await writer.write("global", "position passing works", key="pos")
    got = await asyncio.wait_for(reader.get("global", "pos", after=written.seq), 5)
    assert got.seq == written.seq


async def test_an_event_sealed_with_an_unknown_key_is_recorded_not_folded(memory: AsyncMemory) -> None:
    """Another keystore's event (say, another TETHER_HOME on the same NATS) cannot be read here:
    the view records it in _failed and goes on, rather than stop or guess."""
    import sqlite3

    from tether.schemas import Event

    foreign = Event.of(MemoryWritten(namespace="user:x", key="k", version=1, text="c2VhbGVk", key_id="user:x#9"),
                       agentid="elsewhere")
    receipt = await memory.bus.publish(foreign)
    written = await memory.write("agent:bot", "life goes on", key="after")
    assert written.seq is not None and receipt.stream_seq is not None and written.seq > receipt.stream_seq
    assert (await memory.get("agent:bot", "after")).text == "life goes on"
    db = sqlite3.connect(memory.feed.path)
    failed = db.execute("SELECT seq, error FROM _failed").fetchall()
    db.close()
    assert failed[0][0] == receipt.stream_seq and "MemoryKeyMissing" in failed[0][1]
