"""Rate limits: pacing before the limit, the sliding window, and requests bigger than the limit."""

from __future__ import annotations

import random

import pytest

from tether.middleware import WINDOW_S, RateLimitPolicy, RateState, rate_acquire, rate_adjust

T0 = 1_800_000_000.0  # on a minute boundary


def fill(policy: RateLimitPolicy, state: RateState | None, *, now: float, tokens: int = 0,
         limit: int = 100_000) -> tuple[int, RateState | None]:
    """Acquire at ``now`` until refused; how many went, and the state."""
    for n in range(limit):
        wait, new = rate_acquire(policy, state, now=now, tokens=tokens)
        if wait > 0:
            assert new == state  # a refusal leaves the state as it was
            return n, state
        state = new
    raise AssertionError("never refused")


def test_no_limits_never_wait() -> None:
    state = None
    for i in range(1000):
        wait, new = rate_acquire(RateLimitPolicy(), state, now=T0 + i / 1000, tokens=10**9)
        assert wait == 0.0
        state = new
        assert state.requests == 0  # nothing to count


def test_requests_per_minute_allows_the_limit_then_paces() -> None:
    policy = RateLimitPolicy(requests_per_minute=60)
    went, state = fill(policy, None, now=T0 + 0.5)
    assert went == 60
    wait, _ = rate_acquire(policy, state, now=T0 + 0.5, tokens=0)
    # the 60 in this window must slide out far enough for one more: 1 s into the next window
    assert wait == pytest.approx(60.5)
    assert rate_acquire(policy, state, now=T0 + 0.5 + wait, tokens=0)[0] == 0.0


def test_the_window_slides() -> None:
    policy = RateLimitPolicy(requests_per_minute=60)
    _, state = fill(policy, None, now=T0 + 1)
    # half-way through the next window, half of the previous one still counts
    went, state = fill(policy, state, now=T0 + WINDOW_S + 30)
    assert went == 30
    # two windows on, the first is forgotten entirely
    went, _ = fill(policy, state, now=T0 + 3 * WINDOW_S)
    assert went == 60


def test_tokens_per_minute() -> None:
    policy = RateLimitPolicy(tokens_per_minute=1000)
    went, state = fill(policy, None, now=T0, tokens=400)
    assert went == 2
    assert state is not None and state.tokens == 800
    wait, _ = rate_acquire(policy, state, now=T0, tokens=100)  # a smaller one still fits
    assert wait == 0.0


def test_both_limits_must_hold() -> None:
    policy = RateLimitPolicy(requests_per_minute=10, tokens_per_minute=1000)
    went, _ = fill(policy, None, now=T0, tokens=10)
    assert went == 10  # requests ran out first
    went, _ = fill(policy, None, now=T0, tokens=300)
    assert went == 3  # tokens ran out first


def test_a_request_bigger_than_the_token_limit_goes_alone() -> None:
    policy = RateLimitPolicy(tokens_per_minute=1000)
    wait, state = rate_acquire(policy, None, now=T0 + 5, tokens=5000)
    assert wait == 0.0  # an empty window: let it through rather than block forever
    wait, _ = rate_acquire(policy, state, now=T0 + 5, tokens=10)
    assert wait > 0  # and then nothing else until it has slid out
    wait, _ = rate_acquire(policy, state, now=T0 + 5, tokens=5000)
    assert wait == pytest.approx(2 * WINDOW_S - 5)  # the window must be empty again
    assert rate_acquire(policy, state, now=T0 + 5 + wait, tokens=5000)[0] == 0.0


def test_an_oversized_request_waits_for_an_empty_window() -> None:
    policy = RateLimitPolicy(tokens_per_minute=1000)
    _, state = rate_acquire(policy, None, now=T0 + 10, tokens=600)
    wait, _ = rate_acquire(policy, state, now=T0 + 10, tokens=5000)
    assert wait == pytest.approx(2 * WINDOW_S - 10)


@pytest.mark.parametrize("seed", range(40))
def test_the_wait_is_exactly_long_enough(seed: int) -> None:
    rng = random.Random(seed)
    policy = RateLimitPolicy(requests_per_minute=rng.randint(1, 50), tokens_per_minute=rng.randint(100, 5000))
    now = T0 + rng.uniform(0, 60)
    state: RateState | None = None
    checked = 0
    for _ in range(300):
        tokens = rng.randint(1, 400)
        wait, new = rate_acquire(policy, state, now=now, tokens=tokens)
        if wait > 0:
            assert rate_acquire(policy, state, now=now + wait + 1e-6, tokens=tokens)[0] == 0.0
            if wait > 0.05:
                assert rate_acquire(policy, state, now=now + wait - 0.02, tokens=tokens)[0] > 0
            checked += 1
            now += wait + rng.uniform(0, 2)
        else:
            state = new
            now += rng.expovariate(2.0)
    assert checked > 0


def test_pacing_holds_the_long_run_rate() -> None:
    policy = RateLimitPolicy(requests_per_minute=120)
    state: RateState | None = None
    now, sent = T0 + 13.0, []
    while now < T0 + 13.0 + 600:
        wait, new = rate_acquire(policy, state, now=now, tokens=0)
        if wait:
            now += wait
            continue
        state = new
        sent.append(now)
    assert 120 * 10 <= len(sent) <= 120 * 11  # ten minutes at 120/min, plus the first burst
    for i, t in enumerate(sent):  # and no 60 s span ever saw twice the limit
        assert sum(1 for u in sent[i:i + 300] if u < t + WINDOW_S) <= 2 * 120


def test_a_worker_whose_clock_is_behind_counts_in_the_current_window() -> None:
    policy = RateLimitPolicy(requests_per_minute=5)
    _, state = rate_acquire(policy, None, now=T0 + 61, tokens=0)
    wait, behind = rate_acquire(policy, state, now=T0 + 59, tokens=0)
    assert wait == 0.0
    assert (behind.window_start, behind.requests) == (T0 + 60, 2)


def test_adjusting_to_the_real_usage() -> None:
    policy = RateLimitPolicy(tokens_per_minute=1000)
    _, state = rate_acquire(policy, None, now=T0, tokens=900)
    assert rate_acquire(policy, state, now=T0, tokens=500)[0] > 0
    state = rate_adjust(state, now=T0 + 1, tokens_delta=-700)  # it used 200, not 900
    assert state.tokens == 200
    assert rate_acquire(policy, state, now=T0 + 1, tokens=500)[0] == 0.0
    assert rate_adjust(state, now=T0 + 1, tokens_delta=-10_000).tokens == 0


def test_json_round_trip() -> None:
    state = RateState(T0, 3, 1200, 50, 90_000)
    assert RateState.from_json(state.to_json()) == state
    for garbage in (b"[]", b'{"window_start": 1}', b'{"window_start": "x", "requests": 1, "tokens": 1, '
                                                      b'"prev_requests": 1, "prev_tokens": 1}'):
        with pytest.raises(ValueError, match="rate-limit state"):
            RateState.from_json(garbage)
