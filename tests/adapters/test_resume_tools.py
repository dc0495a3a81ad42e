"""Tool calls of a resumed run: replayed when they completed, re-run only when idempotent, else the run
stops in ``needs_attention`` until someone says whether the call happened. A crash is a ``BaseException``
raised inside the tool (the tool's end is never recorded) and a run never closed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tether
from tether.adapters import Hub
from tether.bus import Bus
from tether.middleware import Policy, PolicySet
from tether.schemas import Event, ToolCallResolved

from .conftest import data, fast_policies, kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


class Crash(BaseException):
    """The process dies here: nothing after it is recorded."""


def short(key: str) -> str:
    """``<run>:<position>`` of an idempotency key ``<run>:<position>:<hash of the call>``."""
    run_id, position, digest = key.rsplit(":", 2)
    assert len(digest) == 12 and int(digest, 16) >= 0
    return f"{run_id}:{position}"


class Bank:
    """A tool's side effects, counted per idempotency key (its run and position)."""

    def __init__(self) -> None:
        self.effects: list[tuple[str, Any]] = []
        self.crash_in: str | None = None

    def tools(self, bus: Bus, policies: PolicySet) -> tuple[Any, Any]:
        @tether.tool(bus=bus, policies=policies)
        async def transfer(amount: int, idempotency_key: str = "") -> dict[str, Any]:
            self.effects.append(("transfer", short(idempotency_key)))
            if self.crash_in == "transfer":
                raise Crash
            return {"moved": amount}

        @tether.tool(bus=bus, policies=policies, idempotent=True)
        async def balance(account: str, idempotency_key: str = "") -> int:
            self.effects.append(("balance", short(idempotency_key)))
            if self.crash_in == "balance":
                raise Crash
            return 100

        return transfer, balance


async def crashed_run(bus: Bus, run_id: str, agent_steps: Any) -> None:
    """Open a run, do ``agent_steps`` until the crash, and never close it (as a killed process)."""
    opened = tether.run(agent="bank-bot", run_id=run_id, bus=bus)
    await opened.__aenter__()
    with pytest.raises(Crash):
        await agent_steps()
    await Hub.of(bus).flush()


async def test_a_completed_call_is_replayed_and_a_non_idempotent_one_the_process_died_in_needs_attention(
        bus: Bus, policies: PolicySet) -> None:
    bank = Bank()
    transfer, balance = bank.tools(bus, policies)

    async def steps() -> None:
        assert await balance("a") == 100
        await transfer(5)

    bank.crash_in = "transfer"
    await crashed_run(bus, "run-attn-1", steps)
    assert bank.effects == [("balance", "run-attn-1:0"), ("transfer", "run-attn-1:1")]

    bank.crash_in = None
    with pytest.raises(tether.NeedsAttention) as caught:
        async with tether.run(agent="bank-bot", run_id="run-attn-1", resume=True, bus=bus) as resumed:
            assert await balance("a") == 100  # replayed: the tool does not run again
            await transfer(5)
    assert resumed.status == "needs_attention"
    assert bank.effects == [("balance", "run-attn-1:0"), ("transfer", "run-attn-1:1")], "nothing ran twice"
    assert (caught.value.tool, caught.value.position, caught.value.arguments) == ("transfer", 1, {"amount": 5})
    assert "tether runs resolve run-attn-1" in str(caught.value)
    events = await run_events(bus, "run-attn-1")
    assert kinds(events)[-4:] == ["run.started", "tool.call.requested", "call.replayed", "run.needs_attention"]
    assert "run.finished" not in kinds(events)
    replayed = data(events, "replayed")[0]
    assert (replayed.call_kind, replayed.tool, replayed.position, replayed.response) == ("tool", "balance", 0, 100)
    assert replayed.original_call_id == data(events, "requested")[0].call_id
    attention = data(events, "needs_attention")[0]
    assert (attention.tool, attention.position, short(attention.idempotency_key)) == ("transfer", 1, "run-attn-1:1")
    assert data(events, "run.started")[-1].resumed is True


async def resolve(bus: Bus, events: list[Event], *, happened: bool, result: Any = None) -> None:
    attention = data(events, "needs_attention")[-1]
    await bus.emit(Event.of(ToolCallResolved(call_id=attention.call_id, tool=attention.tool, happened=happened,
                                             result=result), runid=events[0].runid, agentid=events[0].agentid))
    await bus.flush()


@pytest.mark.parametrize("happened", [True, False])
async def test_a_resolved_call_is_returned_or_run_again_and_the_run_goes_on(bus: Bus, policies: PolicySet,
                                                                            happened: bool) -> None:
    bank = Bank()
    transfer, balance = bank.tools(bus, policies)
    run_id = f"run-resolved-{happened}"

    async def steps() -> Any:
        await balance("a")
        moved = await transfer(5)
        await balance("b")
        return moved

    bank.crash_in = "transfer"
    await crashed_run(bus, run_id, steps)
    bank.crash_in = None
    with pytest.raises(tether.NeedsAttention):
        async with tether.run(agent="bank-bot", run_id=run_id, resume=True, bus=bus):
            await steps()
    await resolve(bus, await run_events(bus, run_id), happened=happened, result={"moved": 5, "by": "ops"})
    async with tether.run(agent="bank-bot", run_id=run_id, resume=True, bus=bus) as finished:
        moved = await steps()
    assert finished.status == "ok"
    expected = [("balance", f"{run_id}:0"), ("transfer", f"{run_id}:1"), ("balance", f"{run_id}:2")]
    if happened:
        assert moved == {"moved": 5, "by": "ops"}
    else:  # it did not happen: it runs now, under the same key
        expected.insert(2, ("transfer", f"{run_id}:1"))
        assert moved == {"moved": 5}
    assert bank.effects == expected


async def test_an_idempotent_call_the_process_died_in_runs_again_with_the_same_key(bus: Bus,
                                                                                  policies: PolicySet) -> None:
    bank = Bank()
    transfer, balance = bank.tools(bus, policies)

    async def steps() -> None:
        await transfer(1)
        await balance("a")
        await transfer(2)

    bank.crash_in = "balance"
    await crashed_run(bus, "run-idem-1", steps)
    bank.crash_in = None
    async with tether.run(agent="bank-bot", run_id="run-idem-1", resume=True, bus=bus):
        await steps()
    assert bank.effects == [("transfer", "run-idem-1:0"), ("balance", "run-idem-1:1"), ("balance", "run-idem-1:1"),
                            ("transfer", "run-idem-1:2")]


async def test_a_call_that_differs_from_the_recorded_one_and_every_later_call_runs_live(
        bus: Bus, policies: PolicySet) -> None:
    bank = Bank()
    transfer, balance = bank.tools(bus, policies)

    async def first() -> None:
        await transfer(1)
        await transfer(2)
        await balance("a")
        raise Crash

    await crashed_run(bus, "run-diverge-1", first)
    async with tether.run(agent="bank-bot", run_id="run-diverge-1", resume=True, bus=bus):
        await transfer(1)  # replayed
        await transfer(3)  # differs from the recorded call 1: live, with a key of its own
        await balance("a")  # after the first difference: live, though it matches
    keys = [key for _, key in bank.effects]
    assert keys[:3] == ["run-diverge-1:0", "run-diverge-1:1", "run-diverge-1:2"]
    assert keys[3:] == ["run-diverge-1:1", "run-diverge-1:2"]
    requested = data(await run_events(bus, "run-diverge-1"), "requested")
    full = [r.idempotency_key for r in requested]
    assert full[1] != full[4] and full[2] == full[5], "another call at position 1 has another key; the same call, same"


async def test_sync_tools_are_replayed_too(bus: Bus, policies: PolicySet) -> None:
    counted: list[int] = []

    @tether.tool(policies=policies)
    def count(n: int) -> int:
        counted.append(n)
        if n == 2:
            raise Crash
        return n * 10

    async def steps() -> None:
        await asyncio.to_thread(count, 1)
        await asyncio.to_thread(count, 2)

    await crashed_run(bus, "run-sync-1", steps)
    with pytest.raises(tether.NeedsAttention):
        async with tether.run(agent="bank-bot", run_id="run-sync-1", resume=True, bus=bus):
            assert await asyncio.to_thread(count, 1) == 10
            await asyncio.to_thread(count, 2)
    assert counted == [1, 2]


async def test_the_idempotent_mark_and_the_timeout_come_from_the_tool_route_too(bus: Bus) -> None:
    policies = fast_policies(**{"tool:slow": Policy(idempotent=True, tool_timeout_s=0.05)})
    tries: list[str] = []

    @tether.tool(policies=policies, bus=bus)
    async def slow(idempotency_key: str = "") -> str:
        tries.append(idempotency_key)
        if len(tries) < 3:
            await asyncio.sleep(5)
        return "done"

    async with tether.run(agent="bot", run_id="run-timeout-1", bus=bus):
        assert await slow() == "done"
    assert [short(t) for t in tries] == ["run-timeout-1:0"] * 3, "timed out twice, retried: the route says idempotent"
    events = await run_events(bus, "run-timeout-1")
    failed = data(events, "attempt_failed")
    assert [f.decision for f in failed] == ["retry", "retry"]
    assert "did not finish within its timeout of 0.05 s" in failed[0].error.message
    assert data(events, "requested")[0].idempotent is True


async def test_a_timed_out_tool_that_is_not_idempotent_is_not_retried(bus: Bus, policies: PolicySet) -> None:
    tries: list[int] = []

    @tether.tool(policies=policies, bus=bus, timeout_s=0.05)
    def stuck() -> None:
        tries.append(1)
        import time
        time.sleep(0.5)

    async with tether.run(agent="bot", run_id="run-timeout-2", bus=bus):
        with pytest.raises(TimeoutError, match=r"timeout of 0\.05 s"):
            await asyncio.to_thread(stuck)
    assert tries == [1]


def test_the_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_s must be"):
        tether.tool(timeout_s=0)


async def test_a_tool_that_commits_with_tether_once_is_exactly_once_across_a_crash_after_its_commit(
        bus: Bus, policies: PolicySet, tmp_path: Any) -> None:
    import sqlite3

    path = tmp_path / "bank.db"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE moves (amount INTEGER)")
    setup.commit()
    crash = [True]

    @tether.tool(bus=bus, policies=policies, idempotent=True)
    def transfer(amount: int, idempotency_key: str = "") -> Any:
        db = sqlite3.connect(path)
        result = tether.once(db, idempotency_key,
                             lambda conn: (conn.execute("INSERT INTO moves VALUES (?)", (amount,)), amount)[1])
        if crash[0]:
            raise Crash  # committed, but the process dies before the tool returns
        return result

    async def steps() -> Any:
        return await asyncio.to_thread(transfer, 5)

    await crashed_run(bus, "run-once-1", steps)
    crash[0] = False
    async with tether.run(agent="bank-bot", run_id="run-once-1", resume=True, bus=bus):
        assert await steps() == 5
    assert [a for (a,) in sqlite3.connect(path).execute("SELECT amount FROM moves")] == [5]


def test_a_call_resolved_as_not_happened_and_run_again_then_died_in_waits_alone() -> None:
    """Found by the chaos harness: the rerun of a call resolved as not happened replaces it in the journal,
    and the first call's needs_attention must not count as waiting again."""
    from tether.adapters._tooljournal import unresolved
    from tether.schemas import RunNeedsAttention

    def attention(call_id: str) -> Event:
        return Event.of(RunNeedsAttention(call_id=call_id, tool="deposit", position=3, reason="died"), runid="r")

    def requested(call_id: str) -> Event:
        from tether.schemas import ToolCallRequested

        return Event.of(ToolCallRequested(call_id=call_id, tool="deposit", arguments={"a": 1}, position=3),
                        runid="r")

    from tether.schemas import RunStarted

    def resumed() -> Event:
        return Event.of(RunStarted(resumed=True), runid="r")

    events = [Event.of(RunStarted(), runid="r"), requested("a"), resumed(), attention("a"),
              Event.of(ToolCallResolved(call_id="a", tool="deposit", happened=False), runid="r"),
              resumed(), requested("b"), resumed(), attention("b")]
    assert [w.call_id for w in unresolved(events)] == ["b"]


async def test_inside_a_run_the_start_is_in_the_log_before_the_tool_runs_and_the_end_before_it_returns(
        bus: Bus, policies: PolicySet) -> None:
    from tether.bus import event_filter
    from tether.testing import collect

    def unacked() -> int:  # emitted and not yet acked by the stream: what a SIGKILL now would lose
        return Hub.of(bus)._queued + bus.publisher.in_flight()

    seen: list[int] = []

    @tether.tool(bus=bus, policies=policies)
    async def effect() -> int:
        seen.append(unacked())
        return 1

    async with tether.run(agent="bot", run_id="run-acked-1", bus=bus):
        await effect()
        seen.append(unacked())
    assert seen == [0, 0], "a kill inside the tool leaves its start recorded, after it returned its end"
    events = [r.event.type for r in await collect(bus, event_filter(run="run-acked-1")) if r.event is not None]
    assert events[-3:-1] == ["tether.tool.call.requested", "tether.tool.call.completed"]


def test_a_tool_calls_start_and_end_in_a_run_are_the_events_whose_ack_the_caller_awaits() -> None:
    from tether.adapters._flow import awaits_ack
    from tether.middleware import Emit
    from tether.schemas import LlmCallRequested, ToolCallCompleted, ToolCallRequested

    def emit(payload: Any, *, runid: str | None = "r", final: bool = False) -> Emit:
        return Emit(Event.of(payload, runid=runid), final=final)

    start = ToolCallRequested(call_id="c", tool="deposit", arguments={}, position=0)
    end = ToolCallCompleted(call_id="c", tool="deposit", result=1)
    assert awaits_ack(emit(start)), "the run's tool journal: its start before the tool runs"
    assert awaits_ack(emit(end, final=True)), "its end before the caller gets the result"
    assert not awaits_ack(emit(ToolCallRequested(call_id="c", tool="deposit", arguments={})))  # no journal place
    assert not awaits_ack(emit(start, runid=None))
    assert not awaits_ack(emit(end, runid=None, final=True))
    assert not awaits_ack(emit(LlmCallRequested(call_id="c", provider="openai", model="m", request={})))


async def test_a_tool_call_in_a_run_waits_for_two_acks_of_one_event_each_and_flushes_nothing(
        bus: Bus, policies: PolicySet, monkeypatch: pytest.MonkeyPatch) -> None:
    """The start's ack and the end's, each the ack of that event (``apublish``), not a flush of
    everything the hub has under way: the same record, with less done for it."""
    hub = Hub.of(bus)
    waited: list[str] = []
    apublish, flush = hub.apublish, hub.flush

    async def acked(event: Event) -> None:
        waited.append(event.type.removeprefix("tether."))
        await apublish(event)

    async def flushed(timeout: float | None = None) -> None:
        waited.append("flush")
        await flush(timeout)

    monkeypatch.setattr(hub, "apublish", acked)
    monkeypatch.setattr(hub, "flush", flushed)

    @tether.tool(bus=bus, policies=policies)
    async def effect() -> int:
        waited.append("ran")
        return 1

    async with tether.run(agent="bot", run_id="run-acked-2", bus=bus):
        assert await effect() == 1
    assert waited == ["tool.call.requested", "ran", "tool.call.completed"]
