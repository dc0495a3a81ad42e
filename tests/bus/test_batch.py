"""Emitting a batch: header blocks from one template, byte for byte what one-by-one encoding
writes, and a Batch that says what became of each event (acked, in the outbox, refused)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tether.bus import EVENTS_STREAM, connect
from tether.bus._batch import encode_batch
from tether.bus._binding import encode_binary
from tether.bus._headers import HeaderBlock, header_block
from tether.schemas import Event, InvalidEvent, ToolCallCompleted, uuid7
from tether.testing import NatsServer, collect

pytestmark = [pytest.mark.anyio]


def payload(i: int, result: object = None) -> ToolCallCompleted:
    return ToolCallCompleted(call_id=f"c{i}", tool="search", result=i if result is None else result)


def one_by_one(event: Event) -> tuple[dict[str, str], bytes, bytes | None]:
    headers, body = encode_binary(event)
    headers["Nats-Msg-Id"] = event.id
    return headers, body, header_block(headers)


def test_templated_blocks_are_the_blocks_one_by_one_encoding_writes() -> None:
    shared = Event.of_many([payload(i) for i in range(5)], runid="run-1", agentid="bot")
    odd = [Event.of(payload(5), runid="run 2 with spaces", agentid="bot"),  # percent-encoded: no template
           Event.of(payload(6), agentid="other", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
           Event.of(payload(7), agentid="other", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                    extensions={"tenant": "t1"}),
           Event.of(payload(8), runid="run-1", agentid="bot")]
    events = [*shared, *odd, *Event.of_many([payload(9), payload(10)], runid="run-1", agentid="bot")]
    for event, (headers, body) in zip(events, encode_batch(events), strict=True):
        want_headers, want_body, want_block = one_by_one(event)
        assert headers == want_headers and list(headers) == list(want_headers)
        assert body == want_body
        assert isinstance(headers, HeaderBlock) and headers.block == want_block


def test_of_many_is_of_for_each_payload() -> None:
    events = Event.of_many([payload(i) for i in range(3)], source="urn:test", runid="r", agentid="a")
    single = Event.of(payload(0), source="urn:test", runid="r", agentid="a")
    assert len({e.id for e in events}) == 3 and [e.time for e in events] == sorted(e.time for e in events)
    for i, e in enumerate(events):
        assert e.model_dump(exclude={"id", "time", "data"}) == single.model_dump(exclude={"id", "time", "data"})
        assert e.data == payload(i)
        assert e == Event.model_construct(**{**e.__dict__})
    assert Event.of_many([]) == []
    with pytest.raises(InvalidEvent, match="must be a non-empty string"):
        Event.of_many([payload(0)], runid="")
    bad = ToolCallCompleted(call_id="c", tool="t", duration_ms=float("inf"))
    with pytest.raises(InvalidEvent, match="duration_ms: JSON has no NaN or Infinity"):
        Event.of_many([payload(0), bad])


@pytest.mark.nats
async def test_a_batch_says_what_became_of_each_event(fresh_nats_server: NatsServer, tether_home: Path) -> None:
    run = f"r-{uuid7()}"
    async with await connect(fresh_nats_server.url, ack_timeout_s=1.0) as bus:
        info = await bus.js.stream_info(EVENTS_STREAM)
        info.config.max_msg_size = 2000
        await bus.js.update_stream(info.config)
        events = Event.of_many([payload(i, "x" * 3000 if i == 2 else None) for i in range(6)], runid=run)
        batch = await (await bus.emit_batch(events)).wait(10)
        assert batch.settled and batch.acked == 5 and not batch.outboxed
        assert list(batch.refused) == [2] and "maximum" in batch.refused[2]
        stored = [r.event.id for r in await collect(bus) if r.event is not None and r.event.runid == run]
        assert stored == [e.id for i, e in enumerate(events) if i != 2]

        await asyncio.to_thread(fresh_nats_server.stop)
        later = Event.of_many([payload(i) for i in range(10, 14)], runid=run)
        kept = await (await bus.emit_batch(later)).wait(10)
        assert kept.acked == 0 and kept.outboxed == [0, 1, 2, 3] and not kept.refused
        await asyncio.to_thread(fresh_nats_server.start)
        await asyncio.wait_for(bus.drain(), 30)
        stored = [r.event.id for r in await collect(bus) if r.event is not None and r.event.runid == run]
        assert stored[-4:] == [e.id for e in later]
