"""PullFeed: the log in order from a position, nothing skipped without notice, against a real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tether.bus import EVENT_SUBJECTS, EVENTS_STREAM, Bus, FeedError, PullFeed, connect
from tether.schemas import Event, ToolCallCompleted
from tether.testing import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


def _event(i: int, run: str) -> Event:
    return Event.of(ToolCallCompleted(call_id=f"c{i}", tool="search", attempt=1, result={"i": i}),
                    runid=run, agentid="feeder")


async def _publish(bus: Bus, n: int, run: str) -> list[str]:
    events = [_event(i, run) for i in range(n)]
    for event in events:
        await bus.emit(event)
    await bus.flush()
    return [e.id for e in events]


async def _read_until(feed: PullFeed, last: int, timeout: float = 20.0) -> list[int]:
    seqs: list[int] = []
    async with asyncio.timeout(timeout):
        while not seqs or seqs[-1] < last:
            seqs += [m.seq for m in await feed.fetch(timeout=0.5)]
    return seqs


async def _head(bus: Bus) -> int:
    return int((await bus.js.stream_info(EVENTS_STREAM)).state.last_seq)


async def test_reads_from_a_position_in_order_with_time_and_pending(nats_server: NatsServer,
                                                                   tether_home: Path) -> None:
    bus = await connect(url=nats_server.url, home=tether_home)
    try:
        ids = await _publish(bus, 2_500, "feed-order")
        head = await _head(bus)
        start = head - 2_500 + 1
        feed = await PullFeed(bus.nc, bus.js, EVENTS_STREAM, EVENT_SUBJECTS, start_seq=start + 500,
                              batch=400).start()
        try:
            msgs = []
            async with asyncio.timeout(20):
                while not msgs or msgs[-1].seq < head:
                    msgs += await feed.fetch(timeout=0.5)
            assert [m.seq for m in msgs] == list(range(start + 500, head + 1))
            assert [(m.headers or {})["ce-id"] for m in msgs] == ids[500:]
            assert msgs[-1].pending == 0 and msgs[0].pending == head - msgs[0].seq
            assert all(m.time > 1.7e9 for m in msgs)
            assert feed.last_seq == head and feed.head_hint == head
            event = await bus.reader.read(msgs[0].headers, msgs[0].data)
            assert event.id == ids[500]
        finally:
            await feed.close()
        assert feed.name is not None
        names = [c.name async for c in _consumers(bus)]
        assert feed.name not in names  # an ephemeral feed removes its consumer
    finally:
        await bus.close()


async def _consumers(bus: Bus):  # type: ignore[no-untyped-def]
    for info in await bus.js.consumers_info(EVENTS_STREAM):
        yield info


async def test_waits_for_new_events_at_the_head(nats_server: NatsServer, tether_home: Path) -> None:
    bus = await connect(url=nats_server.url, home=tether_home)
    try:
        head = await _head(bus)
        feed = await PullFeed(bus.nc, bus.js, EVENTS_STREAM, EVENT_SUBJECTS, start_seq=head + 1).start()
        try:
            assert await feed.fetch(timeout=0.3) == []
            await _publish(bus, 3, "feed-tail")
            assert await _read_until(feed, head + 3) == [head + 1, head + 2, head + 3]
        finally:
            await feed.close()
    finally:
        await bus.close()


async def test_a_wait_ends_when_until_is_done_and_messages_still_come_first(nats_server: NatsServer,
                                                                             tether_home: Path) -> None:
    bus = await connect(url=nats_server.url, home=tether_home)
    try:
        head = await _head(bus)
        feed = await PullFeed(bus.nc, bus.js, EVENTS_STREAM, EVENT_SUBJECTS, start_seq=head + 1).start()
        loop = asyncio.get_running_loop()
        try:
            done: asyncio.Future[None] = loop.create_future()
            loop.call_later(0.05, done.set_result, None)
            started = loop.time()
            assert await feed.fetch(timeout=5, until=done) == []  # nothing came: back when done is
            assert loop.time() - started < 2
            assert await feed.fetch(timeout=5, until=done) == []  # done already: no wait at all
            never: asyncio.Future[None] = loop.create_future()
            await _publish(bus, 2, "feed-until")
            got = await feed.fetch(timeout=5, until=never)  # messages first: they end the wait
            assert [m.seq for m in got][:1] == [head + 1] and not never.done()
        finally:
            await feed.close()
    finally:
        await bus.close()


async def test_a_skipped_delivery_restarts_the_consumer_after_the_last_message_handed_out(
        nats_server: NatsServer, tether_home: Path) -> None:
    """A consumer sequence that jumps (deliveries lost with a connection) is never papered over."""
    bus = await connect(url=nats_server.url, home=tether_home)
    try:
        await _publish(bus, 300, "feed-gap")
        head = await _head(bus)
        feed = await PullFeed(bus.nc, bus.js, EVENTS_STREAM, EVENT_SUBJECTS, start_seq=head - 299,
                              batch=100).start()
        try:
            first = await feed.fetch(timeout=2)
            assert first and first[0].seq == head - 299
            last = first[-1]
            # What the server would send after losing a delivery: the next message with a
            # consumer sequence two ahead. The feed must not hand it out as if nothing happened.
            fake_reply = f"$JS.ACK.{EVENTS_STREAM}.{feed.name}.1.{last.seq + 2}.{len(first) + 2}.1.0".encode()
            feed._buf.clear()
            feed._on_message(b"tether.evt.x", fake_reply, b"{}", None)
            old = feed.name
            rest = await feed.fetch(timeout=2)
            assert rest == []  # nothing after the gap is handed out
            seqs = [m.seq for m in first] + await _read_until(feed, head)
            assert feed.restarts == 1 and feed.name != old
            assert seqs == list(range(head - 299, head + 1))  # every message once, in order
        finally:
            await feed.close()
    finally:
        await bus.close()


async def test_a_durable_feed_restarts_at_the_callers_position(nats_server: NatsServer, tether_home: Path) -> None:
    bus = await connect(url=nats_server.url, home=tether_home)
    try:
        await _publish(bus, 50, "feed-durable")
        head = await _head(bus)
        for start in (head - 49, head - 9):  # the second start is where the caller says it is
            feed = await PullFeed(bus.nc, bus.js, EVENTS_STREAM, EVENT_SUBJECTS, start_seq=start,
                                  durable="test-feed-durable").start()
            try:
                assert (await _read_until(feed, head))[0] == start
            finally:
                await feed.close()
            assert "test-feed-durable" in [c.name async for c in _consumers(bus)]
        await bus.js.delete_consumer(EVENTS_STREAM, "test-feed-durable")
    finally:
        await bus.close()


async def test_nats_restarted_mid_read_loses_nothing(fresh_nats_server: NatsServer, tether_home: Path) -> None:
    bus = await connect(url=fresh_nats_server.url, home=tether_home)
    try:
        await _publish(bus, 2_000, "feed-outage")
        head = await _head(bus)
        feed = await PullFeed(bus.nc, bus.js, EVENTS_STREAM, EVENT_SUBJECTS, start_seq=1, batch=200,
                              durable="test-feed-outage", expires=1.0).start()
        try:
            seqs = [m.seq for m in await feed.fetch(timeout=2)]
            await asyncio.to_thread(fresh_nats_server.stop)
            await asyncio.to_thread(fresh_nats_server.start)
            async with asyncio.timeout(60):
                while not seqs or seqs[-1] < head:
                    try:
                        seqs += [m.seq for m in await feed.fetch(timeout=0.5)]
                    except FeedError:  # the server may end requests while it comes back
                        await asyncio.sleep(0.2)
            assert seqs == list(range(1, head + 1))
        finally:
            await feed.close(delete=True)
    finally:
        await bus.close()


def test_it_needs_tethers_client() -> None:
    with pytest.raises(TypeError, match="tether's NATS client"):
        PullFeed(object(), object(), EVENTS_STREAM, EVENT_SUBJECTS)  # type: ignore[arg-type]



async def test_a_consumer_deleted_under_the_feed_is_made_again_where_it_stopped(nats_server: NatsServer,
                                                                               tether_home: Path) -> None:
    """The server ends the pull requests with 409 Consumer Deleted: the feed makes the consumer again
    after its last message and reads on (it raised FeedError on every fetch from then on)."""
    bus = await connect(url=nats_server.url, home=tether_home)
    try:
        await _publish(bus, 10, "feed-deleted")
        head = await _head(bus)
        feed = await PullFeed(bus.nc, bus.js, EVENTS_STREAM, EVENT_SUBJECTS, start_seq=head - 9).start()
        try:
            assert (await _read_until(feed, head))[-1] == head
            await bus.js.delete_consumer(EVENTS_STREAM, feed.name)
            await _publish(bus, 10, "feed-deleted")
            assert await _read_until(feed, head + 10) == list(range(head + 1, head + 11))
            assert feed.restarts == 1
        finally:
            await feed.close()
    finally:
        await bus.close()


async def test_deliveries_lost_with_nothing_after_them_are_read_again(nats_server: NatsServer,
                                                                      tether_home: Path) -> None:
    """Messages the consumer delivered that never reached the feed, with no later delivery to show the
    jump (a cluster's consumer leader killed as it sent them, then no new event): the feed asks the
    consumer how far it delivered once it has been idle for an expiry, and reads them again. Before,
    it waited forever with the views behind the log and nothing said."""
    bus = await connect(url=nats_server.url, home=tether_home)
    try:
        await _publish(bus, 5, "feed-stolen")
        head = await _head(bus)
        feed = await PullFeed(bus.nc, bus.js, EVENTS_STREAM, EVENT_SUBJECTS, start_seq=head - 4,
                              expires=1.0).start()
        try:
            assert (await _read_until(feed, head))[-1] == head
            # the feed's own pull requests expire (the feed asks again only when fetched): wait until the
            # server holds none, rather than for a fixed time a loaded machine can overrun
            async with asyncio.timeout(15):
                while (await bus.js.consumer_info(EVENTS_STREAM, feed.name or "")).num_waiting:  # noqa: ASYNC110 - a server state
                    await asyncio.sleep(0.1)
            # Another requester takes the next three deliveries: the feed never sees them.
            stolen = bus.nc.new_inbox()
            sub = await bus.nc.subscribe(stolen)
            await _publish(bus, 3, "feed-stolen")
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.{feed.name}"
            await bus.nc.publish(subject, b'{"batch": 3, "no_wait": true}', reply=stolen)
            got = [await sub.next_msg(timeout=5) for _ in range(3)]
            assert len(got) == 3
            await sub.unsubscribe()
            assert await _read_until(feed, head + 3, timeout=15) == [head + 1, head + 2, head + 3]
            assert feed.restarts == 1
        finally:
            await feed.close()
    finally:
        await bus.close()
