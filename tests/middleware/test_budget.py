"""Budgets refuse a call before dispatch; the runaway guard stops runs that loop."""

from __future__ import annotations

import pytest

from tether.middleware import (
    MAX_FINGERPRINTS,
    BudgetCheck,
    BudgetLimits,
    BudgetRefusal,
    PolicySet,
    RunawayGuard,
    RunawayTracker,
    Spend,
    check_budget,
    check_budgets,
    request_fingerprint,
    runaway_count,
)
from tether.schemas import BudgetExceeded

# -- budgets ---------------------------------------------------------------------------


def test_within_budget() -> None:
    limits = BudgetLimits(usd=1.0, tokens=10_000, calls=10)
    assert check_budget("run", "r1", limits, Spend(0.5, 5000, 5), est_usd=0.5, est_tokens=5000) is None


def test_exactly_reaching_the_limit_is_allowed() -> None:
    limits = BudgetLimits(usd=0.3)
    assert check_budget("run", "r1", limits, Spend(usd=0.1 + 0.1), est_usd=0.1, est_tokens=0) is None


@pytest.mark.parametrize(
    ("limits", "spent", "est_usd", "est_tokens", "unit", "limit", "spent_value", "requested"),
    [
        (BudgetLimits(usd=1.0), Spend(usd=0.95), 0.08, 100, "usd", 1.0, 0.95, 0.08),
        (BudgetLimits(tokens=10_000), Spend(tokens=9_000), 0.0, 1_500, "tokens", 10_000, 9_000, 1_500),
        (BudgetLimits(calls=3), Spend(calls=3), 0.0, 0, "calls", 3, 3, 1),
        (BudgetLimits(usd=0.0), Spend(), 0.001, 1, "usd", 0.0, 0.0, 0.001),
    ],
)
def test_refusals(limits: BudgetLimits, spent: Spend, est_usd: float, est_tokens: int, unit: str,
                  limit: float, spent_value: float, requested: float) -> None:
    refusal = check_budget("agent", "bot", limits, spent, est_usd=est_usd, est_tokens=est_tokens)
    assert refusal == BudgetRefusal("agent", "bot", unit, limit, spent_value, requested)  # type: ignore[arg-type]


def test_dollars_are_checked_first() -> None:
    limits = BudgetLimits(usd=1.0, tokens=10, calls=0)
    refusal = check_budget("run", "r1", limits, Spend(usd=2.0, tokens=50, calls=9), est_usd=0.1, est_tokens=5)
    assert refusal is not None and refusal.unit == "usd"


def test_refusal_message_and_event() -> None:
    refusal = BudgetRefusal("run", "r1", "usd", 1.0, 0.95, 0.08)
    assert refusal.message == ("run r1 would exceed its usd budget: spent $0.9500 of $1.0000, "
                               "this call needs up to $0.0800")
    assert str(refusal) == refusal.message
    assert refusal.to_event(call_id="c1") == BudgetExceeded(scope="run", scope_id="r1", unit="usd", limit=1.0,
                                                            spent=0.95, requested=0.08, call_id="c1")
    tokens = BudgetRefusal("tenant", "acme", "tokens", 5_000_000, 4_999_000, 2_000)
    assert tokens.message == ("tenant acme would exceed its tokens budget: spent 4,999,000 tokens of "
                              "5,000,000 tokens, this call needs up to 2,000 tokens")


def test_an_unpriced_call_cannot_exceed_a_dollar_budget_but_is_noted() -> None:
    limits = BudgetLimits(usd=1.0)
    assert check_budget("run", "r1", limits, Spend(usd=0.99), est_usd=None, est_tokens=100) is None
    result = check_budgets([("run", "r1", limits)], {}, est_usd=None, est_tokens=100)
    assert result.allowed
    assert result.notes == ("the usd budget of run r1 cannot count this call: its model is unpriced",)
    # but a budget already overspent still refuses
    assert check_budget("run", "r1", limits, Spend(usd=1.5), est_usd=None, est_tokens=1) is not None


def test_every_scope_is_checked_and_the_first_refusal_wins() -> None:
    policies = PolicySet(budgets={("run", "*"): BudgetLimits(usd=1.0),
                                  ("agent", "bot"): BudgetLimits(calls=2),
                                  ("tenant", "acme"): BudgetLimits(usd=0.01)})
    budgets = policies.budgets_for(run_id="r1", agent_id="bot", tenant="acme")
    spent = {("run", "r1"): Spend(usd=0.5, calls=1), ("agent", "bot"): Spend(calls=1),
             ("tenant", "acme"): Spend(usd=0.009)}
    result = check_budgets(budgets, spent, est_usd=0.002, est_tokens=10)
    assert result == BudgetCheck(BudgetRefusal("tenant", "acme", "usd", 0.01, 0.009, 0.002))
    spent[("agent", "bot")] = Spend(calls=2)
    refusal = check_budgets(budgets, spent, est_usd=0.002, est_tokens=10).refusal
    assert refusal is not None and (refusal.scope, refusal.unit) == ("agent", "calls")
    # a run that has spent nothing yet is charged from zero
    assert check_budgets(budgets, {}, est_usd=0.002, est_tokens=10).allowed


def test_spend_adds_up() -> None:
    spend = Spend().add(usd=0.25, tokens=100).add(usd=None, tokens=50)
    assert spend == Spend(usd=0.25, tokens=150, calls=2)


# -- fingerprints ----------------------------------------------------------------------


def test_fingerprint_ignores_volatile_keys_and_key_order() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    same = {"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "gpt-4o",
            "stream": True, "stream_options": {"include_usage": True}, "user": "u-7", "metadata": {"a": 1},
            "store": False}
    assert request_fingerprint(body) == request_fingerprint(same)
    assert len(request_fingerprint(body)) == 64


@pytest.mark.parametrize(
    "change",
    [{"model": "gpt-4o-mini"}, {"temperature": 1}, {"messages": [{"role": "user", "content": "hi!"}]},
     {"seed": 3}],
)
def test_fingerprint_changes_with_what_is_asked(change: dict[str, object]) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    assert request_fingerprint(body) != request_fingerprint({**body, **change})


# -- the runaway guard -----------------------------------------------------------------


def test_identical_calls_are_stopped() -> None:
    tracker = RunawayTracker()
    guard = RunawayGuard(max_identical_calls=5)
    for _ in range(5):
        assert tracker.admit("r1", "fp", guard) is None
    assert tracker.admit("r1", "fp", guard) == ("run r1 repeated the same call 6 times "
                                                "(runaway.max_identical_calls=5)")
    assert tracker.counts("r1") == (5, {"fp": 5})  # a refused call is not counted
    assert tracker.admit("r1", "other", guard) is None  # a different call is fine
    assert tracker.admit("r2", "fp", guard) is None  # and so is another run


def test_calls_per_run_are_capped() -> None:
    tracker = RunawayTracker()
    guard = RunawayGuard(max_calls_per_run=3, max_identical_calls=None)
    for i in range(3):
        assert tracker.admit("r1", f"fp-{i}", guard) is None
    assert tracker.admit("r1", "fp-new", guard) == ("run r1 reached its limit of 3 calls "
                                                    "(runaway.max_calls_per_run=3)")


def test_no_guard_no_refusals() -> None:
    tracker = RunawayTracker()
    for _ in range(1000):
        assert tracker.admit("r1", "fp", RunawayGuard(None, None)) is None


def test_rebuild_from_counts() -> None:
    tracker = RunawayTracker.from_counts({"r1": (7, {"fp": 5, "other": 2})})
    assert tracker.counts("r1") == (7, {"fp": 5, "other": 2})
    assert tracker.admit("r1", "fp", RunawayGuard()) is not None
    assert tracker.counts("unknown") == (0, {})


def test_one_rule_for_memory_and_kv_records() -> None:
    """The tracker (inline calls, adapters) and a worker's KV record count by the same rule:
    the same refusals, the same record, the least recently repeated call forgotten first."""
    guard = RunawayGuard(max_calls_per_run=None, max_identical_calls=3)
    tracker, doc = RunawayTracker(), {"calls": 0, "fingerprints": {}}
    calls = ["loop", *(f"fp-{i}" for i in range(MAX_FINGERPRINTS - 1)), "loop", "loop", "one-more", "loop"]
    from_tracker = [tracker.admit("r1", fp, guard) for fp in calls]
    from_doc = [runaway_count(doc, "r1", fp, guard) for fp in calls]
    assert from_tracker == from_doc
    assert from_doc[-1] == "run r1 repeated the same call 4 times (runaway.max_identical_calls=3)"
    assert tracker.counts("r1") == (doc["calls"], doc["fingerprints"])
    assert len(doc["fingerprints"]) == MAX_FINGERPRINTS
    assert "fp-0" not in doc["fingerprints"]  # forgotten; the loop kept itself fresh
    assert doc["fingerprints"]["loop"] == 3


def test_the_tracker_stays_small() -> None:
    tracker = RunawayTracker(max_runs=100)
    free = RunawayGuard(None, None)
    for run in range(1000):
        tracker.admit(f"run-{run}", "fp", free)
    assert len(tracker) == 100
    assert tracker.counts("run-0") == (0, {})  # the oldest runs were forgotten
    assert tracker.counts("run-999") == (1, {"fp": 1})
    for i in range(MAX_FINGERPRINTS + 100):
        tracker.admit("run-999", "loop", free)  # a loop keeps its own fingerprint fresh...
        tracker.admit("run-999", f"one-off-{i}", free)
    calls, fingerprints = tracker.counts("run-999")
    assert calls == 1 + 2 * (MAX_FINGERPRINTS + 100)
    assert len(fingerprints) == MAX_FINGERPRINTS
    assert fingerprints["loop"] == MAX_FINGERPRINTS + 100  # ...so it is never the one forgotten
    tracker.forget("run-999")
    assert tracker.counts("run-999") == (0, {})
