"""The metrics view: samples and counters per minute and dimension, percentiles checked by hand."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tether.projections import Item, MetricsView, Upsert
from tether.projections.metrics import COUNTERS, percentile, stats, total
from tether.schemas import (
    BudgetExceeded,
    CallDeadLettered,
    CircuitClosed,
    CircuitOpened,
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    MemoryWritten,
    RunStarted,
    ToolCallAttemptFailed,
    ToolCallCompleted,
    Usage,
)

from ._events import T0, at, ev, fold

# gpt-4o: 20 latencies, the first ten in minute 0 (t = 0, 6, ... 54 s), the rest in minute 1.
BIG = [12, 15, 18, 20, 22, 25, 27, 30, 33, 35, 40, 45, 50, 60, 75, 90, 120, 200, 450, 900]
# gpt-4o-mini: 5 latencies and times to first token, streamed.
MINI = [(30, 100, 30), (40, 300, 10), (50, 200, 20), (70, 400, 50), (80, 500, 40)]
ERR = ErrorInfo(type="ServiceUnavailableError", status_code=503, message="overloaded")


def completed(model: str, latency: float, *, ttft: float | None = None, usage: Usage | None = None,
              call: str = "c") -> LlmCallCompleted:
    return LlmCallCompleted(call_id=call, provider="openai", model=model, latency_ms=latency, ttft_ms=ttft,
                            usage=usage or Usage(input_tokens=100, output_tokens=10))


def failed_attempt(decision: str, model: str = "gpt-4o") -> LlmCallAttemptFailed:
    return LlmCallAttemptFailed(call_id="x", provider="openai", model=model, attempt=1, error=ERR,
                                decision=decision)


def history() -> list[Event]:
    events = [ev(LlmCallRequested(call_id=f"r{i}", provider="openai", model="gpt-4o"), i * 6) for i in range(20)]
    events += [ev(completed("gpt-4o", v, call=f"r{i}"), i * 6 + 1) for i, v in enumerate(BIG)]
    events += [ev(completed("gpt-4o-mini", lat, ttft=ttft,
                            usage=Usage(input_tokens=50, output_tokens=5, cached_input_tokens=20)), t)
               for t, lat, ttft in MINI]
    events += [ev(failed_attempt(d), 65 + i) for i, d in enumerate(["retry"] * 5 + ["fallback"] * 2 + ["give_up"])]
    events += [
        ev(LlmCallFailed(call_id="x", provider="openai", model="gpt-4o", attempts=8, error=ERR), 110),
        ev(CallDeadLettered(call_id="x", call_kind="llm", reason="exhausted", attempts=8, error=ERR), 110),
        ev(CircuitOpened(route="openai:gpt-4o", reason="5 failures in a row", cooldown_s=30), 100),
        ev(CircuitClosed(route="openai:gpt-4o", open_for_s=12), 112),
        ev(CircuitOpened(route="tool:search", reason="streak", cooldown_s=30), 20),
        ev(BudgetExceeded(scope="run", scope_id="r", unit="usd", limit=1, spent=1), 5),
        ev(ToolCallAttemptFailed(call_id="t1", tool="search", attempt=1, error=ERR, decision="retry"), 8),
    ]
    events += [ev(ToolCallCompleted(call_id=f"t{i}", tool="search", duration_ms=d), 10 + i) for i, d in
               enumerate([9, 5, 7])]
    return events


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    return fold(MetricsView(), history(), tmp_path / "m.db")


def by_dim(rows: list[dict[str, object]]) -> dict[object, dict[str, object]]:
    return {r["dim"]: r for r in rows}


# -- percentiles --------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert percentile(BIG, 50) == 35  # rank ceil(0.50 * 20) = 10
    assert percentile(BIG, 95) == 450  # rank ceil(0.95 * 20) = 19
    assert percentile(BIG, 99) == 900  # rank ceil(0.99 * 20) = 20
    assert percentile([7.0], 50) == 7.0 and percentile([1, 2], 0) == 1
    assert percentile([], 50) is None


# -- pure apply ---------------------------------------------------------------------------------


def test_a_completed_call_counts_in_model_provider_and_all() -> None:
    view = MetricsView()
    event = ev(completed("gpt-4o", 120.0, ttft=40.0), 61)
    ops = list(view.apply(event, 9))
    assert ops == list(view.apply(event, 9)), "pure"
    counters = [op.values for op in ops if op.table == "counters"]  # type: ignore[union-attr]
    assert [(c["dim_kind"], c["dim"]) for c in counters] == [("model", "gpt-4o"), ("provider", "openai"),
                                                               ("all", "*")]
    assert all(c["bucket"] == T0.timestamp() + 60 and c["calls"] == 1 and c["input_tokens"] == 100 for c in counters)
    samples = [op.values for op in ops if op.table == "samples"]  # type: ignore[union-attr]
    assert samples == [
        {"seq": 9, "metric": "latency_ms", "bucket": T0.timestamp() + 60, "model": "gpt-4o", "provider": "openai",
         "tool": None, "value": 120.0},
        {"seq": 9, "metric": "ttft_ms", "bucket": T0.timestamp() + 60, "model": "gpt-4o", "provider": "openai",
         "tool": None, "value": 40.0},
    ]
    assert {view.notify_key(op) for op in ops} == {"model:gpt-4o", "provider:openai", "all:*", None}


def test_merge_rules_add_every_counter() -> None:
    [op, *_] = MetricsView().apply(ev(failed_attempt("retry")), 1)
    assert isinstance(op, Upsert) and set(op.merge) == set(COUNTERS) and set(op.merge.values()) == {"add"}


def test_events_it_does_not_read_are_untouched() -> None:
    view = MetricsView()
    assert list(view.apply(ev(RunStarted(name="x")), 1)) == []
    assert list(view.apply(ev(MemoryWritten(namespace="n", key="k", version=1, text="t")), 2)) == []
    future = Event.model_construct(**{**ev(completed("m", 1.0)).__dict__, "type": "tether.llm.call.streamed"})
    assert list(view.apply(future, 3)) == [], "a type a newer tether publishes"


def test_a_payload_from_a_newer_schema_version_is_folded() -> None:
    wire = ev(completed("gpt-4o", 80.0)).to_json()
    wire["dataschema"] = "urn:tether:schema:tether.llm.call.completed:v3"
    wire["data"]["queue_ms"] = 4.0
    event = Event.from_wire({k: v for k, v in wire.items() if k != "data"}, wire["data"])
    assert sum(op.table == "samples" for op in MetricsView().apply(event, 1)) == 1


# -- folded and read ----------------------------------------------------------------------------


def test_latency_percentiles_per_model_by_hand(store) -> None:  # type: ignore[no-untyped-def]
    rows = by_dim(stats(store.db, by="model"))
    big, mini = rows["gpt-4o"], rows["gpt-4o-mini"]
    assert (big["latency_p50_ms"], big["latency_p95_ms"], big["latency_p99_ms"]) == (35, 450, 900)
    assert (mini["latency_p50_ms"], mini["latency_p95_ms"], mini["latency_p99_ms"]) == (300, 500, 500)
    assert (mini["ttft_p50_ms"], big["ttft_p50_ms"]) == (30, None)
    assert big["latency_samples"] == 20 and mini["ttft_samples"] == 5
    assert list(rows) == ["gpt-4o", "gpt-4o-mini"], "busiest first"


def test_provider_percentiles_pool_its_models(store) -> None:  # type: ignore[no-untyped-def]
    [openai] = stats(store.db, by="provider")
    # The 25 samples sorted: ranks 13, 24 and 25 are 50, 500 and 900.
    assert (openai["latency_p50_ms"], openai["latency_p95_ms"], openai["latency_p99_ms"]) == (50, 500, 900)
    assert (openai["input_tokens"], openai["output_tokens"]) == (20 * 100 + 5 * 50, 20 * 10 + 5 * 5)
    assert openai["cached_input_tokens"] == 5 * 20 and openai["tokens"] == 2250 + 225


def test_throughput_rates_dead_letters_and_breakers(store) -> None:  # type: ignore[no-untyped-def]
    big = by_dim(stats(store.db, by="model"))["gpt-4o"]
    assert big["calls"] == 21 and big["requests"] == 20, "20 completed and 1 that gave up"
    assert big["calls_per_s"] == pytest.approx(21 / 120), "two whole minutes"
    assert big["attempts"] == 28
    assert big["retry_rate"] == pytest.approx(5 / 28) and big["fallback_rate"] == pytest.approx(2 / 28)
    assert big["error_rate"] == pytest.approx(8 / 28)
    assert (big["retries"], big["fallbacks"], big["give_ups"], big["dead_letters"]) == (5, 2, 1, 1)
    assert (big["breaker_opened"], big["breaker_transitions"]) == (1, 2)
    assert by_dim(stats(store.db, by="provider"))["openai"]["breaker_transitions"] == 2
    search = by_dim(stats(store.db, by="tool"))["search"]
    assert (search["calls"], search["latency_p50_ms"], search["retries"], search["breaker_opened"]) == (3, 7, 1, 1)
    assert search["retry_rate"] == pytest.approx(1 / 4)


def test_totals(store) -> None:  # type: ignore[no-untyped-def]
    [total] = stats(store.db, by="all")
    assert total["dim"] == "*" and total["calls"] == 21 + 5 + 3
    assert total["latency_samples"] == 25 + 3, "every provider and tool sample"
    assert total["dead_letters"] == 1, "the call.dead_lettered events"
    assert total["budget_exceeded"] == 1 and total["breaker_transitions"] == 3


def test_llm_and_tool_totals_are_the_sums_of_their_rows(store) -> None:  # type: ignore[no-untyped-def]
    """What `tether stats` prints as TOTAL: the rows shown add up to it (`by="all"` mixes in tools)."""
    for by, of in (("model", "llm"), ("provider", "llm"), ("tool", "tool")):
        rows = stats(store.db, by=by)
        [row] = total(store.db, of)  # type: ignore[arg-type]
        assert row["dim_kind"] == of and row["dim"] == "*"
        for key in ("calls", "attempts", "requests", "retries", "fallbacks", "dead_letters", "input_tokens",
                    "breaker_transitions"):
            assert row[key] == sum(r[key] for r in rows), (by, key)
        assert row["latency_samples"] == sum(r["latency_samples"] for r in rows)
    [llm] = total(store.db, "llm")
    assert (llm["latency_p50_ms"], llm["latency_p99_ms"]) == (50, 900), "over the 25 LLM samples, as by provider"
    assert total(store.db, "tool")[0]["latency_samples"] == 3
    assert [r["calls"] for r in total(store.db, "llm", bucket=60)] == [13, 13]
    with pytest.raises(ValueError, match="of must be"):
        total(store.db, "all")  # type: ignore[arg-type]


def test_window_and_buckets(store) -> None:  # type: ignore[no-untyped-def]
    recent = by_dim(stats(store.db, by="model", since=at(75)))  # counts from the minute 75 s falls in
    assert recent["gpt-4o"]["calls"] == 11 and recent["gpt-4o"]["calls_per_s"] == pytest.approx(11 / 60)
    assert recent["gpt-4o"]["latency_p50_ms"] == 75  # 40 45 50 60 [75] 90 120 200 450 900
    assert recent["gpt-4o-mini"]["calls"] == 2
    series = [(r["bucket"] - T0.timestamp(), r["dim"], r["calls"], r["latency_p50_ms"])
              for r in stats(store.db, by="model", bucket=60)]
    assert series == [(0, "gpt-4o", 10, 22), (0, "gpt-4o-mini", 3, 200), (60, "gpt-4o", 11, 75),
                      (60, "gpt-4o-mini", 2, 400)]
    [whole] = [r for r in stats(store.db, by="model", bucket=3600) if r["dim"] == "gpt-4o"]
    assert whole["calls"] == 21 and whole["calls_per_s"] == pytest.approx(21 / 3600)
    assert stats(store.db, by="model", since=at(3600)) == []
    with pytest.raises(ValueError, match="multiple of 60"):
        stats(store.db, bucket=90)
    with pytest.raises(ValueError, match="by must be"):
        stats(store.db, by="route")  # type: ignore[arg-type]


def test_fold_is_order_insensitive_and_exactly_once(tmp_path: Path, store) -> None:  # type: ignore[no-untyped-def]
    events = history()
    order = list(range(len(events)))
    random.Random(3).shuffle(order)
    shuffled = fold(MetricsView(), [events[i] for i in order], tmp_path / "s.db", seqs=[i + 1 for i in order])
    assert shuffled.checksum() == store.checksum()
    before = store.checksum()
    store.apply_batch([Item(i + 1, e) for i, e in enumerate(events)])  # redelivered: at or below the checkpoint
    assert store.checksum() == before
