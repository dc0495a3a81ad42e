"""decide(): retry, fall back or give up, as a pure function of policy, history and failure."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tether.middleware import (
    AttemptRecord,
    Decision,
    Failure,
    Fallback,
    FallbackPolicy,
    GiveUp,
    Policy,
    Retry,
    RetryPolicy,
    Target,
    backoff_delay,
    decide,
    is_retryable,
)

PRIMARY = Target("openai", "gpt-4o")
MINI = Target("openai", "gpt-4o-mini")
HAIKU = Target("anthropic", "claude-haiku-4-5")
CHAIN = Policy(fallback=FallbackPolicy(targets=(MINI, HAIKU)))


def http(status: int, retry_after: float | None = None) -> Failure:
    return Failure(kind="http", status_code=status, retry_after_s=retry_after)


def history_of(*targets: Target | None, failure: Failure | None = None) -> list[AttemptRecord]:
    return [AttemptRecord(i + 1, t, failure or http(500), float(i), 0.1) for i, t in enumerate(targets)]


def once(policy: Policy, failure: Failure, *, history: list[AttemptRecord] | None = None,
         current: Target | None = PRIMARY, now: float = 10.0, seed: int = 0) -> Decision:
    history = history if history is not None else history_of(current, failure=failure)
    return decide(policy, history, failure, now=now, started_at=0.0, current=current, rng=random.Random(seed))


Failing = Callable[[Target | None, int], Failure]


def run_call(policy: Policy, fail: Failing, *, current: Target | None = PRIMARY, start: float = 0.0,
             attempt_s: float = 0.1, seed: int = 0) -> tuple[list[Target | None], Decision]:
    """Drive a call the way the executor does, every attempt failing; the targets tried, and the end."""
    rng = random.Random(seed)
    now = start
    history: list[AttemptRecord] = []
    while True:
        failure = fail(current, len(history) + 1)
        history.append(AttemptRecord(len(history) + 1, current, failure, now, attempt_s))
        now += attempt_s
        decision = decide(policy, history, failure, now=now, started_at=start, current=current, rng=rng)
        if isinstance(decision, GiveUp):
            return [record.target for record in history], decision
        if isinstance(decision, Fallback):
            current = decision.target
        now += decision.delay_s
        assert len(history) < 100, "decide() never gave up"


# -- what is retried -------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_never_retried(status: int) -> None:
    assert once(Policy(), http(status)) == GiveUp("not_retryable")
    assert once(CHAIN, http(status)) == GiveUp("not_retryable")  # nor do they fall back by default
    targets, end = run_call(CHAIN, lambda _t, _n: http(status))
    assert (targets, end) == ([PRIMARY], GiveUp("not_retryable"))


@pytest.mark.parametrize(
    "failure",
    [http(408), http(409), http(425), http(500), http(502), http(503), http(504),
     Failure(kind="timeout"), Failure(kind="connection"), Failure(kind="malformed")],
    ids=lambda f: f"{f.kind}-{f.status_code}",
)
def test_transient_failures_are_retried_up_to_max_attempts(failure: Failure) -> None:
    decision = once(Policy(), failure)
    assert isinstance(decision, Retry)
    assert decision.target == PRIMARY
    targets, end = run_call(Policy(), lambda _t, _n: failure)
    assert targets == [PRIMARY] * 3
    assert end == GiveUp("exhausted")


@pytest.mark.parametrize(
    "failure",
    [http(501), Failure(kind="tool_error", error_type="KeyError"), Failure(kind="cancelled")],
    ids=["501", "tool_error", "cancelled"],
)
def test_other_failures_are_not_retried(failure: Failure) -> None:
    assert once(Policy(), failure) == GiveUp("not_retryable")
    if failure.category != "server_error":
        assert once(CHAIN, failure) == GiveUp("not_retryable")


def test_a_server_error_not_worth_retrying_still_falls_back() -> None:
    # 501 is not in retry_statuses, but server_error is in fallback.on: another model may implement it
    assert once(CHAIN, http(501)) == Fallback(MINI, 0.0)


def test_retry_switches() -> None:
    no_timeouts = Policy(retry=RetryPolicy(retry_timeouts=False, retry_connection_errors=False))
    assert once(no_timeouts, Failure(kind="timeout")) == GiveUp("not_retryable")
    assert once(no_timeouts, Failure(kind="connection")) == GiveUp("not_retryable")
    assert not is_retryable(RetryPolicy(retry_statuses=frozenset({503})), http(500))
    assert is_retryable(RetryPolicy(retry_statuses=frozenset({503})), http(503))


# -- delays ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "policy", "delay"),
    [
        (2.0, Policy(), 2.0),
        (0.0, Policy(), 0.0),
        (45.0, Policy(), 45.0),
        (600.0, Policy(), 60.0),  # capped by max_retry_after_s
        (30.0, Policy(retry=RetryPolicy(max_retry_after_s=10.0)), 10.0),
    ],
)
def test_429_honours_retry_after_capped(retry_after: float, policy: Policy, delay: float) -> None:
    assert once(policy, http(429, retry_after)) == Retry(delay, PRIMARY)


def test_retry_after_can_be_ignored() -> None:
    policy = Policy(retry=RetryPolicy(honour_retry_after=False))
    decision = once(policy, http(429, 30.0))
    assert isinstance(decision, Retry)
    assert 0 <= decision.delay_s <= 0.25  # plain backoff instead


def test_503_with_retry_after_is_honoured_too() -> None:
    assert once(Policy(), http(503, 3.0)) == Retry(3.0, PRIMARY)


@pytest.mark.parametrize(("n", "ceiling"), [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (8, 20.0), (30, 20.0)])
def test_full_jitter_bounds_over_many_seeds(n: int, ceiling: float) -> None:
    policy = Policy(retry=RetryPolicy(max_attempts=50))
    history = history_of(*[PRIMARY] * n)
    delays = [once(policy, http(500), history=history, seed=seed) for seed in range(400)]
    values = [d.delay_s for d in delays if isinstance(d, Retry)]
    assert len(values) == 400
    assert all(0.0 <= v <= ceiling for v in values)
    # full jitter spreads over the whole range, not around the ceiling
    assert min(values) < ceiling * 0.05
    assert max(values) > ceiling * 0.95
    assert ceiling * 0.4 < sum(values) / len(values) < ceiling * 0.6


def test_backoff_is_reproducible_from_the_seed() -> None:
    retry = RetryPolicy()
    assert backoff_delay(retry, 3, random.Random(7)) == backoff_delay(retry, 3, random.Random(7))
    assert backoff_delay(retry, 10_000, random.Random(7)) <= retry.max_delay_s  # no overflow


def test_backoff_counts_attempts_on_the_current_target_only() -> None:
    policy = Policy(retry=RetryPolicy(max_attempts=5, base_delay_s=1.0),
                    fallback=FallbackPolicy(targets=(MINI,)), max_total_attempts=20)
    history = history_of(PRIMARY, PRIMARY, PRIMARY, PRIMARY, PRIMARY, MINI)
    delays = [once(policy, http(500), history=history, current=MINI, seed=s) for s in range(200)]
    assert all(isinstance(d, Retry) and d.delay_s <= 1.0 for d in delays)


# -- fallback --------------------------------------------------------------------------


def test_fallback_after_retries_in_order_and_the_total_is_shared() -> None:
    targets, end = run_call(CHAIN, lambda _t, _n: http(500))
    # 3 attempts and 2 fallbacks make 5 attempts in all, never 3 x 3 = 9
    assert targets == [PRIMARY, PRIMARY, PRIMARY, MINI, HAIKU]
    assert len(targets) == CHAIN.total_attempts == 5
    assert end == GiveUp("exhausted")


def test_more_retries_still_do_not_multiply() -> None:
    policy = Policy(retry=RetryPolicy(max_attempts=3), fallback=FallbackPolicy(targets=(MINI, HAIKU)),
                    max_total_attempts=7)
    targets, _ = run_call(policy, lambda _t, _n: Failure(kind="timeout"))
    assert targets == [PRIMARY] * 3 + [MINI] * 3 + [HAIKU]  # the last fallback keeps its one attempt


def test_a_tight_total_reserves_one_attempt_per_fallback() -> None:
    policy = Policy(fallback=FallbackPolicy(targets=(MINI, HAIKU)), max_total_attempts=3)
    targets, end = run_call(policy, lambda _t, _n: http(502))
    assert (targets, end) == ([PRIMARY, MINI, HAIKU], GiveUp("exhausted"))


def test_max_fallbacks_caps_the_chain() -> None:
    policy = Policy(fallback=FallbackPolicy(targets=(MINI, HAIKU, Target("x", "y")), max_fallbacks=1))
    targets, end = run_call(policy, lambda _t, _n: http(500))
    assert targets == [PRIMARY, PRIMARY, PRIMARY, MINI]
    assert end == GiveUp("exhausted")
    no_fallback = Policy(fallback=FallbackPolicy(targets=(MINI,), max_fallbacks=0))
    assert run_call(no_fallback, lambda _t, _n: http(500))[0] == [PRIMARY] * 3


def test_fallback_skips_targets_already_tried() -> None:
    policy = Policy(fallback=FallbackPolicy(targets=(PRIMARY, MINI)))
    assert once(policy, Failure(kind="breaker_open")) == Fallback(MINI, 0.0)


def test_fallback_succeeds_midway() -> None:
    # the executor stops calling decide() once an attempt succeeds; the chain shape before is what matters
    targets, _ = run_call(CHAIN, lambda t, _n: http(500) if t == PRIMARY else http(400))
    assert targets == [PRIMARY, PRIMARY, PRIMARY, MINI]


def test_breaker_open_falls_back_at_once() -> None:
    assert once(CHAIN, Failure.breaker_open("openai:gpt-4o", retry_after_s=25.0)) == Fallback(MINI, 0.0)


def test_breaker_open_without_fallback_waits_out_the_cooldown() -> None:
    for seed in range(50):
        decision = once(Policy(), Failure.breaker_open("openai:gpt-4o", retry_after_s=12.0), seed=seed)
        assert isinstance(decision, Retry)
        assert 12.0 <= decision.delay_s <= 12.25  # the cooldown, plus a little jitter against a herd
    unknown = once(Policy(), Failure(kind="breaker_open"))
    assert isinstance(unknown, Retry) and unknown.delay_s >= Policy().breaker.cooldown_s


def test_long_retry_after_falls_back_instead_of_waiting() -> None:
    assert once(CHAIN, http(429, 30.0)) == Fallback(MINI, 0.0)
    assert once(CHAIN, http(429, 2.0)) == Retry(2.0, PRIMARY)  # short: worth waiting for


def test_fallback_only_on_listed_categories() -> None:
    policy = Policy(fallback=FallbackPolicy(targets=(MINI,), on=frozenset({"rate_limit"})))
    assert isinstance(once(policy, http(429, 30.0)), Fallback)
    targets, end = run_call(policy, lambda _t, _n: http(500))
    assert (targets, end) == ([PRIMARY] * 3, GiveUp("exhausted"))


def test_client_error_listed_in_on_falls_back_without_retrying() -> None:
    # e.g. a context-length 400 that a bigger model would take
    policy = Policy(fallback=FallbackPolicy(targets=(MINI,), on=frozenset({"client_error"})))
    targets, end = run_call(policy, lambda _t, _n: http(400))
    assert (targets, end) == ([PRIMARY, MINI], GiveUp("not_retryable"))


def test_tool_calls_never_fall_back() -> None:
    policy = Policy(fallback=FallbackPolicy(targets=(MINI,)))
    targets, end = run_call(policy, lambda _t, _n: Failure(kind="timeout"), current=None)
    assert (targets, end) == ([None] * 3, GiveUp("exhausted"))
    assert isinstance(once(policy, Failure(kind="breaker_open"), current=None), Retry)


# -- the deadline ----------------------------------------------------------------------


def test_past_the_deadline_gives_up() -> None:
    policy = Policy(deadline_s=30.0)
    assert once(policy, http(500), now=30.0) == GiveUp("deadline")
    assert once(CHAIN, http(500), now=301.0) == GiveUp("deadline")


def test_a_delay_that_would_end_past_the_deadline_gives_up() -> None:
    policy = Policy(deadline_s=30.0)
    assert once(policy, http(429, 25.0), now=4.0) == Retry(25.0, PRIMARY)
    assert once(policy, http(429, 25.0), now=6.0) == GiveUp("deadline")


def test_deadline_bounds_a_whole_call() -> None:
    policy = Policy(deadline_s=2.0, retry=RetryPolicy(max_attempts=1000), max_total_attempts=1000)
    targets, end = run_call(policy, lambda _t, _n: Failure(kind="timeout"), attempt_s=0.5)
    assert end == GiveUp("deadline")
    assert 2 <= len(targets) <= 4


def test_no_deadline() -> None:
    policy = Policy(deadline_s=None)
    assert once(policy, http(429, 40.0), now=1e9) == Retry(40.0, PRIMARY)


def test_not_retryable_is_reported_as_such_even_when_out_of_budget() -> None:
    history = history_of(PRIMARY, PRIMARY, PRIMARY, failure=http(401))
    assert once(Policy(), http(401), history=history, now=1e6) == GiveUp("not_retryable")


def test_decisions_name_their_event_decision() -> None:
    assert (Retry(1.0, None).decision, Fallback(MINI).decision, GiveUp("exhausted").decision) == (
        "retry", "fallback", "give_up")
