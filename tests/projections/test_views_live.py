"""Traces and cost from a real run: executor, durable calls, fake provider, nats-server, projector."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tether.bus import connect
from tether.middleware import (
    BreakerPolicy,
    CallFailed,
    DurableCalls,
    Executor,
    FallbackPolicy,
    Policy,
    PolicySet,
    ProviderConfig,
    RetryPolicy,
    RunawayGuard,
    Target,
    ToolRegistry,
)
from tether.projections import CostLedger, Projector, TracesView, ViewStore, open_view, replay
from tether.projections.ledger import calls, totals
from tether.projections.traces import list_runs, trace
from tether.schemas import Event, LlmCallRequested, RunFinished, RunStarted, Usage
from tether.testing import NatsServer
from tether.testing.fake_provider import FakeProvider

from ._runs import TRACEPARENT, by_hand

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

# Long enough (over 1,024 tokens) that the fake provider reports a repeated prompt as cached.
CHAT = {"messages": [{"role": "user", "content": "what is a span? " * 300}], "max_tokens": 20}
RUN = "run-live"


def policies() -> PolicySet:
    retry = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)
    off = BreakerPolicy(enabled=False)
    return PolicySet(routes={
        "*": Policy(retry=retry, timeout_s=5.0, breaker=off),
        "fake:gpt-a": Policy(retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02), timeout_s=5.0,
                             breaker=off, fallback=FallbackPolicy(targets=(Target("fake", "gpt-4o-mini"),),
                                                                  max_fallbacks=1)),
    }, runaway=RunawayGuard(max_calls_per_run=None, max_identical_calls=None))


def read(views: Path, name: str) -> sqlite3.Connection:
    path = open_view(views, name)
    assert path is not None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def kids(span: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(c["kind"], c["status"], c["decision"]) for c in span["children"]]


async def test_a_real_run_folds_into_its_trace_and_the_ledger(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    tools = ToolRegistry()
    tries: list[int] = []

    @tools.tool("add", idempotent=True)
    def add(a: int, b: int) -> int:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("flaky")
        return a + b

    async with FakeProvider(seed=7) as fake, await connect(fresh_nats_server.url, home=tmp_path / "home") as bus:
        executor = Executor(bus, policies=policies(), providers={"fake": ProviderConfig("fake", "openai", fake.url)},
                            tools=tools, concurrency=8, seed=1)
        await executor.start()
        durable = await DurableCalls(bus).start()
        who = {"runid": RUN, "agentid": "bot"}
        try:
            await bus.publish(Event.of(RunStarted(name="live"), traceparent=TRACEPARENT, **who))
            fake.set_faults("429(0.05s)#1")
            retried = await durable.llm("fake", "gpt-4o-mini", CHAT, traceparent=TRACEPARENT, **who)
            fake.set_faults("503=gpt-a")
            fell_back = await durable.llm("fake", "gpt-a", CHAT, **who)
            fake.clear_faults()
            await durable.tool("add", {"a": 2, "b": 3}, **who)
            fake.set_faults("400#1")
            with pytest.raises(CallFailed) as refused:
                await durable.llm("fake", "gpt-4o", CHAT, **who)
            fake.clear_faults()
            house = await durable.llm("fake", "house-model-x", CHAT, **who)
            # a call whose worker died before reporting anything: requested, then silence
            await bus.publish(Event.of(LlmCallRequested(call_id="lost-1", provider="fake", model="gpt-4o-mini",
                                                        mode="durable"), **who))
            await bus.publish(Event.of(RunFinished(status="error"), **who))
            await bus.flush()
        finally:
            await durable.close()
            await executor.stop()

        views = tmp_path / "views"
        announced: list[dict[str, Any]] = []

        async def note(msg: Any) -> None:
            announced.append(json.loads(msg.data))

        sub = await bus.nc.subscribe("tether.proj.>", cb=note)
        async with Projector(bus, [TracesView(), CostLedger()], views, durable=None) as projector:
            head = await projector.catch_up()
        await bus.nc.flush()
        await asyncio.sleep(0.05)
        await sub.unsubscribe()
        assert {(n["view"], n.get("key")) for n in announced} >= {("traces", RUN), ("cost", retried.call_id)}

        db, ledger = read(views, "traces"), read(views, "cost")
        try:
            [run] = list_runs(db)
            assert (run["run_id"], run["agent"], run["name"], run["status"]) == (RUN, "bot", "live", "error")
            assert (run["llm_calls"], run["tool_calls"], run["errors"]) == (5, 1, 1)
            assert run["failed_attempts"] == 5, "429, two 503s on gpt-a, the flaky tool, the 400"
            assert run["unpriced_calls"] == 1 and run["trace_id"] == TRACEPARENT.split("-")[1]

            [root] = trace(db, RUN)
            assert root["name"] == "invoke_agent bot" and root["status"] == "error"
            spans = {c["span_id"]: c for c in root["children"]}
            assert kids(spans[retried.call_id]) == [("attempt", "error", "retry"), ("backoff", "ok", None),
                                                    ("attempt", "ok", None)]
            assert spans[retried.call_id]["children"][0]["attributes"]["http.response.status_code"] == 429
            assert spans[retried.call_id]["children"][1]["duration_ms"] == pytest.approx(50, abs=1)
            hop = spans[fell_back.call_id]
            assert (hop["name"], hop["model"], hop["status"], hop["attempt"]) == ("chat gpt-a", "gpt-4o-mini", "ok", 3)
            assert [c["kind"] for c in hop["children"]] == ["attempt", "backoff", "attempt", "fallback", "attempt"]
            assert hop["attributes"]["gen_ai.request.model"] == "gpt-a"
            assert hop["attributes"]["gen_ai.response.model"] == "gpt-4o-mini"
            [tool] = [c for c in root["children"] if c["kind"] == "tool"]
            assert (tool["name"], tool["status"], [k[0] for k in kids(tool)]) == (
                "execute_tool add", "ok", ["attempt", "backoff", "attempt"])
            bad = spans[refused.value.call_id]
            assert (bad["status"], bad["error_type"]) == ("error", "BadRequestError")
            assert kids(bad) == [("attempt", "error", "give_up"), ("dead_letter", "error", None)]
            assert spans["lost-1"]["status"] == "running" and spans["lost-1"]["ended_at"] is None

            rows = {r["call_id"]: r for r in calls(ledger)}
            assert set(rows) == {retried.call_id, fell_back.call_id, house.call_id}
            for call in (retried, fell_back):
                usage = call.usage
                assert usage is not None and rows[call.call_id]["input_tokens"] == usage.input_tokens
                assert rows[call.call_id]["usd"] == pytest.approx(by_hand("openai", "gpt-4o-mini", Usage(
                    **usage.model_dump())), rel=1e-9)
                assert rows[call.call_id]["price_source"] == "genai-prices (matched by model)"
                assert spans[call.call_id]["cost_usd"] == rows[call.call_id]["usd"]
            assert rows[fell_back.call_id]["cached_tokens"] > 0, "its last attempt repeated the first call's prompt"
            assert rows[house.call_id]["priced"] == 0 and rows[house.call_id]["usd"] is None
            assert "house-model-x" in rows[house.call_id]["unpriced_reason"]
            [by_run] = totals(ledger, by="run")
            assert (by_run["key"], by_run["calls"], by_run["unpriced"]) == (RUN, 3, 1)
            assert by_run["usd"] == pytest.approx(run["cost_usd"])
            assert by_run["input_tokens"] == run["input_tokens"]
        finally:
            db.close()
            ledger.close()

        # rebuilt == live
        sums = await replay(bus, [TracesView(), CostLedger()], tmp_path / "rebuilt", to_seq=head)
        live = {}
        for view in (TracesView(), CostLedger()):
            path = open_view(views, view.name)
            assert path is not None
            store = ViewStore(view, path)
            live[view.name] = store.checksum()
            store.close()
        assert sums == live
