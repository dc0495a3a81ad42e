"""A ``PullFeed`` (what the projector reads the log with) through a rolling restart of a cluster:
the node leading its consumer stops (SIGTERM), the server ends the pending pull requests with
``409 Server Shutdown`` (or ``Leadership Change``), and the feed asks the new leader instead of
failing. It used to raise ``FeedError`` there, and the projector stopped folding."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

from tether.bus import EVENT_SUBJECTS, EVENTS_STREAM, PullFeed, connect
from tether.schemas import Event, RunStarted
from tether.testing import NatsCluster

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def test_a_feed_reads_on_through_a_rolling_restart(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    async with await connect(nats_cluster.url, home=tmp_path / "pub") as pub, \
            await connect(nats_cluster.url, home=tmp_path / "read", provision=False) as reader:
        first = (await pub.js.stream_info(EVENTS_STREAM)).state.last_seq + 1
        feed = await PullFeed(reader.nc, reader.js, EVENTS_STREAM, EVENT_SUBJECTS, start_seq=first,
                              durable="feed-failover").start()
        seen: list[int] = []
        stop = asyncio.Event()

        async def publish() -> None:
            i = 0
            while not stop.is_set():
                await pub.publish(Event.of(RunStarted(), runid=f"roll-{i}", agentid="roll"))
                i += 1
                await asyncio.sleep(0.01)

        async def read() -> None:
            while True:
                seen.extend(m.seq for m in await feed.fetch(0.5))

        publishing, reading = asyncio.create_task(publish()), asyncio.create_task(read())
        try:
            with anyio.fail_after(90):
                await asyncio.sleep(1)
                info = await reader.js.consumer_info(EVENTS_STREAM, "feed-failover")
                assert info.cluster is not None and info.config.num_replicas in (0, 3)
                for node in sorted(nats_cluster.nodes, key=lambda n: n.name != info.cluster.leader):
                    await asyncio.to_thread(nats_cluster.stop_node, node.name)  # the consumer's leader first
                    await asyncio.sleep(1)
                    await asyncio.to_thread(nats_cluster.start_node, node.name)
                    assert not reading.done(), reading.exception()
                stop.set()
                await publishing
                await pub.drain()
                head = (await pub.js.stream_info(EVENTS_STREAM)).state.last_seq
                while (not seen or seen[-1] < head) and not reading.done():  # noqa: ASYNC110 - polling a task
                    await asyncio.sleep(0.1)
        finally:
            stop.set()
            reading.cancel()
            await feed.close(delete=True)
        assert seen == list(range(first, head + 1)), "every message once, in order"
