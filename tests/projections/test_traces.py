"""The traces view: span trees of hand-built runs, crashes, out-of-order and duplicate events."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tether.projections import Item, TracesView, Upsert, ViewStore
from tether.projections.traces import list_runs, trace
from tether.schemas import (
    BudgetExceeded,
    CallDeadLettered,
    CallRedriven,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    MemoryWritten,
    RunFinished,
    RunNeedsAttention,
    RunStarted,
    ToolCallAttemptFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
    ToolCallResolved,
    Usage,
)

from ._runs import T0, TRACEPARENT, Run, by_hand, fold, republished, table

R = Run(traceparent=TRACEPARENT)
RATE = ErrorInfo(type="RateLimitError", status_code=429, message="slow down")
DOWN = ErrorInfo(type="ServiceUnavailableError", status_code=503, message="overloaded")
REFUSED = ErrorInfo(type="BudgetExceeded", message="run r1 would exceed its usd budget", retryable=False)
C1_USAGE = Usage(input_tokens=1000, output_tokens=200, cached_input_tokens=400)


def story() -> list[Event]:
    """A run: an LLM call retried then fallen back, a flaky tool, a memory write, a refused call."""
    return [
        R(RunStarted(name="answer", tags=("demo",)), 0),
        R(LlmCallRequested(call_id="c1", provider="openai", model="gpt-4o",
                           parameters={"max_tokens": 50, "temperature": 0.2}), 1),
        R(LlmCallAttemptFailed(call_id="c1", provider="openai", model="gpt-4o", attempt=1, error=RATE,
                               latency_ms=200, decision="retry", retry_in_s=0.5), 1.2),
        R(LlmCallAttemptFailed(call_id="c1", provider="openai", model="gpt-4o", attempt=2, error=DOWN,
                               latency_ms=100, decision="fallback", next_provider="openai",
                               next_model="gpt-4o-mini"), 1.8),
        R(LlmCallCompleted(call_id="c1", provider="openai", model="gpt-4o-mini", attempt=3, usage=C1_USAGE,
                           latency_ms=250, finish_reason="stop"), 2.1),
        R(ToolCallRequested(call_id="t1", tool="search", idempotent=True), 3),
        R(ToolCallAttemptFailed(call_id="t1", tool="search", attempt=1, decision="retry", retry_in_s=0.1,
                                error=ErrorInfo(type="ConnectionError", message="reset"), duration_ms=50), 3.05),
        R(ToolCallCompleted(call_id="t1", tool="search", attempt=2, result={"hits": 3}, duration_ms=40), 3.2),
        R(MemoryWritten(namespace="agent:bot", key="q1", version=2, text="3 hits", source_call_id="t1"), 3.3),
        R(LlmCallRequested(call_id="c2", provider="openai", model="gpt-4o"), 4),
        R(BudgetExceeded(scope="run", scope_id="r1", unit="usd", limit=0.01, spent=0.009, requested=0.002,
                         call_id="c2"), 4.01),
        R(LlmCallFailed(call_id="c2", provider="openai", model="gpt-4o", attempts=0, error=REFUSED), 4.02),
        R(CallDeadLettered(call_id="c2", call_kind="llm", reason="budget", attempts=0, error=REFUSED), 4.03),
        R(RunFinished(status="error", duration_ms=4500.0, error=REFUSED), 4.5),
    ]


def crash() -> list[Event]:
    """A run whose worker died: the call was requested, one attempt failed, then nothing."""
    run = Run("r2", agent="bot")
    return [
        run(RunStarted(name="doomed"), 10),
        run(LlmCallRequested(call_id="k1", provider="openai", model="gpt-4o"), 11),
        run(LlmCallAttemptFailed(call_id="k1", provider="openai", model="gpt-4o", attempt=1, error=DOWN,
                                 latency_ms=30, decision="retry", retry_in_s=2.0), 11.5),
    ]


def node(spans: list[dict[str, Any]], span_id: str) -> dict[str, Any]:
    [found] = [s for s in spans if s["span_id"] == span_id]
    return found


def summary(spans: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(s["name"], s["status"], s["decision"]) for s in spans]


# -- the tree -----------------------------------------------------------------------------------


def test_a_run_is_a_tree_of_calls_attempts_and_decisions() -> None:
    db = fold(TracesView(), story()).db
    [root] = trace(db, "r1")
    assert (root["name"], root["kind"], root["status"], root["duration_ms"]) == ("invoke_agent bot", "run", "error",
                                                                                 4500.0)
    assert root["trace_id"] == TRACEPARENT.split("-")[1]
    assert root["attributes"]["gen_ai.operation.name"] == "invoke_agent"
    assert root["attributes"]["gen_ai.agent.name"] == "bot"
    assert [c["name"] for c in root["children"]] == ["chat gpt-4o", "execute_tool search", "write_memory agent:bot",
                                                     "chat gpt-4o"]
    c1, t1, memory, c2 = root["children"]
    assert all(s["trace_id"] == root["trace_id"] for s in (c1, t1, memory, c2)), "one trace per run"

    assert summary(c1["children"]) == [
        ("attempt 1 gpt-4o", "error", "retry"), ("backoff", "ok", None), ("attempt 2 gpt-4o", "error", "fallback"),
        ("fallback openai:gpt-4o-mini", "ok", None), ("attempt 3 gpt-4o-mini", "ok", None)]
    assert (c1["status"], c1["model"], c1["attempt"]) == ("ok", "gpt-4o-mini", 3), "served by the fallback"
    assert c1["started_at"] == T0.timestamp() + 1 and c1["duration_ms"] == pytest.approx(1100)
    assert (c1["input_tokens"], c1["output_tokens"], c1["cached_tokens"]) == (1000, 200, 400)
    assert c1["cost_usd"] == pytest.approx(by_hand("openai", "gpt-4o-mini", C1_USAGE), rel=1e-9)
    attrs = c1["attributes"]
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "openai"
    assert (attrs["gen_ai.request.model"], attrs["gen_ai.response.model"]) == ("gpt-4o", "gpt-4o-mini")
    assert (attrs["gen_ai.request.max_tokens"], attrs["gen_ai.request.temperature"]) == (50, 0.2)
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (1000, 200)
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 400
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    first, backoff = c1["children"][:2]
    assert (first["duration_ms"], first["error_type"], first["error_message"]) == (200, "RateLimitError", "slow down")
    assert first["attributes"]["http.response.status_code"] == 429 and first["attributes"]["error.type"]
    assert backoff["duration_ms"] == pytest.approx(500) and backoff["attributes"]["tether.retry_in_s"] == 0.5

    assert (t1["status"], t1["attempt"]) == ("ok", 2)
    assert t1["attributes"]["gen_ai.tool.name"] == "search" and t1["attributes"]["gen_ai.tool.call.id"] == "t1"
    assert summary(t1["children"]) == [("attempt 1", "error", "retry"), ("backoff", "ok", None),
                                       ("attempt 2", "ok", None)]
    assert memory["attributes"]["tether.memory.key"] == "q1" and memory["attributes"]["tether.memory.version"] == 2

    assert (c2["status"], c2["error_type"]) == ("error", "BudgetExceeded")
    assert summary(c2["children"]) == [("budget_exceeded run", "error", None),
                                       ("dead_letter budget", "error", None)]
    assert c2["children"][0]["attributes"]["tether.budget.limit"] == 0.01


def test_the_run_row_counts_its_spans() -> None:
    [run] = list_runs(fold(TracesView(), story()).db)
    assert (run["run_id"], run["agent"], run["name"], run["status"]) == ("r1", "bot", "answer", "error")
    assert (run["events"], run["llm_calls"], run["tool_calls"]) == (14, 2, 1)
    assert (run["errors"], run["failed_attempts"]) == (1, 3), "one call failed; three attempts failed"
    assert (run["input_tokens"], run["output_tokens"], run["unpriced_calls"]) == (1000, 200, 0)
    assert run["cost_usd"] == pytest.approx(by_hand("openai", "gpt-4o-mini", C1_USAGE), rel=1e-9)
    assert (run["started_at"], run["ended_at"]) == (T0.timestamp(), T0.timestamp() + 4.5)
    assert run["duration_ms"] == 4500.0 and run["error_type"] == "BudgetExceeded"
    assert run["trace_id"] == TRACEPARENT.split("-")[1]


def test_a_crash_leaves_its_spans_running() -> None:
    db = fold(TracesView(), crash()).db
    [run] = list_runs(db, now=T0.timestamp() + 12)
    assert run["status"] == "running" and run["ended_at"] is None and run["duration_ms"] is None
    [root] = trace(db, "r2", now=T0.timestamp() + 12)
    [call] = root["children"]
    assert (root["status"], call["status"], call["ended_at"], call["duration_ms"]) == ("running", "running", None,
                                                                                      None)
    assert summary(call["children"]) == [("attempt 1 gpt-4o", "error", "retry"), ("backoff", "ok", None)]

    # The agent noticed and ended the run; the call it was waiting on never finished.
    db = fold(TracesView(), [*crash(), Run("r2")(RunFinished(status="error"), 20)]).db
    [root] = trace(db, "r2")
    assert root["status"] == "error" and root["duration_ms"] == pytest.approx(10_000)
    assert root["children"][0]["status"] == "running"
    assert list_runs(db, status="running") == [] and len(list_runs(db, status="error")) == 1


def test_an_open_run_quiet_past_the_heartbeat_is_interrupted() -> None:
    db = fold(TracesView(), crash()).db  # its last event at T0 + 11.5 s
    at = T0.timestamp()
    assert [r["status"] for r in list_runs(db, now=at + 11.5 + 300)] == ["running"]
    assert [r["status"] for r in list_runs(db, now=at + 11.5 + 301)] == ["interrupted"]
    assert [r["status"] for r in list_runs(db, now=at + 20, heartbeat_s=5)] == ["interrupted"]
    assert list_runs(db, now=at + 20, heartbeat_s=5, status="running") == []
    [root] = trace(db, "r2")
    assert root["status"] == "interrupted"  # as of now: long past


def test_a_run_stopped_at_a_call_needs_attention_until_it_is_resolved() -> None:
    run = Run("r3", agent="bank")
    stopped = [run(RunStarted(), 0), run(ToolCallRequested(call_id="t9", tool="deposit", position=0), 1),
               run(RunStarted(resumed=True), 60),
               run(RunNeedsAttention(call_id="t9", tool="deposit", position=0, reason="died inside"), 61)]
    db = fold(TracesView(), stopped).db
    [row] = list_runs(db, now=T0.timestamp() + 62)
    assert row["status"] == "needs_attention" and row["ended_at"] is None
    assert [r["run_id"] for r in list_runs(db, status="needs_attention", now=T0.timestamp() + 10_000)] == ["r3"]
    [root] = trace(db, "r3")
    [call] = root["children"]
    assert [(s["name"], s["status"]) for s in call["children"]] == [("needs_attention deposit", "error")]

    resolved = [*stopped, run(ToolCallResolved(call_id="t9", tool="deposit", happened=True, result=1), 70)]
    db = fold(TracesView(), resolved).db
    assert [r["status"] for r in list_runs(db, now=T0.timestamp() + 71)] == ["running"]
    assert [r["status"] for r in list_runs(db, now=T0.timestamp() + 1000)] == ["interrupted"], "to be resumed"
    db = fold(TracesView(), [*resolved, run(RunFinished(status="ok"), 80)]).db
    assert [r["status"] for r in list_runs(db)] == ["ok"]


def test_sub_agent_runs_nest_in_their_parent() -> None:
    child = Run("r1.sub", agent="researcher")
    events = [*story(), child(RunStarted(name="dig", parent_run_id="r1"), 3.5),
              child(ToolCallRequested(call_id="s1", tool="fetch"), 3.6),
              child(ToolCallCompleted(call_id="s1", tool="fetch", duration_ms=10), 3.7),
              child(RunFinished(status="ok"), 3.8)]
    [root] = trace(fold(TracesView(), events).db, "r1")
    sub = node(root["children"], "r1.sub")
    assert sub["name"] == "invoke_agent researcher"
    assert (sub["status"], [c["name"] for c in sub["children"]]) == ("ok", ["execute_tool fetch"])


def test_circuit_transitions_on_the_run_routes_show_while_it_ran() -> None:
    worker = Run(None, agent=None)
    events = [*story(),
              worker(CircuitOpened(route="openai:gpt-4o", reason="5 failures in a row", cooldown_s=30), 1.5),
              worker(CircuitHalfOpened(route="openai:gpt-4o", probe_call_id="c1"), 1.9),
              worker(CircuitClosed(route="openai:gpt-4o", open_for_s=0.5), 2.0),
              worker(CircuitOpened(route="openai:gpt-4o", reason="later", cooldown_s=30), 60),
              worker(CircuitOpened(route="anthropic:claude", reason="elsewhere", cooldown_s=30), 1.5)]
    [root] = trace(fold(TracesView(), events).db, "r1")
    circuits = [c["name"] for c in root["children"] if c["kind"] == "circuit"]
    assert circuits == ["circuit opened openai:gpt-4o", "circuit closed openai:gpt-4o"]
    c1 = node(root["children"], "c1")
    assert "circuit half_opened openai:gpt-4o" in [c["name"] for c in c1["children"]], "under its probe call"
    assert root["children"][1]["status"] == "error" and root["children"][1]["attributes"]["tether.circuit.reason"]


def test_a_call_outside_any_run_is_traced_by_its_id() -> None:
    loose = Run(None, agent=None)
    db = fold(TracesView(), [loose(ToolCallRequested(call_id="x1", tool="t"), 0),
                             loose(ToolCallCompleted(call_id="x1", tool="t"), 1),
                             loose(CallRedriven(call_id="x1", new_call_id="x2"), 2)]).db
    assert list_runs(db) == []
    [call] = trace(db, "x1")
    assert (call["name"], call["status"], [c["kind"] for c in call["children"]]) == ("execute_tool t", "ok",
                                                                                     ["redrive"])
    assert call["children"][0]["attributes"]["tether.call.new_id"] == "x2"
    assert trace(db, "nope") == []


def test_a_run_without_lifecycle_events_takes_its_status_from_its_calls() -> None:
    ok, bad = Run("ok-run"), Run("bad-run")
    db = fold(TracesView(), [
        ok(ToolCallRequested(call_id="a", tool="t"), 0), ok(ToolCallCompleted(call_id="a", tool="t"), 1),
        bad(ToolCallRequested(call_id="b", tool="t"), 0),
        bad(CallDeadLettered(call_id="b", call_kind="tool", reason="not_retryable", attempts=1), 2),
        bad(ToolCallFailed(call_id="b", tool="t", attempts=1, error=DOWN), 2)]).db
    status = {r["run_id"]: (r["status"], r["ended_at"]) for r in list_runs(db)}
    assert status == {"ok-run": ("ok", T0.timestamp() + 1), "bad-run": ("error", T0.timestamp() + 2)}


# -- order and duplicates -------------------------------------------------------------------------


def test_a_completion_read_before_its_request_gives_the_same_rows() -> None:
    events = story()
    seqs = list(range(1, len(events) + 1))
    swapped = [0, 4, 3, 2, 1, *range(5, len(events))]  # completed, attempts, then requested
    in_order = fold(TracesView(), events)
    out_of_order = fold(TracesView(), [events[i] for i in swapped], seqs=[seqs[i] for i in swapped])
    assert out_of_order.checksum() == in_order.checksum()
    c1 = node(trace(out_of_order.db, "r1")[0]["children"], "c1")
    assert (c1["model"], c1["started_at"]) == ("gpt-4o-mini", T0.timestamp() + 1), "name and start from the request"


@pytest.mark.parametrize("seed", range(5))
def test_any_order_with_duplicates_gives_the_same_rows(seed: int) -> None:
    rng = random.Random(seed)
    events = [*story(), *crash()]
    events += [rng.choice(events) for _ in range(6)]  # redelivered: the same event at a later position
    events += [republished(rng.choice(events)) for _ in range(6)]  # re-sent under a new id
    seqs = list(range(1, len(events) + 1))
    order = list(range(len(events)))
    rng.shuffle(order)
    expected = fold(TracesView(), events)
    shuffled = fold(TracesView(), [events[i] for i in order], seqs=[seqs[i] for i in order])
    assert shuffled.checksum() == expected.checksum()
    assert trace(shuffled.db, "r1") == trace(expected.db, "r1")


def test_duplicates_do_not_double_any_count() -> None:
    events = [*story(), *crash()]
    once = list_runs(fold(TracesView(), events).db)
    twice = list_runs(fold(TracesView(), [*events, *events, *map(republished, events)]).db)
    strip = ("first_seq", "last_seq")
    assert [{k: v for k, v in r.items() if k not in strip} for r in twice] == [
        {k: v for k, v in r.items() if k not in strip} for r in once]
    assert once[1]["events"] == 14


# -- queries and the fold's shape -----------------------------------------------------------------


def test_list_runs_filters_newest_first() -> None:
    other = Run("r3", agent="helper")
    db = fold(TracesView(), [*story(), *crash(), other(RunStarted(), 30), other(RunFinished(status="ok"), 31)]).db
    assert [r["run_id"] for r in list_runs(db)] == ["r3", "r2", "r1"]
    assert [r["run_id"] for r in list_runs(db, agent="bot")] == ["r2", "r1"]
    assert [r["run_id"] for r in list_runs(db, status="running", now=T0.timestamp() + 40)] == ["r2"]
    assert [r["run_id"] for r in list_runs(db, since=T0.timestamp() + 5)] == ["r3", "r2"]
    assert [r["run_id"] for r in list_runs(db, limit=1)] == ["r3"]
    assert [r["run_id"] for r in list_runs(db, status="ok", limit=1)] == ["r3"]


def test_list_runs_searches_ids_agents_and_names_literally() -> None:
    other = Run("r3", agent="helper 100%")
    db = fold(TracesView(), [*story(), *crash(), other(RunStarted(name="Nightly Digest"), 30)]).db
    assert [r["run_id"] for r in list_runs(db, search="r2")] == ["r2"]
    assert [r["run_id"] for r in list_runs(db, search="BOT")] == ["r2", "r1"], "agent, case-insensitive"
    assert [r["run_id"] for r in list_runs(db, search="digest")] == ["r3"], "name"
    assert [r["run_id"] for r in list_runs(db, search="100%")] == ["r3"]
    assert list_runs(db, search="_") == [] and list_runs(db, search="r%2") == [], "% and _ are literal"
    assert [r["run_id"] for r in list_runs(db, search="")] == ["r3", "r2", "r1"]


def test_apply_is_pure_and_announces_the_run() -> None:
    view = TracesView()
    event = story()[4]
    ops = view.apply(event, 5)
    assert ops == view.apply(event, 5)
    assert {t.name for t in view.tables} == {op.table for op in ops}
    assert {view.notify_key(op) for op in ops} == {"r1"}
    assert all(isinstance(op, Upsert) for op in ops)


def test_events_it_does_not_read_only_move_the_checkpoint() -> None:
    view = TracesView()
    assert view.types is not None and "tether.llm.call.completed" in view.types
    future = Event.model_construct(**{**story()[4].__dict__, "type": "tether.llm.call.streamed"})
    assert future.type not in view.types
    store = fold(view, [future])
    assert table(store.db, "spans") == [] and store.seq == 1


# -- the batch fold ------------------------------------------------------------------------------


def _one_by_one(events: list[Event], seqs: list[int]) -> ViewStore:
    """Each event's own ops, executed in order: what TracesView.fold must leave."""
    store = ViewStore(TracesView(), Path(":memory:"))
    for seq, event in zip(seqs, events, strict=True):
        store._execute(TracesView().apply(event, seq))
    return store


def _odd_runs(rng: random.Random) -> list[Event]:
    """Runs whose events disagree: an agent only on later events, tenants, traceparents, times out of order."""
    out = []
    for r in range(3):
        agents = [None, "bot", "other"]
        rng.shuffle(agents)
        for i, agent in enumerate(agents):
            run = Run(f"q{r}", agent=agent, traceparent=rng.choice((None, TRACEPARENT)),
                      tenant=rng.choice((None, "t1", "t2")))
            out.append(run(ToolCallRequested(call_id=f"q{r}-t{i}", tool="search"), rng.uniform(0, 9)))
            if r and i == 1:  # run q0 has no run.started: its span's name comes from its first event
                out.append(run(RunStarted(name=f"n{i}"), rng.uniform(0, 9)))
            elif i == 2:
                out.append(run(RunFinished(status="ok"), rng.uniform(0, 9)))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_a_batch_folds_to_exactly_the_rows_of_its_events_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    events = [*story(), *crash(), *_odd_runs(rng)]
    events += [rng.choice(events) for _ in range(5)]
    events += [republished(rng.choice(events)) for _ in range(5)]
    rng.shuffle(events)
    seqs = list(range(1, len(events) + 1))
    before = rng.randint(0, len(events))  # some already in the view, the rest in one batch
    batched = ViewStore(TracesView(), Path(":memory:"))
    batched.apply_batch([Item(s, e) for s, e in zip(seqs[:before], events[:before], strict=True)])
    batched.apply_batch([Item(s, e) for s, e in zip(seqs[before:], events[before:], strict=True)])
    expected = _one_by_one(events, seqs)
    for name in ("runs", "spans"):
        assert table(batched.db, name) == table(expected.db, name)


def test_a_span_named_like_a_run_folds_event_by_event() -> None:
    clash = Run("c1", agent="bot")  # run id c1, as story()'s first LLM call
    events = [*story(), clash(RunStarted(name="clash"), 0.5), clash(RunFinished(status="ok"), 9)]
    seqs = list(range(1, len(events) + 1))
    batched = fold(TracesView(), events)
    expected = _one_by_one(events, seqs)
    for name in ("runs", "spans"):
        assert table(batched.db, name) == table(expected.db, name)


def test_an_event_the_fold_refuses_leaves_no_trace_of_itself_in_the_batch() -> None:
    events = story()
    broken = R(RunStarted(name="x"), 99)
    object.__setattr__(broken, "__dict__", {**broken.__dict__, "time": None})  # .timestamp() fails in the fold
    seqs = list(range(1, len(events) + 2))
    store = ViewStore(TracesView(), Path(":memory:"))
    store.apply_batch([Item(s, e) for s, e in zip(seqs, [*events, broken], strict=True)])
    assert [row[0] for row in store.db.execute("SELECT seq FROM _failed")] == [seqs[-1]]
    expected = _one_by_one(events, seqs[:-1])
    for name in ("runs", "spans"):
        assert table(store.db, name) == table(expected.db, name)


def test_attributes_are_written_as_the_standard_encoder_writes_them() -> None:
    import json

    from tether.projections.traces._fold import _encode

    standard = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for value in ({"a": 1}, {"é": "ü\n\"q\"", "n": None, "f": 0.1, "big": 1e300, "nan": float("nan"),
                             "inf": float("-inf"), "b": True, "l": [1, [2, {"x": "y"}]], "i": 2**70}, {}):
        assert _encode(value) == standard(value)


def test_a_call_inside_a_run_is_traced_by_its_id_through_the_primary_key() -> None:
    """No index on call_id: a call's spans are its own and those whose id begins with it and
    '#'; a call whose id begins the same way but is another call is not among them."""
    run = Run("r-calls")
    db = fold(TracesView(), [
        run(LlmCallRequested(call_id="c", provider="openai", model="m"), 0),
        run(LlmCallAttemptFailed(call_id="c", provider="openai", model="m", attempt=1, decision="retry",
                                 error=ErrorInfo(type="RateLimited", status_code=429), retry_in_s=0.5), 1),
        run(LlmCallCompleted(call_id="c", provider="openai", model="m", attempt=2), 2),
        run(ToolCallRequested(call_id="c#x", tool="t"), 3),
    ]).db
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    [call] = trace(db, "c")
    db.set_trace_callback(None)
    assert call["span_id"] == "c" and call["status"] == "ok"
    assert sorted(c["span_id"] for c in call["children"]) == ["c#a1", "c#a1/backoff", "c#a2"]
    [other] = trace(db, "c#x")
    assert other["name"] == "execute_tool t" and other["children"] == []
    span_reads = [sql for sql in statements if sql.startswith("SELECT * FROM spans")]
    assert len(span_reads) == 3  # by run, by call, and the circuit transitions on its routes
    for sql in span_reads:  # neither reads the whole table
        plan = " ".join(str(r) for r in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "SCAN spans" not in plan, (sql, plan)


def test_circuit_transitions_are_found_through_their_partial_index() -> None:
    db = fold(TracesView(), []).db
    indexes = {name: sql for name, sql in db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                                      "AND tbl_name = 'spans' AND sql IS NOT NULL")}
    assert set(indexes) == {"spans_run_id", "spans_circuit_route"}
    assert "WHERE kind = 'circuit'" in indexes["spans_circuit_route"]
    plan = " ".join(str(r) for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM spans WHERE kind = 'circuit' AND route IN (?) AND started_at BETWEEN ? AND ?",
        ("openai:m", 0, 1)))
    assert "spans_circuit_route" in plan, plan


def test_opening_a_view_file_of_earlier_code_drops_only_its_retired_indexes(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "traces.v1.db"
    old = sqlite3.connect(path)  # as earlier code left it, with an index of the user's own
    old.execute('CREATE TABLE spans (span_id TEXT, run_id TEXT, call_id TEXT, route TEXT, started_at REAL, '
                'kind TEXT, PRIMARY KEY (span_id))')
    old.execute('CREATE INDEX "spans_call_id" ON spans (call_id)')
    old.execute('CREATE INDEX "spans_route_started_at" ON spans (route, started_at)')
    old.execute('CREATE INDEX "my_dashboard" ON spans (kind)')
    old.execute("INSERT INTO spans (span_id, run_id, kind) VALUES ('s1', 'r1', 'llm')")
    old.commit()
    old.close()
    store = ViewStore(TracesView(), path)
    names = {n for (n,) in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert {"spans_call_id", "spans_route_started_at"}.isdisjoint(names)
    assert {"spans_run_id", "spans_circuit_route", "my_dashboard"} <= names
    assert store.db.execute("SELECT span_id, run_id FROM spans").fetchall() == [("s1", "r1")]
    store.close()


def test_inferred_tool_spans_and_a_run_the_gateway_resumed() -> None:
    run = Run("r9", agent="claw")
    events = [
        run(RunStarted(name="trace t", tags=("gateway",)), 0),
        run(ToolCallRequested(call_id="s1", tool="read", tool_call_id="call_1", inferred=True), 1),
        run(ToolCallFailed(call_id="s1", tool="read", attempts=1, inferred=True, duration_ms=500.0,
                           error=ErrorInfo(type="ToolResultMissing", message="the run was closed as idle")), 1.5),
        run(RunFinished(status="ok", duration_ms=1500.0, ended_by="idle"), 1.5),
    ]
    db = fold(TracesView(), events).db
    [root] = trace(db, "r9")
    assert root["status"] == "ok" and root["attributes"]["tether.run.ended_by"] == "idle"
    [tool] = root["children"]
    assert (tool["status"], tool["error_type"], tool["duration_ms"]) == ("error", "ToolResultMissing", 500.0)
    assert tool["attributes"]["tether.inferred"] is True and tool["attributes"]["gen_ai.tool.call.id"] == "call_1"
    resumed = run(RunStarted(name="trace t", tags=("gateway",), metadata={"resumed": True}), 5)
    db = fold(TracesView(), [*events, resumed]).db
    assert trace(db, "r9", now=T0.timestamp() + 6)[0]["status"] == "running", "the agent came back: the run runs again"
