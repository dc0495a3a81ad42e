"""Messages NATS can never accept: refused at once, or set aside from the outbox, never
treated as an outage that blocks the events behind them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tether.bus import (
    Outbox,
    PendingMessage,
    PublishRejected,
    Undeliverable,
    connect,
    encode_binary,
    event_filter,
    event_subject,
)
from tether.bus._deliverable import undeliverable
from tether.schemas import Event, ToolCallCompleted, uuid7
from tether.testing import NatsServer, collect

TETHER = (sys.executable, "-m", "tether")


def tool_event(run: str, i: int, *, result: object = None) -> Event:
    return Event.of(ToolCallCompleted(call_id=f"{run}-{i}", tool="search", result=i if result is None else result),
                    runid=run, agentid="bot")


def message(event: Event, *, subject: str | None = None) -> PendingMessage:
    headers, payload = encode_binary(event)
    headers["Nats-Msg-Id"] = event.id
    return PendingMessage(event.id, subject or event_subject(event), headers, payload)


# -- the decision, without a server -------------------------------------------------------

GOOD = message(tool_event("r", 0))


@pytest.mark.parametrize(("subject", "why"), [
    ("tether.evt.bot.r.memory.written.team:docs\n", "not a valid NATS subject"),
    ("tether.evt.bot.r 1.tool.completed._", "not a valid NATS subject"),
    ("tether.evt.bot.r\r\nPUB x 1.tool.completed._", "not a valid NATS subject"),
    ("", "not a valid NATS subject"),
    ("tether.evt..r.tool.completed._", "empty token"),
    ("tether.evt.bot.r.tool.completed.", "empty token"),
    ("tether.evt.*.r.tool.completed._", "wildcard"),
    ("tether.evt.bot.>", "wildcard"),
])
def test_a_malformed_subject_is_undeliverable(subject: str, why: str) -> None:
    bad = PendingMessage(GOOD.id, subject, GOOD.headers, GOOD.payload)
    assert why in (undeliverable(bad, max_payload=1 << 20, claim_check_above=1 << 18) or "")


@pytest.mark.parametrize(("name", "value", "why"), [
    ("ce-x\n", "1", "not a token"), ("ce x", "1", "not a token"), ("ce:x", "1", "not a token"),
    ("ce-x", "1\r\nPUB evil 1", "line break"), ("ce-x", "a\nb", "line break"),
])
def test_a_malformed_header_is_undeliverable(name: str, value: str, why: str) -> None:
    bad = PendingMessage(GOOD.id, GOOD.subject, {**GOOD.headers, name: value}, GOOD.payload)
    assert why in (undeliverable(bad, max_payload=1 << 20, claim_check_above=1 << 18) or "")


def test_size_counts_headers_and_the_claim_check() -> None:
    assert undeliverable(GOOD, max_payload=1 << 20, claim_check_above=1 << 18) is None
    assert undeliverable(GOOD, max_payload=0, claim_check_above=1 << 18) is None  # limit unknown
    big = PendingMessage(GOOD.id, GOOD.subject, GOOD.headers, b"x" * 5000)
    assert "above the NATS server's max_payload of 4,096" in (
        undeliverable(big, max_payload=4096, claim_check_above=1 << 18) or "")
    # Above the claim-check size the payload goes to the object store: only headers count.
    assert undeliverable(big, max_payload=4096, claim_check_above=1000) is None
    head_only = PendingMessage(GOOD.id, GOOD.subject, GOOD.headers, b"")
    assert "max_payload of 100" in (undeliverable(head_only, max_payload=100, claim_check_above=1000) or "")


# -- against a real server ----------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.nats
async def test_a_message_above_max_payload_is_refused_at_once_and_blocks_nothing(tether_home: Path) -> None:
    run = f"r-{uuid7()}"
    with NatsServer(max_payload=16 * 1024) as server:
        async with await connect(server.url) as bus:
            first = tool_event(run, 0)
            await bus.publish(first)
            with pytest.raises(Undeliverable, match=r"can never be delivered.*max_payload of 16,384") as info:
                await bus.publish(tool_event(run, 1, result="x" * 40_000))
            assert isinstance(info.value, PublishRejected)
            with pytest.raises(Undeliverable, match="max_payload"):
                await bus.emit(tool_event(run, 2, result="x" * 40_000))
            assert not bus.publisher.degraded and bus.publisher.outbox_depth() == 0
            later = [tool_event(run, 3), tool_event(run, 4)]
            assert not (await bus.publish(later[0])).outboxed
            await bus.emit(later[1])
            await bus.flush()
            assert bus.publisher.outbox_depth() == 0
            stored = [r.event.id for r in await collect(bus, event_filter(run=run)) if r.event]
            assert stored == [first.id, later[0].id, later[1].id]
            assert not list((tether_home / "outbox").glob("*.db")), "refused events are not kept"


@pytest.mark.anyio
@pytest.mark.nats
async def test_an_adopted_outbox_flushes_around_undeliverable_rows_and_status_shows_them(
        tether_home: Path) -> None:
    """An outbox left by an older tether (a namespace with a trailing newline in a subject) or
    written for a server with a bigger max_payload: those rows are set aside with their reason,
    the rest reach the stream in order, and ``tether status`` shows what was set aside."""
    run = f"r-{uuid7()}"
    events = [tool_event(run, i) for i in range(6)]
    bad_subject = message(events[1], subject="tether.evt.bot.r.memory.written.team:docs\n")
    too_big = message(tool_event(run, 9, result="x" * 40_000))
    box = Outbox.create(tether_home / "outbox")
    box.add([message(events[0]), bad_subject, message(events[2]), too_big,
             *(message(e) for e in events[3:])])
    box.close(remove_if_empty=False)  # as if its process had died

    with NatsServer(max_payload=16 * 1024) as server:
        async with await connect(server.url) as bus:
            await asyncio.wait_for(bus.publisher.drain(), 20)
            stored = [r.event.id for r in await collect(bus, event_filter(run=run)) if r.event]
            assert stored == [events[i].id for i in (0, 2, 3, 4, 5)]
            st = await bus.status()
        assert st["outbox"]["queued"] == 0 and st["outbox"]["rejected"] == 2
        reasons = {r["id"]: r["error"] for r in st["outbox"]["set_aside"]}
        assert "not a valid NATS subject" in reasons[bad_subject.id]
        assert "max_payload of 16,384" in reasons[too_big.id]

        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        env.update(TETHER_HOME=str(tether_home), NO_COLOR="1")
        for argv in (["status", "--url", server.url], ["status", "--url", server.url, "--json"]):
            proc = await asyncio.create_subprocess_exec(*TETHER, *argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            text = out.decode()
            if "--json" in argv:
                doc = json.loads(text)
                assert {r["id"] for r in doc["outbox"]["set_aside"]} == {bad_subject.id, too_big.id}
            else:
                assert "0 queued in 1 file(s), 2 rejected" in text
                line = next(ln for ln in text.splitlines() if bad_subject.id in ln)
                assert "set aside" in line and "team:docs\\n" in line and "not a valid NATS subject" in line
                assert any(too_big.id in ln and "max_payload" in ln for ln in text.splitlines())
    # With no server, status still lists them (and exits 1).
    proc = await asyncio.create_subprocess_exec(*TETHER, "status", env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert any(bad_subject.id in ln and "set aside" in ln for ln in out.decode().splitlines())
