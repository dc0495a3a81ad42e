"""The publisher against a real nats-server: dedupe, claim checks, bad input, outages, outbox."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import nats
import pytest

from tether.bus import (
    EVENTS_STREAM,
    Bus,
    OutboxFull,
    PayloadTooLarge,
    PublishRejected,
    Receipt,
    connect,
    encode_structured,
    set_aside,
)
from tether.schemas import Event, EventError, InvalidEvent, RunStarted, ToolCallCompleted, uuid7
from tether.testing import NatsServer, collect

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


def tool_event(run: str, i: int, *, result: object = None, agent: str = "bot") -> Event:
    payload = ToolCallCompleted(call_id=f"{run}-{i}", tool="search",
                                result=result if result is not None else i)
    return Event.of(payload, runid=run, agentid=agent)


async def events_of(bus: Bus, run: str) -> list[Event]:
    from tether.bus import event_filter

    return [r.event for r in await collect(bus, event_filter(run=run)) if r.event is not None]


def assert_exactly_once_in_order(events: list[Event], expected: dict[str, list[str]]) -> None:
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), "an event is in the stream twice"
    by_run: dict[str, list[str]] = defaultdict(list)
    for e in events:
        by_run[e.runid or ""].append(e.id)
    assert dict(by_run) == expected


async def test_publish_acks_and_dedupes_by_event_id(nats_server: NatsServer, tether_home: Path) -> None:
    run = f"r-{uuid7()}"
    async with await connect(nats_server.url) as bus:
        event = tool_event(run, 0)
        first = await bus.publish(event)
        again = await bus.publish(event)
        assert first.stream_seq is not None and not first.duplicate and not first.outboxed
        assert again.duplicate and again.stream_seq == first.stream_seq
        assert [e.id for e in await events_of(bus, run)] == [event.id]


async def test_emit_then_flush_keeps_order(nats_server: NatsServer, tether_home: Path) -> None:
    run = f"r-{uuid7()}"
    async with await connect(nats_server.url) as bus:
        sent = [tool_event(run, i) for i in range(500)]
        for e in sent:
            await bus.emit(e)
        await bus.flush()
        assert bus.publisher.in_flight() == 0
        got = await events_of(bus, run)
        assert [e.id for e in got] == [e.id for e in sent]
        assert got[7] == sent[7]


async def test_invalid_payload_is_refused_at_publish(nats_server: NatsServer, tether_home: Path) -> None:
    run = f"r-{uuid7()}"
    async with await connect(nats_server.url) as bus:
        with pytest.raises(InvalidEvent, match=r"call_id"):
            await bus.publish(Event.create("tether.tool.call.completed", {"tool": "x"}, runid=run))
        with pytest.raises(EventError, match="unknown event type"):
            await bus.publish(Event.create("tether.tool.call.exploded", {}, runid=run))
        with pytest.raises(EventError, match=r"Event\.of"):
            await bus.publish({"type": "tether.run.started"})  # type: ignore[arg-type]
        assert await events_of(bus, run) == []


async def test_large_payload_round_trips_through_the_object_store(nats_server: NatsServer,
                                                                  tether_home: Path) -> None:
    run = f"r-{uuid7()}"
    async with await connect(nats_server.url) as bus:
        medium = tool_event(run, 0, result="é" * 200_000)  # ~400 KB of JSON, above 256 KiB
        huge = tool_event(run, 1, result=["x" * 1000] * 3000)  # ~3 MB, above NATS max_payload
        small = tool_event(run, 2)
        receipts = [await bus.publish(e) for e in (medium, huge, small)]
        assert not any(r.outboxed for r in receipts)
        assert bus.publisher.stats.claim_checks == 2
        raw = await bus.js.get_msg(EVENTS_STREAM, receipts[0].stream_seq)
        assert raw.data in (b"", None) and raw.headers["ce-dataref"].startswith("nats-obj://")
        got = await events_of(bus, run)
        assert [e.id for e in got] == [medium.id, huge.id, small.id]
        assert got[0].data == medium.data and got[0].dataref is not None
        assert got[1].data == huge.data
        assert got[2].dataref is None


async def test_payload_above_the_hard_limit_is_refused(nats_server: NatsServer, tether_home: Path) -> None:
    async with await connect(nats_server.url, max_event_bytes=100_000) as bus:
        with pytest.raises(PayloadTooLarge, match="max_event_bytes"):
            await bus.publish(tool_event("r", 0, result="x" * 200_000))


async def test_messages_that_are_not_events_are_reported_not_fatal(nats_server: NatsServer,
                                                                   tether_home: Path) -> None:
    run = f"r-{uuid7()}"
    subject = f"tether.evt.bot.{run}.tool.completed.search"
    async with await connect(nats_server.url) as bus:
        await bus.publish(tool_event(run, 0))
        await bus.js.publish(subject, b"\xff not json at all")
        await bus.js.publish(subject, b'{"x": 1}', headers={"ce-specversion": "1.0", "ce-id": "1",
                                                            "ce-source": "s", "ce-type": "tether.nope"})
        bogus = tool_event(run, 9)
        headers, body = encode_structured(bogus)
        await bus.js.publish(subject, body.replace(b'"search"', b"42"), headers=headers)
        await bus.publish(tool_event(run, 1))
        from tether.bus import event_filter

        results = await collect(bus, event_filter(run=run))
        assert [r.ok for r in results] == [True, False, False, False, True]
        assert "not a CloudEvent" in str(results[1].error)
        assert "unknown event type 'tether.nope'" in str(results[2].error)
        assert "tool" in str(results[3].error)
        assert all(r.stream_seq for r in results)


async def test_refused_for_good_is_an_error_and_kept(fresh_nats_server: NatsServer,
                                                     tether_home: Path) -> None:
    async with await connect(fresh_nats_server.url) as bus:
        info = await bus.js.stream_info(EVENTS_STREAM)
        info.config.max_msg_size = 2000
        await bus.js.update_stream(info.config)
        with pytest.raises(PublishRejected, match="refused by NATS"):
            await bus.publish(tool_event("r", 0, result="x" * 5000))
        assert bus.publisher.stats.rejected == 1
        st = await bus.status()
        assert st["outbox"]["rejected"] == 1
        # The publisher is not stuck: the next event goes straight through.
        assert not (await bus.publish(tool_event("r", 1))).outboxed


async def test_nats_stopped_mid_stream_loses_nothing(fresh_nats_server: NatsServer,
                                                     tether_home: Path) -> None:
    """1,000 events while NATS goes down and comes back: all stored once, in order per run."""
    runs = [f"r{k}-{uuid7()}" for k in range(4)]
    expected: dict[str, list[str]] = defaultdict(list)
    async with await connect(fresh_nats_server.url, ack_timeout_s=1.0) as bus:
        for i in range(1000):
            if i == 250:
                await asyncio.to_thread(fresh_nats_server.stop)
            if i == 750:
                await asyncio.to_thread(fresh_nats_server.start)
            run = runs[i % 4]
            event = tool_event(run, i)
            expected[run].append(event.id)
            await bus.emit(event)
            if i % 50 == 0:
                await asyncio.sleep(0.01)  # let the client notice the outage while we publish
        await bus.flush()
        assert bus.publisher.stats.outboxed > 0, "the outage should have sent events to the outbox"
        await asyncio.wait_for(bus.publisher.drain(), 30)
        assert not bus.publisher.degraded
        stored = [r.event for r in await collect(bus) if r.event is not None]
        assert len(stored) == 1000
        assert_exactly_once_in_order(stored, dict(expected))


async def test_paused_server_backpressure_and_ack_timeout(fresh_nats_server: NatsServer,
                                                          tether_home: Path) -> None:
    """A server that stops answering: emit never blocks past its bound; nothing is lost."""
    run = f"r-{uuid7()}"
    pid = fresh_nats_server.pid
    assert pid is not None
    async with await connect(fresh_nats_server.url, max_pending=5, max_block_s=0.2,
                             ack_timeout_s=0.5) as bus:
        os.kill(pid, signal.SIGSTOP)
        try:
            sent = [tool_event(run, i) for i in range(20)]
            started = time.monotonic()
            for e in sent:
                await bus.emit(e)
            elapsed = time.monotonic() - started
            receipt = await bus.publish(tool_event(run, 20))
            waited = time.monotonic() - started - elapsed
            sent.append(tool_event(run, 20).model_copy(update={"id": receipt.id}))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert elapsed < 1.0, f"emit blocked {elapsed:.2f}s; bound is max_block_s=0.2"
        assert receipt.outboxed and waited < 1.5
        assert bus.publisher.degraded
        await asyncio.wait_for(bus.publisher.drain(), 30)
        got = await events_of(bus, run)
        assert [e.id for e in got] == [e.id for e in sent]


async def test_outbox_full_says_so_and_keeps_what_it_accepted(fresh_nats_server: NatsServer,
                                                              tether_home: Path) -> None:
    run = f"r-{uuid7()}"
    async with await connect(fresh_nats_server.url, outbox_max_bytes=3000) as bus:
        await asyncio.to_thread(fresh_nats_server.stop)
        accepted = []
        with pytest.raises(OutboxFull, match="NOT accepted"):
            for i in range(100):
                event = tool_event(run, i)
                receipt = await bus.publish(event)
                assert receipt.outboxed
                accepted.append(event.id)
        assert 0 < len(accepted) < 100
        await asyncio.to_thread(fresh_nats_server.start)
        await asyncio.wait_for(bus.publisher.drain(), 30)
        assert [e.id for e in await events_of(bus, run)] == accepted


CHILD = textwrap.dedent("""
    import asyncio, sys
    from tether.bus import connect
    from tether.schemas import Event, ToolCallCompleted

    async def main():
        bus = await connect(sys.argv[1], home=sys.argv[2])
        print("connected", flush=True)
        sys.stdin.readline()  # the parent stops NATS, then tells us to go on
        for _ in range(200):
            if not bus.nc.is_connected:
                break
            await asyncio.sleep(0.02)
        for i in range(50):
            ev = Event.of(ToolCallCompleted(call_id=str(i), tool="t"), runid=sys.argv[3])
            receipt = await bus.publish(ev)
            assert receipt.outboxed, receipt
        print("queued", flush=True)
        await asyncio.sleep(60)  # killed before this ends

    asyncio.run(main())
""")


async def test_killed_process_outbox_is_flushed_on_next_start(fresh_nats_server: NatsServer,
                                                              tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = f"r-{uuid7()}"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, fresh_nats_server.url, str(home), run,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"connected"
        await asyncio.to_thread(fresh_nats_server.stop)
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"queued"
    finally:
        child.kill()
        await child.wait()
    assert list((home / "outbox").glob("*.db")), "the killed process should have left an outbox"
    await asyncio.to_thread(fresh_nats_server.start)
    async with await connect(fresh_nats_server.url, home=home) as bus:
        await asyncio.wait_for(bus.publisher.drain(), 30)
        got = await events_of(bus, run)
        assert [e.data.call_id for e in got] == [str(i) for i in range(50)]  # type: ignore[attr-defined]
    assert not list((home / "outbox").glob("*.db")), "a flushed outbox is removed"


async def test_status_reports_streams_and_outbox(nats_server: NatsServer, tether_home: Path) -> None:
    async with await connect(nats_server.url) as bus:
        await bus.publish(Event.of(RunStarted()))
        st = await bus.status()
    names = [s["name"] for s in st["streams"]]
    assert names == ["EVENTS", "WORK", "DLQ"]
    assert st["streams"][0]["messages"] >= 1
    assert st["server"]["jetstream"] is True
    assert st["outbox"] == {"files": 0, "queued": 0, "rejected": 0, "set_aside": []}


async def test_raw_nats_client_sees_binary_mode_headers(nats_server: NatsServer, tether_home: Path) -> None:
    """What non-Python consumers get: ce-* headers, percent-encoded, and JSON data."""
    run = f"run with spaces é {uuid7()}"
    async with await connect(nats_server.url) as bus:
        event = tool_event(run, 0, agent="agent.with.dots")
        await bus.publish(event)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    from tether.bus import event_subject

    msg = await js.get_last_msg(EVENTS_STREAM, event_subject(event))
    await nc.close()
    assert msg.headers["ce-type"] == "tether.tool.call.completed"
    assert msg.headers["ce-runid"].startswith("run%20with%20spaces%20%C3%A9%20")
    assert msg.headers["ce-agentid"] == "agent.with.dots"
    assert msg.headers["Nats-Msg-Id"] == event.id
    assert msg.subject.split(".")[2] == "agent%2Ewith%2Edots"


def wait_stopped(pid: int) -> None:
    """Until the kernel has stopped ``pid`` (SIGSTOP is delivered asynchronously)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} did not stop")


async def test_order_holds_for_events_published_while_the_client_notices_an_outage(
        fresh_nats_server: NatsServer, tether_home: Path) -> None:
    """nats-py marks the connection down before tether's disconnect callback runs: an event
    published in that gap must still be stored after the older events that were in flight."""
    run = f"r-{uuid7()}"
    pid = fresh_nats_server.pid
    assert pid is not None
    async with await connect(fresh_nats_server.url, ack_timeout_s=30.0) as bus:
        sent = [tool_event(run, i) for i in range(10)]
        for e in sent:
            await bus.emit(e)
        await bus.flush()
        os.kill(pid, signal.SIGSTOP)  # the server reads nothing more: what follows stays unacked
        wait_stopped(pid)
        for i in range(10, 20):
            sent.append(tool_event(run, i))
            await bus.emit(sent[-1])
        deadline = time.monotonic() + 20
        while bus.publisher.in_flight() < 10 and time.monotonic() < deadline:  # noqa: ASYNC110 - the publisher's task sends them
            await asyncio.sleep(0.01)
        stats = bus.publisher.stats
        assert bus.publisher.in_flight() == 10, (stats, bus.publisher.degraded)
        os.kill(pid, signal.SIGKILL)  # the connection drops; the loop runs on only below
        deadline = time.monotonic() + 10
        # One loop turn at a time, to stop right after nats-py marks the connection down and
        # before it runs tether's disconnect callback: no event to wait on exists for that.
        while bus.nc.is_connected and time.monotonic() < deadline:  # noqa: ASYNC110 - see above
            await asyncio.sleep(0)
        assert not bus.nc.is_connected
        for i in range(20, 25):  # in the gap: before the disconnect callback has run
            sent.append(tool_event(run, i))
            await bus.emit(sent[-1])
        sent.append(tool_event(run, 25))
        assert (await bus.publish(sent[-1])).outboxed
        await bus.flush()
        await asyncio.to_thread(fresh_nats_server.kill)  # reaps it
        await asyncio.to_thread(fresh_nats_server.start)
        await asyncio.wait_for(bus.publisher.drain(), 30)
        got = await events_of(bus, run)
    assert [e.data.result for e in got] == list(range(26))  # type: ignore[attr-defined]
    assert [e.id for e in got] == [e.id for e in sent]


async def test_emit_writes_what_it_buffered_as_nats_py_would(nats_server: NatsServer, tether_home: Path) -> None:
    # emit() never waits, and tether connects with pending_size=0, which also turns off nats-py's
    # own write at 2 MiB buffered: without yielding, a burst of emits reached the socket only
    # when max_pending was hit, the server idle meanwhile (a third of R3 throughput lost).
    bus = await connect(url=nats_server.url, home=tether_home)
    try:
        run = f"run-{uuid7()}"
        most = 0
        for i in range(4_000):  # about 2.8 MB of messages, below max_pending: emit never blocks
            await bus.emit(tool_event(run, i, result={"pad": "x" * 400}))
            most = max(most, bus.nc.pending_data_size)
        assert most <= 2 * 1024 * 1024 + 2_000, f"{most:,} bytes waited in nats-py's buffer"
        assert bus.publisher.write_at_bytes == 2 * 1024 * 1024
        await bus.flush()
        assert len(await events_of(bus, run)) == 4_000
    finally:
        await bus.close()


async def test_a_duplicate_still_in_process_is_sent_again_not_rejected(fresh_nats_server: NatsServer,
                                                                      tmp_path: Path) -> None:
    """JetStream answers 409 "duplicate message id is in process" (err_code 10158) while a message
    with the same id is being stored (on a cluster: two workers with the same call, or an outbox
    flush racing a late ack): the event is on its way in, not refused. It used to raise
    ``PublishRejected`` and land in the rejected table (the cluster chaos test saw a worker's
    traceback); it goes to the outbox and is sent again, and then JetStream's dedupe answers.
    Here a core subscriber answers for JetStream (no stream holds the subject)."""
    async with await connect(fresh_nats_server.url, home=tmp_path, provision=False) as bus:
        answered: list[str] = []

        async def jetstream(msg: nats.aio.msg.Msg) -> None:
            answered.append((msg.headers or {}).get("Nats-Msg-Id", ""))
            body = {"stream": EVENTS_STREAM, "seq": 7, "duplicate": True} if len(answered) > 1 else {
                "error": {"code": 409, "err_code": 10158, "description": "duplicate message id is in process"}}
            await msg.respond(json.dumps(body).encode())

        await bus.nc.subscribe("tether.evt.>", cb=jetstream)
        event = tool_event(f"r-{uuid7()}", 0)
        receipt = await bus.publish(event)
        await bus.drain(timeout=10)
    assert receipt.outboxed and answered == [event.id, event.id]
    assert set_aside(tmp_path / "outbox") == []


async def test_publish_until_acked_sends_again_a_duplicate_still_in_process(fresh_nats_server: NatsServer,
                                                                           tmp_path: Path) -> None:
    """The same answer to a work item (``DurableCalls.submit``): tried again, not raised."""
    from tether.bus import publish_until_acked

    async with await connect(fresh_nats_server.url, home=tmp_path, provision=False) as bus:
        answered: list[str] = []

        async def jetstream(msg: nats.aio.msg.Msg) -> None:
            answered.append((msg.headers or {}).get("Nats-Msg-Id", ""))
            body = {"stream": "WORK", "seq": 3, "duplicate": True} if len(answered) > 1 else {
                "error": {"code": 409, "err_code": 10158, "description": "duplicate message id is in process"}}
            await msg.respond(json.dumps(body).encode())

        await bus.nc.subscribe("tether.work.>", cb=jetstream)
        ack = await publish_until_acked(bus.js, "tether.work.llm.x", b"{}", msg_id="call-1", deadline=time.time() + 10)
    assert ack.seq == 3 and answered == ["call-1", "call-1"]


async def test_acks_are_read_as_the_parser_hands_them_over(nats_server: NatsServer, tether_home: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ack reaches the publisher from nats-py's protocol parser (tether's client's raw sink):
    no ``Msg``, queue entry and task step per event on the bus's loop (its subscription callback,
    kept for other clients, is never called); emitted and published events are acked all the same."""
    from tether.bus import Publisher

    through_nats_py: list[object] = []

    async def on_reply(self: Publisher, msg: object) -> None:
        through_nats_py.append(msg)

    monkeypatch.setattr(Publisher, "_on_reply", on_reply)
    run = f"r-{uuid7()}"
    async with await connect(nats_server.url, home=tether_home) as bus:
        events = [tool_event(run, i) for i in range(6)]
        for event in events[:5]:
            await bus.emit(event)
        receipt = await bus.publish(events[5])
        await bus.flush()
        assert receipt.stream_seq is not None and not receipt.outboxed
        assert bus.publisher.stats.acked == 6 and bus.publisher.in_flight() == 0
        assert [e.id for e in await events_of(bus, run)] == [e.id for e in events]
    assert through_nats_py == []


async def test_no_responders_through_the_raw_sink_sends_events_to_the_outbox(fresh_nats_server: NatsServer,
                                                                             tmp_path: Path) -> None:
    """A 503 status reply (no stream holds the subject: not provisioned yet) is read from the
    header block the parser hands over: a transient failure, so the event waits in the outbox."""
    bus = await connect(fresh_nats_server.url, home=tmp_path, provision=False)
    try:
        receipt = await bus.publish(tool_event(f"r-{uuid7()}", 0))
        assert receipt.outboxed and bus.publisher.degraded
        assert "503" in (bus.publisher.stats.last_error or "")
    finally:
        await bus.close(timeout=0.2)  # the outbox cannot drain (no stream): it stays for the next start


async def test_send_now_hands_an_event_to_nats_without_awaiting(nats_server: NatsServer, tether_home: Path) -> None:
    """``send_now`` (the hub's way from a callback on the bus's loop) sends an event in the same
    iteration of the loop, acked and in order with those emitted the awaited way; with a waiter the
    waiter gets the receipt at the ack. What it cannot do without waiting it leaves undone."""
    run = f"r-{uuid7()}"
    async with await connect(nats_server.url, home=tether_home) as bus:
        events = [tool_event(run, i) for i in range(4)]
        await bus.emit(events[0])
        assert bus.send_now(events[1]) and bus.send_now(events[2])
        waiter: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        assert bus.send_now(events[3], waiter)
        assert bus.nc.pending_data_size > 0, "queued for nats-py's flusher, not written yet"
        receipt = await asyncio.wait_for(waiter, 20)
        assert receipt.id == events[3].id and receipt.stream_seq is not None and not receipt.outboxed
        await bus.flush()
        assert bus.publisher.stats.sent == bus.publisher.stats.acked == 4
        assert [e.id for e in await events_of(bus, run)] == [e.id for e in events]
        huge = tool_event(run, 9, result="x" * (bus.publisher.large_payload_bytes + 1))
        assert not bus.send_now(huge), "a claim check awaits the object store: the awaited way"
        bus.publisher.max_event_bytes = 2000
        with pytest.raises(PayloadTooLarge):
            bus.send_now(tool_event(run, 10, result="x" * 2001))
        await bus.nc.close()
        assert not bus.send_now(tool_event(run, 11)), "not connected: nothing sent"


async def test_events_sent_now_are_written_together(nats_server: NatsServer, tether_home: Path) -> None:
    """What ``send_now(write=False)`` leaves in nats-py's buffer (a wake-up of the bus's loop taking
    several events) ``write_now`` writes in the same iteration of the loop, as the flusher would:
    nothing is left to write, and every event is acked, in order."""
    run = f"r-{uuid7()}"
    async with await connect(nats_server.url, home=tether_home) as bus:
        events = [tool_event(run, i) for i in range(4)]
        await bus.publish(events[0])  # acked: nats-py's flusher has written all it was woken for
        assert all(bus.send_now(event, write=False) for event in events[1:])
        assert bus.nc.pending_data_size > 0
        bus.write_now()
        assert bus.nc.pending_data_size == 0, "written at once, not left for the flusher"
        await bus.flush()
        assert [e.id for e in await events_of(bus, run)] == [e.id for e in events]
