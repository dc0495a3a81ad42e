"""Budgets under concurrency: admission reserves each call's estimate in KV, so however many
calls ask at once (one process, or two ``tether worker`` processes), no more are admitted than
the budget holds; a call that fails or is cancelled gives its reservation back.

Real nats-server, real HTTP to the fake provider; every call has the same estimate (same
request size, ``max_tokens`` 12: the fake's shortest answer is 12 tokens), and the fake answers with
exactly that many, so the budget is a whole
number of calls plus a half.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.middleware.test_chaos import workers
from tether.bus import WORK_STREAM, Bus, connect, event_filter
from tether.middleware import (
    BreakerPolicy,
    BudgetLimits,
    CallFailed,
    CallResult,
    DurableCalls,
    Executor,
    InlineCalls,
    Policy,
    PolicySet,
    ProviderConfig,
    RetryPolicy,
    RunawayGuard,
)
from tether.middleware._shared import SpendBook
from tether.pricing import estimate, estimate_tokens, price
from tether.schemas import LlmCallCompleted, uuid7
from tether.testing import NatsServer, collect
from tether.testing.fake_provider import FakeProvider

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

MODEL = "gpt-4o"


def body(i: int) -> dict[str, Any]:
    """Distinct requests of one size: the same estimate each."""
    return {"messages": [{"role": "user", "content": f"question {i:03d}"}], "max_tokens": 12}


def one_call_usd() -> float:
    tokens_in, tokens_out = estimate_tokens(body(0))
    usd = estimate("fake", MODEL, input_tokens=tokens_in, max_output_tokens=tokens_out).usd
    assert usd is not None and usd > 0
    return usd


def budget(calls: float, **routes: Policy) -> PolicySet:
    fast = Policy(retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02), timeout_s=10.0,
                  breaker=BreakerPolicy(enabled=False))
    return PolicySet(routes={"*": fast, **routes}, budgets={("agent", "*"): BudgetLimits(usd=calls * one_call_usd())},
                     runaway=RunawayGuard(max_calls_per_run=None, max_identical_calls=None))


@pytest.fixture
async def bus(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Bus]:
    async with await connect(nats_server.url, home=tmp_path / "home") as connected:
        await connected.js.purge_stream(WORK_STREAM)
        yield connected


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider(seed=11, latency="200ms") as provider:
        yield provider


def providers(fake: FakeProvider) -> dict[str, ProviderConfig]:
    return {"fake": ProviderConfig("fake", "openai", fake.url)}


async def gather_calls(call: Any, n: int, agent: str) -> list[CallResult | CallFailed]:
    async def one(i: int) -> CallResult | CallFailed:
        try:
            result: CallResult = await call("fake", MODEL, body(i), runid=f"r-{uuid7()}", agentid=agent)
            return result
        except CallFailed as failed:
            return failed

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def settled_spend(bus: Bus, agent: str) -> dict[str, Any]:
    """The agent's spend record once no call holds a reservation on it any more."""
    book = await SpendBook.open(bus)
    with anyio.fail_after(15):
        while True:
            doc = await book.get("agent", agent)
            if not doc.get("holds"):
                return doc
            await asyncio.sleep(0.05)


async def billed(bus: Bus, agent: str) -> float:
    """What the completed calls of ``agent`` cost, from their events."""
    await bus.flush()
    total = 0.0
    for r in await collect(bus, event_filter(agent=agent)):
        if r.event is not None and isinstance(r.event.data, LlmCallCompleted):
            total += price("fake", r.event.data.model, r.event.data.usage).usd or 0.0
    return total


def check_outcomes(outcomes: list[CallResult | CallFailed], admitted: int) -> None:
    done = [o for o in outcomes if isinstance(o, CallResult)]
    refused = [o for o in outcomes if isinstance(o, CallFailed)]
    assert len(done) == admitted, f"{len(done)} calls completed under a budget of {admitted}.5 calls"
    assert {(f.reason, f.error.type) for f in refused} == {("budget", "BudgetExceeded")}
    assert any("reserved by calls in flight" in f.error.message for f in refused)


async def test_inline_calls_at_once_stop_at_the_budget(bus: Bus, fake: FakeProvider) -> None:
    agent = f"a-{uuid7()}"
    async with InlineCalls(bus, policies=budget(3.5), providers=providers(fake)) as inline:
        outcomes = await gather_calls(inline.llm, 12, agent)
    check_outcomes(outcomes, 3)
    assert len(fake.log) == 3, "a refused call is never sent"
    doc = await settled_spend(bus, agent)
    assert doc["usd"] == pytest.approx(await billed(bus, agent))
    assert doc["usd"] <= 3.5 * one_call_usd()


async def test_durable_calls_at_once_stop_at_the_budget(bus: Bus, fake: FakeProvider) -> None:
    agent = f"a-{uuid7()}"
    async with Executor(bus, policies=budget(3.5), providers=providers(fake), concurrency=16, seed=1), \
            DurableCalls(bus) as calls:
        outcomes = await gather_calls(calls.llm, 12, agent)
    check_outcomes(outcomes, 3)
    doc = await settled_spend(bus, agent)
    assert doc["usd"] == pytest.approx(await billed(bus, agent))
    assert doc["usd"] <= 3.5 * one_call_usd()


@pytest.mark.slow
async def test_two_worker_processes_share_one_budget(nats_server: NatsServer, bus: Bus, fake: FakeProvider,
                                                     tmp_path: Path) -> None:
    agent = f"a-{uuid7()}"
    cap = 6.5 * one_call_usd()
    config = tmp_path / "tether.toml"
    config.write_text(
        f'[providers.fake]\nkind = "openai"\nbase_url = "{fake.url}"\n\n'
        '[routes."*"]\ntimeout_s = 10.0\n\n[routes."*".breaker]\nenabled = false\n\n'
        f'[budgets.agent."*"]\nusd = {cap!r}\n\n'
        '[runaway]\nmax_calls_per_run = false\nmax_identical_calls = false\n', encoding="utf-8")
    fake.set_latency("1s")
    async with workers(nats_server.url, config, tmp_path, 2, concurrency=4) as procs, DurableCalls(bus) as calls:
        outcomes = await gather_calls(calls.llm, 24, agent)
        assert all(w.proc.returncode is None for w in procs)
    check_outcomes(outcomes, 6)
    # Six calls were at the provider at once: more than one worker (4 at a time) can run,
    # so both processes admitted calls against the one budget.
    arrivals = sorted(r.time for r in fake.log)
    assert len(arrivals) == 6
    assert max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals) > 4, arrivals
    doc = await settled_spend(bus, agent)
    assert doc["usd"] == pytest.approx(await billed(bus, agent))
    assert doc["usd"] <= cap + one_call_usd()
    assert doc["usd"] <= cap, "the fake answers within each call's estimate: no overshoot at all"


async def test_a_failed_call_gives_its_reservation_back(bus: Bus, fake: FakeProvider) -> None:
    agent = f"a-{uuid7()}"
    fake.set_faults("400#1")
    async with InlineCalls(bus, policies=budget(1.5), providers=providers(fake)) as inline:
        with pytest.raises(CallFailed) as failed:
            await inline.llm("fake", MODEL, body(1), agentid=agent)
        assert failed.value.reason == "not_retryable"
        assert (await inline.llm("fake", MODEL, body(2), agentid=agent)).response["choices"]
    async with Executor(bus, policies=budget(1.5), providers=providers(fake), concurrency=4, seed=1), \
            DurableCalls(bus) as calls:
        agent = f"a-{uuid7()}"
        fake.set_faults("400#1")
        with pytest.raises(CallFailed) as failed:
            await calls.llm("fake", MODEL, body(3), agentid=agent)
        assert failed.value.reason == "not_retryable"
        assert (await calls.llm("fake", MODEL, body(4), agentid=agent)).response["choices"]
    assert (await settled_spend(bus, agent))["calls"] == 1


async def test_a_cancelled_inline_call_gives_its_reservation_back(bus: Bus, fake: FakeProvider) -> None:
    agent = f"a-{uuid7()}"
    fake.set_latency("5s")
    async with InlineCalls(bus, policies=budget(1.5), providers=providers(fake)) as inline:
        task = asyncio.create_task(inline.llm("fake", MODEL, body(1), agentid=agent))
        with anyio.fail_after(20):
            while not fake.log:  # noqa: ASYNC110 (the fake provider runs in a thread of its own)
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not (await settled_spend(bus, agent)).get("holds")
        fake.set_latency(None)
        assert (await inline.llm("fake", MODEL, body(2), agentid=agent)).response["choices"]


async def test_a_runs_calls_budget_holds_with_the_runaway_guard_off(bus: Bus, fake: FakeProvider) -> None:
    policies = PolicySet(routes=budget(1).routes, budgets={("run", "*"): BudgetLimits(calls=2)},
                         runaway=RunawayGuard(max_calls_per_run=None, max_identical_calls=None))
    run = f"r-{uuid7()}"
    async with InlineCalls(bus, policies=policies, providers=providers(fake)) as inline:
        async def one(i: int) -> CallResult | CallFailed:
            try:
                return await inline.llm("fake", MODEL, body(i), runid=run)
            except CallFailed as failed:
                return failed

        outcomes = await asyncio.gather(*(one(i) for i in range(5)))
        assert sum(isinstance(o, CallResult) for o in outcomes) == 2
        with pytest.raises(CallFailed, match="calls budget") as refused:
            await inline.llm("fake", MODEL, body(9), runid=run)
    assert refused.value.reason == "budget"
