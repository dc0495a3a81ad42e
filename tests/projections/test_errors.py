"""The errors view: normalisation, grouping, counting without double counts, order-insensitivity."""

from __future__ import annotations

import json
import random
from pathlib import Path

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
from tether.projections import ErrorsView, MetricsView, Projector, Upsert, ViewStore, replay, view_path
from tether.projections.errors import fingerprint, list_groups, normalise_message, occurrence_of
from tether.projections.metrics import stats
from tether.schemas import (
    BudgetExceeded,
    CallDeadLettered,
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    MemoryWritten,
    RunFinished,
    ToolCallAttemptFailed,
    ToolCallFailed,
)
from tether.testing import NatsServer
from tether.testing.fake_provider import FakeProvider

from ._events import T0, at, ev, fold

RATE = ErrorInfo(type="RateLimitError", status_code=429, message="Rate limit reached for requests 123 in org-abc")


def rate(n: int, org: str) -> ErrorInfo:
    return ErrorInfo(type="RateLimitError", status_code=429, message=f"Rate limit reached for requests {n} in {org}")


def attempt(call: str, error: ErrorInfo, decision: str = "retry", *, attempt: int = 1, provider: str = "openai",
            model: str = "gpt-4o") -> LlmCallAttemptFailed:
    return LlmCallAttemptFailed(call_id=call, provider=provider, model=model, attempt=attempt, error=error,
                                decision=decision)


def failed(call: str, error: ErrorInfo, *, provider: str = "openai", attempts: int = 1) -> LlmCallFailed:
    return LlmCallFailed(call_id=call, provider=provider, model="gpt-4o", attempts=attempts, error=error)


def dead(call: str, error: ErrorInfo | None, *, kind: str = "llm", reason: str = "exhausted") -> CallDeadLettered:
    return CallDeadLettered(call_id=call, call_kind=kind, reason=reason, attempts=1, error=error)


def groups(store: object, **kw: object) -> list[dict[str, object]]:
    return list_groups(store.db, **kw)  # type: ignore[attr-defined, arg-type]


# -- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [
    ("Rate limit reached for requests 123 in org-abc", "Rate limit reached for requests 98765 in org-x1y2"),
    ("Rate limit reached for gpt-4o in organization org-AbC on tokens per min (TPM): Limit 30000, Used 29500, "
     "Requested 800. Please try again in 1.2s.",
     "Rate limit reached for gpt-4o-mini in organization org-ZZZ on tokens per min (TPM): Limit 200000, "
     "Used 199000, Requested 4000. Please try again in 350ms."),
    ("request 0190a5e2-7b1c-7d3e-9f00-123456789abc timed out",
     "request 7f3e1c2a-0000-4000-8000-000000000001 timed out"),
    ("bad checksum deadbeef01 at 0x7ffd1234", "bad checksum 00c0ffee99 at 0x10"),
    ("The model 'gpt-5' does not exist", 'The model "o9-preview" does not exist'),
    ("see https://status.example.com/incidents/42?x=1 for details", "see http://10.0.0.1:8080/health for details"),
    ("ConnectionError: cannot reach 10.0.0.7:443", "ConnectionError: cannot reach 192.168.1.20:8443"),
    ("req_a81bc failed for user-joe", "req_zz failed for user-ann"),
])
def test_sibling_messages_normalise_alike(a: str, b: str) -> None:
    assert normalise_message(a) == normalise_message(b)


@pytest.mark.parametrize(("a", "b"), [
    ("Rate limit reached for requests 1 in org-a", "The server is overloaded or not ready yet."),
    ("max_tokens is too large", "temperature is too large"),
    ("Invalid API key", "Insufficient quota"),
])
def test_different_messages_stay_apart(a: str, b: str) -> None:
    assert normalise_message(a) != normalise_message(b)


def test_normalised_message_reads_well() -> None:
    assert normalise_message(RATE.message) == "Rate limit reached for requests <n> in <id>"
    assert normalise_message("can't find 'x' at https://a.b/c, ask bob@example.com") == \
        "can't find <val> at <url>, ask <email>"
    assert normalise_message("  two\n lines  ") == "two lines"
    assert len(normalise_message("word " * 400)) == 500


def test_fingerprint_parts() -> None:
    base = occurrence_of(ev(attempt("c1", rate(1, "org-a"))))
    assert base is not None
    same = occurrence_of(ev(attempt("c2", rate(2, "org-b"), "give_up")))
    other_provider = occurrence_of(ev(attempt("c3", RATE, provider="azure")))
    other_status = occurrence_of(ev(attempt("c4", RATE.model_copy(update={"status_code": 503}))))
    other_type = occurrence_of(ev(attempt("c5", RATE.model_copy(update={"type": "APIError"}))))
    assert same is not None and same.fingerprint == base.fingerprint
    assert len({base.fingerprint, *(f.fingerprint for f in (other_provider, other_status, other_type) if f)}) == 4
    assert base.fingerprint == fingerprint("RateLimitError", "llm:openai", 429,
                                           "Rate limit reached for requests <n> in <id>")


# -- pure apply ---------------------------------------------------------------------------------


def test_apply_is_pure_and_names_every_table() -> None:
    view = ErrorsView()
    event = ev(attempt("c1", RATE), 5, run="run-9")
    ops = list(view.apply(event, 42))
    assert ops == list(view.apply(event, 42))
    assert [op.table for op in ops] == ["groups", "occurrences", "group_runs"]
    assert all(isinstance(op, Upsert) for op in ops)
    group = ops[0].values  # type: ignore[union-attr]
    assert group["source"] == "llm:openai" and group["status_code"] == 429
    assert group["message"] == "Rate limit reached for requests <n> in <id>"
    assert json.loads(group["sample"]) == [f"{42:020d}", event.id, RATE.message]
    assert {view.notify_key(op) for op in ops} == {group["fingerprint"]}
    assert ops[1].values["event_id"] == event.id and ops[1].values["decision"] == "retry"  # type: ignore[union-attr]


def test_events_that_are_not_failures_are_untouched() -> None:
    view = ErrorsView()
    assert list(view.apply(ev(RunFinished(status="ok")), 1)) == []
    assert list(view.apply(ev(RunFinished(status="cancelled")), 2)) == []
    assert list(view.apply(ev(LlmCallCompleted(call_id="c", provider="p", model="m")), 3)) == []
    assert list(view.apply(ev(MemoryWritten(namespace="n", key="k", version=1, text="t")), 4)) == []


def test_an_unknown_or_newer_event_type_is_untouched() -> None:
    """A type this view does not read, even with a familiar payload, gives no rows; so does a
    type that a newer tether publishes (the runtime records undecodable ones as failed)."""
    view = ErrorsView()
    shaped_like_a_failure = failed("c1", RATE)
    future = Event.model_construct(**{**ev(shaped_like_a_failure).__dict__, "type": "tether.llm.call.abandoned"})
    assert list(view.apply(future, 1)) == []
    assert "tether.llm.call.abandoned" not in (view.types or ())


def test_a_payload_from_a_newer_schema_version_is_folded() -> None:
    wire = ev(failed("c1", RATE)).to_json()
    wire["dataschema"] = "urn:tether:schema:tether.llm.call.failed:v2"
    wire["data"]["cost_usd"] = 0.0  # a field this reader does not know yet
    event = Event.from_wire({k: v for k, v in wire.items() if k != "data"}, wire["data"])
    [group, occurrence, _] = list(ErrorsView().apply(event, 7))
    assert occurrence.values["kind"] == "final"  # type: ignore[union-attr]
    assert group.values["error_type"] == "RateLimitError"  # type: ignore[union-attr]


# -- folded into SQLite -------------------------------------------------------------------------


def test_one_call_is_one_group_with_its_decisions_and_dead_letter(tmp_path: Path) -> None:
    events = [
        ev(attempt("c1", rate(11, "org-a"), "retry", attempt=1), 1),
        ev(attempt("c1", rate(12, "org-a"), "retry", attempt=2), 2),
        ev(attempt("c1", rate(13, "org-a"), "give_up", attempt=3), 3),
        ev(failed("c1", rate(13, "org-a"), attempts=3), 3.1),
        ev(dead("c1", rate(13, "org-a")), 3.2),
    ]
    [g] = groups(fold(ErrorsView(), events, tmp_path / "e.db"))
    assert g["source"] == "llm:openai" and g["error_type"] == "RateLimitError" and g["status_code"] == 429
    assert g["count"] == 3, "three failed attempts; the final failure and dead letter are the third, not more"
    assert g["decisions"] == {"retry": 2, "fallback": 0, "give_up": 1}
    assert (g["attempts"], g["failed"], g["dead_letters"]) == (3, 1, 1)
    assert g["sample_message"] == "Rate limit reached for requests 11 in org-a"
    assert g["sample_event_id"] == events[0].id and g["sample_seq"] == 1
    assert (g["first_seen"], g["last_seen"]) == (at(1).timestamp(), at(3.1).timestamp())
    assert (g["first_seq"], g["last_seq"]) == (1, 4)
    assert (g["runs"], g["run_ids"]) == (1, ["run-1"])


def test_siblings_across_calls_and_runs_group_together(tmp_path: Path) -> None:
    events = [ev(attempt(f"c{i}", rate(100 + i, f"org-{i}")), i, run=f"run-{i % 3}") for i in range(7)]
    events.append(ev(attempt("c9", rate(1, "org-z"), provider="azure"), 9))
    [top, azure] = groups(fold(ErrorsView(), events, tmp_path / "e.db"))
    assert (top["count"], top["runs"], top["source"]) == (7, 3, "llm:openai")
    assert top["run_ids"] == ["run-0", "run-2", "run-1"], "most recently affected first"
    assert (azure["count"], azure["source"]) == (1, "llm:azure")


def test_refusals_and_deadlines_count_once_with_their_echoes(tmp_path: Path) -> None:
    refusal = ErrorInfo(type="BudgetExceeded", message="run run-1 would exceed 0.5 usd", retryable=False)
    deadline = ErrorInfo(type="DeadlineExceeded", message="the call's deadline passed", retryable=False)
    events = [
        ev(BudgetExceeded(scope="run", scope_id="run-1", unit="usd", limit=0.5, spent=0.49, requested=0.02,
                          call_id="c1"), 1),
        ev(failed("c1", refusal, attempts=0), 1),
        ev(dead("c1", refusal, reason="budget"), 1),
        ev(attempt("c2", rate(1, "org-a"), "retry"), 2),  # an earlier attempt failed for another reason
        ev(failed("c2", deadline), 3),
        ev(dead("c2", deadline, reason="deadline"), 3),
    ]
    found = {g["error_type"]: g for g in groups(fold(ErrorsView(), events, tmp_path / "e.db"))}
    assert set(found) == {"BudgetExceeded", "DeadlineExceeded", "RateLimitError"}
    budget = found["BudgetExceeded"]
    assert budget["source"] == "llm:openai"
    assert (budget["count"], budget["failed"], budget["dead_letters"], budget["budget_refusals"]) == (1, 1, 1, 1)
    assert (found["DeadlineExceeded"]["count"], found["DeadlineExceeded"]["dead_letters"]) == (1, 1)
    assert found["RateLimitError"]["count"] == 1


def test_dead_letters_without_a_call_and_failed_runs_stand_alone(tmp_path: Path) -> None:
    malformed = ErrorInfo(type="MalformedWorkItem", message="not a tether work item: 2 problem(s): kind: bad")
    events = [
        ev(dead("malformed-WORK-7", malformed, kind="unknown", reason="malformed"), 1, run=None),
        ev(dead("malformed-WORK-9", malformed, kind="unknown", reason="malformed"), 2, run=None),
        ev(dead("x", None, kind="unknown", reason="max_deliveries"), 3, run=None),
        ev(RunFinished(status="error", error=ErrorInfo(type="ValueError", message="bad input 42")), 4, run="r1"),
        ev(RunFinished(status="error", error=ErrorInfo(type="ValueError", message="bad input 7")), 5, run="r2"),
        ev(RunFinished(status="error"), 6, run="r3", agent=None),
        ev(BudgetExceeded(scope="agent", scope_id="bot", unit="tokens", limit=1000, spent=1200), 7),
    ]
    found = {(g["source"], g["error_type"]): g for g in groups(fold(ErrorsView(), events, tmp_path / "e.db"))}
    assert found[("dlq:unknown", "MalformedWorkItem")]["count"] == 2
    assert found[("dlq:unknown", "MalformedWorkItem")]["runs"] == 0
    assert found[("dlq:unknown", "DeadLettered")]["message"] == "max_deliveries"
    run = found[("run:bot", "ValueError")]
    assert (run["count"], run["runs_failed"], run["runs"], run["message"]) == (2, 2, 2, "bad input <n>")
    assert found[("run", "RunFailed")]["count"] == 1
    budget = found[("budget:agent", "BudgetExceeded")]
    assert budget["message"] == "tokens budget exceeded" and budget["count"] == 1
    assert budget["sample_message"] == "agent bot: tokens budget 1000 exceeded (spent 1200)"


def test_tool_failures_group_by_tool(tmp_path: Path) -> None:
    boom = ErrorInfo(type="APIConnectionError", message="ConnectionError: host 10.1.1.1 unreachable")
    events = [
        ev(ToolCallAttemptFailed(call_id="t1", tool="search", attempt=1, error=boom, decision="retry"), 1),
        ev(ToolCallAttemptFailed(call_id="t1", tool="search", attempt=2, error=boom, decision="give_up"), 2),
        ev(ToolCallFailed(call_id="t1", tool="search", attempts=2, error=boom), 2),
        ev(dead("t1", boom, kind="tool"), 2),
    ]
    [g] = groups(fold(ErrorsView(), events, tmp_path / "e.db"))
    assert (g["source"], g["count"], g["dead_letters"]) == ("tool:search", 2, 1)
    assert g["message"] == "ConnectionError: host <n> unreachable"


def test_the_same_event_twice_counts_once(tmp_path: Path) -> None:
    """Published twice under two message ids (a producer retried after the dedupe window):
    two stream sequences, one event id."""
    event = ev(attempt("c1", RATE), 1)
    store = fold(ErrorsView(), [event, ev(attempt("c2", RATE), 2), event], tmp_path / "e.db")
    [g] = groups(store)
    assert g["count"] == 2 and g["sample_seq"] == 1
    assert store.db.execute("SELECT seq FROM occurrences WHERE event_id = ?", (event.id,)).fetchall() == [(1,)]


def test_fold_is_order_insensitive(tmp_path: Path) -> None:
    """Any order of the same events (with their sequences) gives the same rows."""
    rng = random.Random(5)
    events, seqs = [], []
    for i in range(60):
        call = f"c{rng.randrange(15)}"
        payload = rng.choice([
            attempt(call, rate(rng.randrange(999), f"org-{i}"), rng.choice(["retry", "fallback", "give_up"])),
            failed(call, rate(i, "org-q")), dead(call, rate(i, "org-q")),
            RunFinished(status="error", error=ErrorInfo(type="KeyError", message=f"'k{i}'")),
            BudgetExceeded(scope="run", scope_id=f"r{i}", unit="calls", limit=3, spent=3, call_id=call),
        ])
        events.append(ev(payload, rng.uniform(0, 600), run=f"run-{rng.randrange(4)}"))  # times out of order
        seqs.append(i + 1)
    first = fold(ErrorsView(), events, tmp_path / "a.db", seqs=seqs)
    order = list(range(len(events)))
    rng.shuffle(order)
    second = fold(ErrorsView(), [events[i] for i in order], tmp_path / "b.db", seqs=[seqs[i] for i in order])
    assert first.checksum() == second.checksum()
    assert groups(first, limit=None) == groups(second, limit=None)
    [g] = [g for g in groups(first) if g["error_type"] == "KeyError"]
    times = [e.time.timestamp() for e in events if e.type == "tether.run.finished"]
    assert (g["first_seen"], g["last_seen"]) == (min(times), max(times)), "event time, not arrival order"


def test_window_source_and_limit(tmp_path: Path) -> None:
    boom = ErrorInfo(type="ToolError", message="nope")
    events = [ev(attempt(f"c{i}", RATE), i * 60) for i in range(10)]
    events += [ev(ToolCallAttemptFailed(call_id="t", tool="x", attempt=1, error=boom, decision="give_up"), 30)]
    store = fold(ErrorsView(), events, tmp_path / "e.db")
    [recent] = groups(store, since=at(8 * 60), source="llm")
    assert recent["count"] == 2 and recent["first_seen"] == T0.timestamp(), "first seen is over all time"
    assert groups(store, since=at(8 * 60).timestamp(), source="llm:openai")[0]["count"] == 2
    assert [g["source"] for g in groups(store)] == ["llm:openai", "tool:x"]
    assert [g["source"] for g in groups(store, source="tool")] == ["tool:x"]
    assert groups(store, source="llm:open") == []
    assert groups(store, since=at(9 * 60 + 1)) == []
    assert len(groups(store, limit=1)) == 1


# -- from a real executor ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.nats
async def test_an_executor_fault_mix_folds_into_groups_and_stats(fresh_nats_server: NatsServer,
                                                                 tmp_path: Path) -> None:
    """Real workers against the fake provider (429s, a 400, a 503 with a breaker and a fallback, a
    flaky tool), then the projector on the real log: the groups and stats say what happened, and a
    rebuild from the log gives the very same views."""
    quick = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)
    pset = PolicySet(routes={
        "*": Policy(retry=quick, timeout_s=5.0, breaker=BreakerPolicy(enabled=False)),
        "acme:m-down": Policy(retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02), timeout_s=5.0,
                              breaker=BreakerPolicy(failure_streak=2, cooldown_s=60),
                              fallback=FallbackPolicy(targets=(Target("acme", "m-ok"),), max_fallbacks=1)),
    }, runaway=RunawayGuard(max_calls_per_run=None, max_identical_calls=None))
    tools = ToolRegistry()
    flaky_calls: list[int] = []

    @tools.tool("flaky", idempotent=True)
    def flaky(n: int) -> int:
        flaky_calls.append(n)
        if len(flaky_calls) == 1:
            raise ConnectionError("cannot reach 10.0.0.7:443")
        return n * 2

    chat = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 20}
    async with FakeProvider(seed=7) as fake, await connect(fresh_nats_server.url, home=tmp_path / "home") as bus:
        executor = Executor(bus, policies=pset, providers={"acme": ProviderConfig("acme", "openai", fake.url)},
                            tools=tools, concurrency=8, seed=1)
        await executor.start()
        try:
            async with DurableCalls(bus) as calls:
                fake.set_faults("429(0.02s)#1-2=m-rate,400=m-bad,503=m-down")
                for _ in range(3):
                    await calls.llm("acme", "m-ok", chat, runid="run-ok", agentid="bot")
                await calls.llm("acme", "m-rate", chat, runid="run-rate", agentid="bot")
                with pytest.raises(CallFailed, match="BadRequestError"):
                    await calls.llm("acme", "m-bad", chat, runid="run-bad", agentid="bot")
                fell_back = await calls.llm("acme", "m-down", chat, runid="run-down", agentid="bot")
                assert fell_back.response["model"] == "m-ok"
                assert (await calls.tool("flaky", {"n": 21}, runid="run-tool")).response == 42
        finally:
            await executor.stop()
        await bus.flush()

        views = tmp_path / "views"
        async with Projector(bus, [ErrorsView(), MetricsView()], views, batch=16) as projector:
            await projector.catch_up()
        live = {name: ViewStore(view, view_path(views, name, view.version)) for name, view in
                (("errors", ErrorsView()), ("metrics", MetricsView()))}
        rebuilt = await replay(bus, [ErrorsView(), MetricsView()], tmp_path / "rebuilt")

    try:
        assert {name: store.checksum() for name, store in live.items()} == rebuilt
        found = {(g["source"], g["error_type"], g["status_code"]): g for g in list_groups(live["errors"].db)}
        assert set(found) == {("llm:acme", "RateLimitError", 429), ("llm:acme", "BadRequestError", 400),
                              ("llm:acme", "ServiceUnavailableError", 503), ("tool:flaky", "APIConnectionError", None)}
        limited = found[("llm:acme", "RateLimitError", 429)]
        assert (limited["count"], limited["decisions"]["retry"], limited["runs"]) == (2, 2, 1)
        assert limited["message"] == "Rate limit reached for requests. Please try again later."
        bad = found[("llm:acme", "BadRequestError", 400)]
        assert (bad["count"], bad["failed"], bad["dead_letters"], bad["run_ids"]) == (1, 1, 1, ["run-bad"])
        assert bad["decisions"] == {"retry": 0, "fallback": 0, "give_up": 1}
        down = found[("llm:acme", "ServiceUnavailableError", 503)]
        assert (down["count"], down["decisions"]["retry"], down["decisions"]["fallback"]) == (2, 1, 1)
        tool = found[("tool:flaky", "APIConnectionError", None)]
        assert tool["message"] == "ConnectionError: cannot reach <n>:<n>" and tool["count"] == 1

        models = {r["dim"]: r for r in stats(live["metrics"].db, by="model")}
        assert (models["m-ok"]["calls"], models["m-ok"]["latency_samples"]) == (4, 4), "three, and the fallback"
        assert models["m-ok"]["latency_p50_ms"] > 0 and models["m-ok"]["input_tokens"] > 0
        assert (models["m-rate"]["calls"], models["m-rate"]["attempts"]) == (1, 3)
        assert models["m-rate"]["retry_rate"] == pytest.approx(2 / 3)
        assert (models["m-bad"]["calls"], models["m-bad"]["dead_letters"]) == (1, 1)
        assert (models["m-down"]["calls"], models["m-down"]["fallback_rate"]) == (0, 0.5)
        assert models["m-down"]["breaker_opened"] == 1
        [acme] = stats(live["metrics"].db, by="provider")
        assert acme["calls"] == 6 and acme["requests"] == 6 and acme["breaker_transitions"] == 1
        [tool_row] = stats(live["metrics"].db, by="tool")
        assert (tool_row["dim"], tool_row["calls"], tool_row["retries"]) == ("flaky", 1, 1)
        [total] = stats(live["metrics"].db, by="all")
        assert total["calls"] == 7 and total["dead_letters"] == 1
    finally:
        for store in live.values():
            store.close()
