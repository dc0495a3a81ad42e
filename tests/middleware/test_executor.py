"""The executor end to end: real nats-server, real HTTP to the fake provider, real workers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from tether.bus import WORK_STREAM, Bus, connect, event_filter
from tether.middleware import (
    BreakerPolicy,
    BudgetLimits,
    CallFailed,
    DurableCalls,
    Executor,
    FallbackPolicy,
    InlineCalls,
    Policy,
    PolicySet,
    ProviderConfig,
    RetryPolicy,
    RunawayGuard,
    Target,
    ToolRegistry,
    deadletter,
)
from tether.middleware._work import CallRecord
from tether.schemas import Event, uuid7
from tether.testing import NatsServer, collect
from tether.testing.fake_provider import FakeProvider

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

CHAT = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 20}


@dataclass
class Env:
    bus: Bus
    fake: FakeProvider
    executor: Executor
    calls: DurableCalls
    tools: ToolRegistry

    async def events(self, run: str) -> list[Event]:
        await self.bus.flush()
        return [r.event for r in await collect(self.bus, event_filter(run=run)) if r.event is not None]


def policies(**routes: Policy) -> PolicySet:
    fast = Policy(retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05), timeout_s=5.0,
                  breaker=BreakerPolicy(enabled=False))
    return PolicySet(routes={"*": fast, **{k.replace("__", ":"): v for k, v in routes.items()}},
                     runaway=RunawayGuard(max_calls_per_run=None, max_identical_calls=None))


@pytest.fixture
async def env(nats_server: NatsServer, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    marker = request.node.get_closest_marker("policies")
    pset = marker.args[0] if marker else policies()
    tools = ToolRegistry()
    async with FakeProvider(seed=7) as fake, await connect(nats_server.url, home=tmp_path / "home") as bus:
        # each test gets its own durable consumer name space by purging WORK first
        await bus.js.purge_stream(WORK_STREAM)
        providers = {"fake": ProviderConfig("fake", "openai", fake.url),
                     "claude": ProviderConfig("claude", "anthropic", f"{fake.origin}/v1")}
        executor = Executor(bus, policies=pset, providers=providers, tools=tools, concurrency=16, seed=1)
        await executor.start()
        calls = await DurableCalls(bus).start()
        try:
            yield Env(bus, fake, executor, calls, tools)
        finally:
            await calls.close()
            await executor.stop()


def types(events: list[Event]) -> list[str]:
    return [e.type.removeprefix("tether.") for e in events]


async def test_durable_call_completes_and_is_recorded(env: Env) -> None:
    run = f"r-{uuid7()}"
    result = await env.calls.llm("fake", "gpt-4o-mini", CHAT, runid=run, agentid="bot")
    assert result.response["choices"][0]["message"]["content"]
    assert result.usage is not None and result.usage.input_tokens > 0
    events = await env.events(run)
    assert types(events) == ["llm.call.requested", "llm.call.completed"]
    assert events[1].data.response == result.response  # type: ignore[attr-defined]
    assert events[1].data.call_id == result.call_id  # type: ignore[attr-defined]


async def test_retry_after_is_honoured(env: Env) -> None:
    run = f"r-{uuid7()}"
    env.fake.set_faults("429(0.3s)#1-2")
    started = asyncio.get_running_loop().time()
    result = await env.calls.llm("fake", "gpt-4o-mini", CHAT, runid=run)
    took = asyncio.get_running_loop().time() - started
    events = await env.events(run)
    assert types(events) == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.attempt_failed",
                             "llm.call.completed"]
    failed = [e.data for e in events if e.type.endswith("attempt_failed")]
    assert [f.decision for f in failed] == ["retry", "retry"]  # type: ignore[attr-defined]
    assert all(f.retry_in_s == pytest.approx(0.3, abs=0.01) for f in failed)  # type: ignore[attr-defined]
    assert all(f.error.status_code == 429 for f in failed)  # type: ignore[attr-defined]
    assert took >= 0.6, "both waits of the Retry-After were respected"
    assert events[-1].data.attempt == 3  # type: ignore[attr-defined]
    assert result.call_id


@pytest.mark.policies(policies(**{"fake__gpt-a": Policy(
    retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02), timeout_s=5.0,
    breaker=BreakerPolicy(enabled=False),
    fallback=FallbackPolicy(targets=(Target("fake", "gpt-b"),), max_fallbacks=1))}))
async def test_falls_back_to_the_next_model(env: Env) -> None:
    run = f"r-{uuid7()}"
    env.fake.set_faults("503=gpt-a")
    result = await env.calls.llm("fake", "gpt-a", CHAT, runid=run)
    assert result.response["model"] == "gpt-b"
    events = await env.events(run)
    decisions = [e.data.decision for e in events if e.type.endswith("attempt_failed")]  # type: ignore[attr-defined]
    assert decisions == ["retry", "fallback"]
    done = events[-1].data
    assert (done.model, done.attempt) == ("gpt-b", 3)  # type: ignore[attr-defined]
    requests = [r for r in env.fake.log if r.model in ("gpt-a", "gpt-b")]
    assert [r.model for r in requests][-3:] == ["gpt-a", "gpt-a", "gpt-b"]


async def test_client_error_is_dead_lettered_then_redriven(env: Env) -> None:
    run = f"r-{uuid7()}"
    env.fake.set_faults("400#1")
    with pytest.raises(CallFailed, match="BadRequestError") as info:
        await env.calls.llm("fake", "gpt-4o-mini", CHAT, runid=run)
    assert info.value.reason == "not_retryable"
    events = await env.events(run)
    assert types(events) == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.failed",
                             "call.dead_lettered"]
    assert events[1].data.decision == "give_up"  # type: ignore[attr-defined]
    assert events[3].data.reason == "not_retryable"  # type: ignore[attr-defined]
    [dl] = await deadletter.list_dead_letters(env.bus, {"call_id": info.value.call_id})
    assert dl.attempts == 1 and dl.error_type == "BadRequestError"
    assert dl.doc["item"]["body"]["messages"] == CHAT["messages"]

    new_id = await deadletter.redrive(env.bus, dl)
    result = await env.calls.attach(new_id, timeout=10)
    assert result.response["choices"]
    assert await deadletter.list_dead_letters(env.bus, {"call_id": info.value.call_id}) == []
    after = types(await env.events(run))
    assert "call.redriven" in after and after.count("llm.call.completed") == 1


async def test_malformed_work_goes_to_the_dlq_and_the_worker_carries_on(env: Env) -> None:
    await env.bus.js.publish("tether.work.llm.fake", b"{not json", headers={"Nats-Msg-Id": uuid7()})
    await env.bus.js.publish("tether.work.llm.fake", json.dumps({"call_id": "x1", "kind": "nope"}).encode(),
                             headers={"Nats-Msg-Id": uuid7()})
    run = f"r-{uuid7()}"
    result = await env.calls.llm("fake", "gpt-4o-mini", CHAT, runid=run)
    assert result.response
    with anyio.fail_after(30):
        while True:
            letters = await deadletter.list_dead_letters(env.bus, {"reason": "malformed"})
            if len([d for d in letters if d.call_id in ("x1",) or d.call_id.startswith("malformed-")]) >= 2:
                break
            await asyncio.sleep(0.1)
    reasons = {d.call_id: d.error_message for d in letters}
    assert "x1" in reasons and "kind" in reasons["x1"]
    assert any(k.startswith("malformed-") for k in reasons)


async def test_tools_run_by_name_and_unknown_ones_are_dead_lettered(env: Env) -> None:
    calls: list[int] = []

    @env.tools.tool("add", idempotent=True)
    def add(a: int, b: int) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("flaky")
        return a + b

    run = f"r-{uuid7()}"
    result = await env.calls.tool("add", {"a": 2, "b": 3}, runid=run)
    assert result.response == 5 and len(calls) == 2
    with pytest.raises(CallFailed, match="UnknownTool"):
        await env.calls.tool("nope", {}, runid=run)
    kinds = types(await env.events(run))
    assert kinds[:3] == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.completed"]
    assert kinds[-2:] == ["tool.call.failed", "call.dead_lettered"]


async def test_a_caller_that_restarted_reattaches_from_the_log(env: Env) -> None:
    run = f"r-{uuid7()}"
    result = await env.calls.llm("fake", "gpt-4o-mini", CHAT, runid=run)
    fresh = await DurableCalls(env.bus).start()
    try:
        again = await fresh.attach(result.call_id, timeout=5)
    finally:
        await fresh.close()
    assert again.response == result.response and again.event_seq is not None


async def test_inline_mode_publishes_the_same_events(env: Env) -> None:
    run = f"r-{uuid7()}"
    env.fake.set_faults("500#1")
    async with InlineCalls(env.bus, policies=env.executor.policies, providers=env.executor.providers) as inline:
        result = await inline.llm("fake", "gpt-4o-mini", CHAT, runid=run)
    assert result.response["choices"]
    events = await env.events(run)
    assert types(events) == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]
    assert events[0].data.mode == "inline"  # type: ignore[attr-defined]


@pytest.mark.policies(PolicySet(routes={"*": Policy(retry=RetryPolicy(base_delay_s=0.01))},
                                budgets={("run", "*"): BudgetLimits(usd=0.0000001)},
                                runaway=RunawayGuard(max_calls_per_run=None, max_identical_calls=2)))
async def test_budget_is_checked_before_dispatch(env: Env) -> None:
    run = f"r-{uuid7()}"
    before = len(env.fake.log)
    with pytest.raises(CallFailed, match="BudgetExceeded"):
        await env.calls.llm("fake", "gpt-4o", {**CHAT, "max_tokens": 4000}, runid=run)
    assert len(env.fake.log) == before, "a refused call is never sent"
    kinds = types(await env.events(run))
    assert "budget.exceeded" in kinds and kinds[-1] == "call.dead_lettered"


@pytest.mark.policies(PolicySet(routes={"*": Policy(retry=RetryPolicy(base_delay_s=0.01))},
                                runaway=RunawayGuard(max_calls_per_run=100, max_identical_calls=2)))
async def test_runaway_guard_stops_a_run_repeating_itself(env: Env) -> None:
    run = f"r-{uuid7()}"
    for _ in range(2):
        await env.calls.llm("fake", "gpt-4o-mini", CHAT, runid=run)
    with pytest.raises(CallFailed, match="repeated the same call") as durable:
        await env.calls.llm("fake", "gpt-4o-mini", CHAT, runid=run)
    other = await env.calls.llm("fake", "gpt-4o-mini", {**CHAT, "max_tokens": 21}, runid=run)
    assert other.response
    inline_run = f"r-{uuid7()}"
    async with InlineCalls(env.bus, policies=env.executor.policies, providers=env.executor.providers) as inline:
        for _ in range(2):
            await inline.llm("fake", "gpt-4o-mini", CHAT, runid=inline_run)
        with pytest.raises(CallFailed) as inlined:
            await inline.llm("fake", "gpt-4o-mini", CHAT, runid=inline_run)
    # one guard, one message, whichever path counted the run
    expected = "run {} repeated the same call 3 times (runaway.max_identical_calls=2)"
    assert (durable.value.reason, durable.value.error.message) == ("runaway", expected.format(run))
    assert (inlined.value.reason, inlined.value.error.message) == ("runaway", expected.format(inline_run))


@pytest.mark.policies(PolicySet(routes={"*": Policy(retry=RetryPolicy(base_delay_s=0.01))},
                                runaway=RunawayGuard(max_calls_per_run=1, max_identical_calls=1)))
async def test_a_call_redelivered_before_its_record_was_saved_is_counted_once(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker cannot save the call's record (the KV bucket is electing a leader in a cluster):
    the call is redelivered and admitted again. The run's record counted it once per delivery, so
    a call redelivered often enough was refused as a runaway (the cluster chaos test saw "repeated
    the same call 6 times"); it counts each call once."""
    save, failures = env.executor._save, []

    async def bucket_without_leader(rec: CallRecord) -> None:
        if not failures:
            failures.append(rec.call_id)
            raise NatsTimeoutError
        await save(rec)

    monkeypatch.setattr(env.executor, "_save", bucket_without_leader)
    run = f"r-{uuid7()}"
    result = await env.calls.llm("fake", "gpt-4o-mini", CHAT, runid=run)
    assert result.response and failures == [result.call_id]
    with pytest.raises(CallFailed, match="reached its limit of 1 calls"):  # the guard still counts
        await env.calls.llm("fake", "gpt-4o-mini", {**CHAT, "max_tokens": 21}, runid=run)


@pytest.mark.policies(policies(fake__brk=Policy(retry=RetryPolicy(max_attempts=1), timeout_s=5.0,
                                                breaker=BreakerPolicy(failure_streak=2, cooldown_s=0.3))))
async def test_successes_reset_the_streak_and_a_successful_probe_closes_the_breaker(env: Env) -> None:
    run = f"r-{uuid7()}"

    async def call() -> bool:
        try:
            await env.calls.llm("fake", "brk", CHAT, runid=run)
        except CallFailed:
            return False
        return True

    env.fake.set_faults("500#1=brk,500#3=brk")
    assert [await call() for _ in range(4)] == [False, True, False, True]  # never 2 failures in a row
    env.fake.set_faults("500#1-2=brk")
    assert [await call() for _ in range(2)] == [False, False]
    await asyncio.sleep(0.35)  # the cooldown
    assert await call(), "the probe"
    assert await call()
    await env.bus.flush()
    circuit = [r.event.data for r in await collect(env.bus, event_filter(kind="circuit"))
               if r.event is not None and r.event.data.route == "fake:brk"]  # type: ignore[attr-defined]
    assert [type(c).__name__ for c in circuit] == ["CircuitOpened", "CircuitHalfOpened", "CircuitClosed"]
