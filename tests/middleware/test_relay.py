"""The relay protocol of durable streams, both ends on a real nats-server: order, gaps,
attempts that cannot be spliced, silence, heartbeats and cancellation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.bus import Bus, connect
from tether.middleware._relay import RelayBroken, RelayListener, _Relay, relay_subject
from tether.middleware._work import RelaySpec, WorkItem
from tether.schemas import uuid7
from tether.testing import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


@pytest.fixture
async def bus(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Bus]:
    async with await connect(nats_server.url, home=tmp_path / "home") as connected:
        yield connected


def spec(heartbeat_s: float = 0.1) -> RelaySpec:
    return RelaySpec(subject=relay_subject(uuid7()), heartbeat_s=heartbeat_s)


async def until(condition: object, what: str) -> None:
    for _ in range(500):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_chunks_arrive_in_order_then_the_end(bus: Bus) -> None:
    s = spec()
    listener = await RelayListener.open(bus.nc, s, idle_timeout_s=10)
    relay = _Relay(bus.nc, s, attempt=2)
    await relay.start()
    try:
        await relay.chunk(b"data: 1\n\n", status=200, content_type="text/event-stream; charset=utf-8")
        for n in range(2, 50):
            await relay.chunk(f"data: {n}\n\n".encode())
        await asyncio.sleep(0.35)  # a few heartbeats: answered, so the worker goes on
        await relay.end()
        assert await listener.started(5) is None
        assert (listener.status, listener.content_type, listener.attempt) == (
            200, "text/event-stream; charset=utf-8", "2")
        got = []
        while (chunk := await listener.next()) is not None:
            got.append(chunk)
    finally:
        await relay.close()
        await listener.close()
    assert got == [f"data: {n}\n\n".encode() for n in range(1, 50)]
    assert relay.cancelled is None, "a caller that answers its heartbeats is not gone"


async def test_the_final_reply_ends_a_call_that_never_streamed(bus: Bus) -> None:
    s = spec()
    listener = await RelayListener.open(bus.nc, s, idle_timeout_s=10)
    await bus.nc.publish(s.subject, b'{"call_id": "c", "state": "failed", "error": {"type": "RateLimitError"}}')
    assert await listener.started(5) == {"call_id": "c", "state": "failed", "error": {"type": "RateLimitError"}}
    await listener.close()


@pytest.mark.parametrize("case", ["skipped chunk", "heartbeat ahead", "other attempt"])
async def test_a_stream_that_cannot_be_trusted_is_cut(bus: Bus, case: str) -> None:
    s = spec(heartbeat_s=30)
    listener = await RelayListener.open(bus.nc, s, idle_timeout_s=10)
    relay = _Relay(bus.nc, s, attempt=1)
    await relay.chunk(b"data: 1\n\n", status=200)
    if case == "skipped chunk":
        relay.seq += 1  # chunk 2 is "lost"
        await relay.chunk(b"data: 3\n\n")
    elif case == "heartbeat ahead":
        relay.seq += 1
        await bus.nc.publish(s.subject, b"", headers=relay._headers("heartbeat"))
    else:
        other = _Relay(bus.nc, s, attempt=2)
        await other.chunk(b"data: 1\n\n", status=200)
    assert await listener.started(5) is None
    assert await listener.next() == b"data: 1\n\n"
    with pytest.raises(RelayBroken) as info:
        await listener.next()
    assert info.value.code == ("relay_restarted" if case == "other attempt" else "relay_gap")
    assert not info.value.from_worker
    await listener.close()


async def test_silence_is_a_clear_timeout(bus: Bus) -> None:
    s = spec()
    listener = await RelayListener.open(bus.nc, s, idle_timeout_s=0.3)
    relay = _Relay(bus.nc, s, attempt=1)
    await relay.chunk(b"data: 1\n\n", status=200)
    assert await listener.started(5) is None
    assert await listener.next() == b"data: 1\n\n"
    with pytest.raises(RelayBroken, match="no word from the worker") as info:
        await listener.next()
    assert info.value.code == "relay_timeout"
    await listener.close()


async def test_the_workers_error_reaches_the_caller(bus: Bus) -> None:
    from tether.middleware import Failure

    s = spec()
    listener = await RelayListener.open(bus.nc, s, idle_timeout_s=10)
    relay = _Relay(bus.nc, s, attempt=1)
    await relay.chunk(b"data: 1\n\n", status=200)
    await relay.error(Failure(kind="connection", error_type="APIConnectionError", message="reset by peer"))
    assert await listener.started(5) is None
    await listener.next()
    with pytest.raises(RelayBroken, match="reset by peer") as info:
        await listener.next()
    assert info.value.from_worker and info.value.error_type == "APIConnectionError"
    await listener.close()


async def test_cancel_reaches_the_worker(bus: Bus) -> None:
    s = spec(heartbeat_s=30)
    listener = await RelayListener.open(bus.nc, s, idle_timeout_s=10)
    relay = _Relay(bus.nc, s, attempt=1)
    stopped: list[bool] = []
    relay.on_cancel = lambda: stopped.append(True)
    await relay.start()
    try:
        await listener.cancel("client_closed", "the caller closed the stream")
        await until(lambda: relay.cancelled is not None, "the cancel message")
    finally:
        await relay.close()
    assert relay.cancelled == ("client_closed", "the caller closed the stream") and stopped == [True]


async def test_a_caller_that_went_away_is_noticed_by_its_heartbeats(bus: Bus) -> None:
    s = spec(heartbeat_s=0.1)
    listener = await RelayListener.open(bus.nc, s, idle_timeout_s=10)
    relay = _Relay(bus.nc, s, attempt=1)
    await relay.start()
    try:
        await asyncio.sleep(0.35)
        assert relay.cancelled is None
        await listener.close()  # gone without a word (its process died, say)
        await until(lambda: relay.cancelled is not None, "no responders to a heartbeat")
    finally:
        await relay.close()
    assert relay.cancelled is not None and relay.cancelled[0] == "client_gone"


def test_work_items_validate_the_relay() -> None:
    item = WorkItem(call_id="c1", kind="llm", provider="p", model="m", relay=RelaySpec(subject="tether.stream.c1"))
    assert WorkItem.model_validate_json(item.model_dump_json()) == item
    for bad in ("", "a..b", "tether.stream.*", "tether.>", "has space"):
        with pytest.raises(ValueError):
            RelaySpec(subject=bad)
    with pytest.raises(ValueError):
        RelaySpec(subject="x", heartbeat_s=0)


def test_a_work_item_without_a_relay_leaves_it_out_of_its_json() -> None:
    plain = WorkItem(call_id="c1", kind="llm", provider="p", model="m")
    streamed = plain.model_copy(update={"relay": RelaySpec(subject="tether.stream.c1")})
    assert "relay" not in plain.model_dump_json() and "relay" not in plain.model_dump()
    assert json.loads(streamed.model_dump_json())["relay"]["subject"] == "tether.stream.c1"
    assert WorkItem.model_validate_json(plain.model_dump_json()) == plain
