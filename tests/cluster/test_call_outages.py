"""Durable calls through the outages a cluster failover causes, on one server for speed: the work
item published while NATS is away, and the worker's reply lost with the caller's connection."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anyio
import pytest

from tether.bus import connect
from tether.middleware import DurableCalls, Executor, ProviderConfig
from tether.testing import FakeProvider, NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

BODY = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


async def test_a_call_submitted_while_nats_is_away_completes_once_it_is_back(
        fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    """The work item is published again (same message id) until acked: once NATS is back the call
    runs. It used to raise ``OutboundBufferLimitError`` out of ``calls.llm``."""
    url = fresh_nats_server.url
    with anyio.fail_after(60):
        async with FakeProvider(seed=1) as fake, await connect(url, home=tmp_path / "a") as caller_bus, \
                await connect(url, home=tmp_path / "w") as worker_bus, \
                Executor(worker_bus, providers={"fake": ProviderConfig("fake", "openai", fake.url)}), \
                DurableCalls(caller_bus, deadline_s=30) as calls:
            assert (await calls.llm("fake", "m", BODY)).response  # all up
            fresh_nats_server.stop()
            pending = asyncio.ensure_future(calls.llm("fake", "m", BODY))
            await asyncio.sleep(1.5)
            assert not pending.done(), pending
            fresh_nats_server.start()
            result = await pending
            assert result.response and result.event_seq is not None


async def test_a_reply_lost_with_the_connection_is_read_from_the_call_record(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """The worker's reply never arrives (here: the caller's reply subscription is gone, as a
    reply is gone that came while its connection was down): the caller reads the outcome from
    the call's KV record within seconds instead of waiting out the deadline (60 s here)."""
    url = nats_server.url
    with anyio.fail_after(30):
        async with FakeProvider(seed=1) as fake, await connect(url, home=tmp_path / "a") as caller_bus, \
                await connect(url, home=tmp_path / "w") as worker_bus, \
                Executor(worker_bus, providers={"fake": ProviderConfig("fake", "openai", fake.url)}), \
                DurableCalls(caller_bus, deadline_s=60) as calls:
            await calls._sub.unsubscribe()
            started = time.monotonic()
            result = await calls.llm("fake", "m", BODY)
            took = time.monotonic() - started
    assert result.response and result.event_seq is not None
    assert took < 12, took
