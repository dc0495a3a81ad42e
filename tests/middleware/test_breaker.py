"""The circuit breaker state machine: opening, cooldown, one probe, closing, and a stuck probe."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from nats.js.errors import KeyNotFoundError

from tether.middleware import (
    BreakerPolicy,
    BreakerState,
    Transition,
    breaker_admit,
    breaker_record,
    breaker_retry_in,
)
from tether.middleware._shared import Breakers
from tether.schemas import CircuitClosed, CircuitHalfOpened, CircuitOpened

POLICY = BreakerPolicy(failure_streak=5, failure_rate=0.5, min_calls=10, window=20, cooldown_s=30.0)


def fail(state: BreakerState, now: float = 0.0, call_id: str = "c", policy: BreakerPolicy = POLICY,
         ) -> tuple[BreakerState, Transition | None]:
    return breaker_record(policy, state, ok=False, counts=True, now=now, call_id=call_id)


def succeed(state: BreakerState, now: float = 0.0, call_id: str = "c", policy: BreakerPolicy = POLICY,
            ) -> tuple[BreakerState, Transition | None]:
    return breaker_record(policy, state, ok=True, counts=True, now=now, call_id=call_id)


def opened(at: float = 100.0) -> BreakerState:
    state = BreakerState()
    for _ in range(POLICY.failure_streak):
        state, _ = fail(state, now=at)
    assert state.state == "open"
    return state


# -- opening ---------------------------------------------------------------------------


def test_a_streak_opens_it() -> None:
    state = BreakerState()
    for i in range(4):
        state, transition = fail(state, now=float(i))
        assert (state.state, transition) == ("closed", None)
    state, transition = fail(state, now=4.0)
    assert state.state == "open"
    assert state.opened_at == 4.0
    assert transition == Transition("opened", "5 failures in a row", 5, 1.0)


def test_a_success_resets_the_streak() -> None:
    state = BreakerState()
    for _ in range(4):
        state, _ = fail(state)
    state, _ = succeed(state)
    assert state.streak == 0
    for _ in range(4):
        state, _ = fail(state)
    assert state.state == "closed"


def test_a_failure_rate_opens_it_once_there_are_min_calls() -> None:
    policy = BreakerPolicy(failure_streak=100, failure_rate=0.5, min_calls=10, window=20)
    state = BreakerState()
    transition = None
    for i in range(9):  # fail, ok, fail, ok... 5 of 9 failed, but fewer than min_calls
        state, transition = (fail if i % 2 == 0 else succeed)(state, policy=policy)
    assert (state.state, transition) == ("closed", None)
    state, transition = succeed(state, policy=policy)  # 10 calls, 5 failed: 50%
    assert state.state == "closed"  # a success never opens it
    state, transition = fail(state, now=7.0, policy=policy)  # 11 calls, 6 failed
    assert state.state == "open"
    assert transition is not None
    assert transition.reason == "6 of the last 11 calls failed"
    assert transition.failure_rate == pytest.approx(6 / 11)


def test_the_window_forgets_old_outcomes() -> None:
    policy = BreakerPolicy(failure_streak=100, failure_rate=0.5, min_calls=4, window=4)
    state = BreakerState()
    for outcome in (False, True, False, True, True, True):
        state, _ = breaker_record(policy, state, ok=outcome, counts=True, now=0.0, call_id="c")
    assert state.recent == (False, True, True, True)
    assert state.failure_rate == 0.25


def test_failures_that_do_not_count_change_nothing() -> None:
    state = BreakerState(streak=4, recent=(False,) * 4)
    for _ in range(20):
        new, transition = breaker_record(POLICY, state, ok=False, counts=False, now=0.0, call_id="c")
        assert (new, transition) == (state, None)


def test_a_healthy_route_needs_no_writes() -> None:
    # once the window is full of successes, another success returns an equal state: nothing to store
    policy = BreakerPolicy(window=3, min_calls=3)
    state = BreakerState()
    for _ in range(3):
        state, _ = succeed(state, policy=policy)
    assert succeed(state, policy=policy) == (state, None)


# -- open, cooldown, half-open ---------------------------------------------------------


def test_open_refuses_until_the_cooldown_has_passed() -> None:
    state = opened(at=100.0)
    for now in (100.0, 110.0, 129.99):
        allowed, new, transition = breaker_admit(POLICY, state, now=now, call_id="x")
        assert (allowed, new, transition) == (False, state, None)
        assert breaker_retry_in(POLICY, state, now=now) == pytest.approx(130.0 - now)


def test_after_the_cooldown_one_call_becomes_the_probe() -> None:
    state = opened(at=100.0)
    allowed, state, transition = breaker_admit(POLICY, state, now=130.0, call_id="probe")
    assert allowed
    assert (state.state, state.probe, state.probe_started) == ("half_open", "probe", 130.0)
    assert transition is not None and transition.to == "half_opened"
    assert transition.probe_call_id == "probe"


def test_exactly_one_probe_when_many_ask_at_once() -> None:
    """Workers read the state, decide, and compare-and-set it back; only the first write wins.

    The losers re-read and decide again: they must all be refused, and only the winner's
    transition is published.
    """
    store: dict[str, object] = {"revision": 1, "state": opened(at=100.0)}
    callers = [f"call-{i}" for i in range(50)]
    snapshot = (store["revision"], store["state"])  # every caller read revision 1 at the same instant
    admitted: list[str] = []
    published: list[Transition] = []
    for caller in callers:
        revision, seen = snapshot
        assert isinstance(seen, BreakerState)
        while True:
            allowed, new, transition = breaker_admit(POLICY, seen, now=131.0, call_id=caller)
            if new == seen:  # nothing to write: the decision stands as read
                break
            if store["revision"] == revision:  # compare-and-set succeeds
                store["revision"], store["state"] = revision + 1, new  # type: ignore[operator]
                if transition is not None:
                    published.append(transition)
                break
            revision, seen = store["revision"], store["state"]  # conflict: read again, decide again
            assert isinstance(seen, BreakerState)
        if allowed:
            admitted.append(caller)
    assert admitted == ["call-0"]
    assert [t.to for t in published] == ["half_opened"]


def test_the_probe_may_ask_again() -> None:
    _, state, _ = breaker_admit(POLICY, opened(), now=130.0, call_id="probe")
    assert breaker_admit(POLICY, state, now=131.0, call_id="probe") == (True, state, None)
    assert breaker_admit(POLICY, state, now=131.0, call_id="other")[0] is False
    assert breaker_retry_in(POLICY, state, now=131.0) == pytest.approx(29.0)


def test_probe_success_closes_it() -> None:
    _, state, _ = breaker_admit(POLICY, opened(at=100.0), now=130.0, call_id="probe")
    state, transition = succeed(state, now=131.5, call_id="probe")
    assert state == BreakerState()
    assert transition == Transition("closed", "probe succeeded", 0, None, open_for_s=31.5)
    assert breaker_admit(POLICY, state, now=132.0, call_id="anyone")[0]


def test_probe_failure_reopens_it_for_another_cooldown() -> None:
    _, state, _ = breaker_admit(POLICY, opened(at=100.0), now=130.0, call_id="probe")
    state, transition = fail(state, now=131.0, call_id="probe")
    assert (state.state, state.opened_at, state.probe) == ("open", 131.0, None)
    assert transition is not None and transition.to == "opened"
    assert breaker_admit(POLICY, state, now=160.0, call_id="x")[0] is False
    # the next probe, and its success: the outage is measured from the first opening
    _, state, _ = breaker_admit(POLICY, state, now=161.0, call_id="probe-2")
    state, transition = succeed(state, now=162.0, call_id="probe-2")
    assert transition is not None and transition.open_for_s == 62.0


def test_results_of_other_calls_while_open_change_nothing() -> None:
    state = opened()
    assert succeed(state, call_id="late") == (state, None)
    assert fail(state, call_id="late") == (state, None)
    _, probing, _ = breaker_admit(POLICY, state, now=130.0, call_id="probe")
    assert succeed(probing, call_id="late") == (probing, None)
    assert fail(probing, call_id="late") == (probing, None)


def test_a_probe_that_proves_nothing_frees_its_slot() -> None:
    _, probing, _ = breaker_admit(POLICY, opened(), now=130.0, call_id="probe")
    state, transition = breaker_record(POLICY, probing, ok=False, counts=False, now=131.0, call_id="probe")
    assert (state.state, state.probe, transition) == ("half_open", None, None)
    allowed, state, transition = breaker_admit(POLICY, state, now=131.5, call_id="next")
    assert allowed and state.probe == "next" and transition is None


def test_a_stuck_probe_is_presumed_dead_after_the_cooldown() -> None:
    _, probing, _ = breaker_admit(POLICY, opened(at=100.0), now=130.0, call_id="dead")
    assert breaker_admit(POLICY, probing, now=159.9, call_id="other")[0] is False
    allowed, state, transition = breaker_admit(POLICY, probing, now=160.0, call_id="other")
    assert allowed and (state.probe, state.probe_started, transition) == ("other", 160.0, None)
    # the dead probe's late answer no longer counts
    assert succeed(state, call_id="dead") == (state, None)


def test_disabled_breaker_always_admits_and_never_changes() -> None:
    policy = BreakerPolicy(enabled=False)
    state = BreakerState()
    for _ in range(50):
        state, transition = fail(state, policy=policy)
        assert transition is None
    assert state == BreakerState()
    assert breaker_admit(policy, opened(), now=0.0, call_id="x")[0] is True
    assert breaker_retry_in(policy, opened(), now=0.0) == 0.0


# -- storage and events ----------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [BreakerState(), BreakerState("closed", 3, (True, False, False)),
     BreakerState("open", 5, (False,) * 5, 100.0, None, None, 90.0),
     BreakerState("half_open", 5, (False,), 100.0, "call-1", 130.5, 100.0)],
)
def test_json_round_trip(state: BreakerState) -> None:
    assert BreakerState.from_json(state.to_json()) == state


@pytest.mark.parametrize("data", [b"[]", b'{"state": "ajar"}', b'{"state": "open", "recent": [1, 0]}'])
def test_json_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="breaker state"):
        BreakerState.from_json(data)


def test_transitions_become_events() -> None:
    opened_event = Transition("opened", "5 failures in a row", 5, 1.0).to_event("openai:gpt-4o",
                                                                                cooldown_s=30.0)
    assert opened_event == CircuitOpened(route="openai:gpt-4o", reason="5 failures in a row", failures=5,
                                         failure_rate=1.0, cooldown_s=30.0)
    half = Transition("half_opened", "cooldown elapsed", 5, 1.0, probe_call_id="c1").to_event("r:m",
                                                                                              cooldown_s=1)
    assert half == CircuitHalfOpened(route="r:m", probe_call_id="c1")
    closed = Transition("closed", "probe succeeded", 0, None, open_for_s=31.5).to_event("r:m", cooldown_s=1)
    assert closed == CircuitClosed(route="r:m", open_for_s=31.5)


# -- the shared breakers' count kept in the caller --------------------------------------------


class _Kv:
    """Records what a breaker writes: the count kept in the caller writes nothing."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    async def get(self, key: str) -> None:
        raise KeyNotFoundError

    async def create(self, key: str, value: bytes) -> int:
        self.writes.append(key)
        return 1


class _Bus:
    def __init__(self) -> None:
        self.emitted: list[object] = []

    async def emit(self, event: object) -> None:
        self.emitted.append(event)


def test_a_closed_breaker_counts_in_the_caller_until_an_outcome_would_trip_it() -> None:
    policy = BreakerPolicy(failure_streak=3, failure_rate=1.0, min_calls=20, window=20, cooldown_s=30.0)
    kv, bus = _Kv(), _Bus()
    breakers = Breakers(cast(Any, bus), cast(Any, kv))
    route = "openai:gpt-a"
    assert breakers.record_closed(route, policy, ok=True, counts=True, call_id="c1")
    assert breakers.record_closed(route, policy, ok=False, counts=True, call_id="c2")
    assert breakers.record_closed(route, policy, ok=False, counts=True, call_id="c3")
    assert breakers.local[route].streak == 2 and breakers.local[route].recent == (True, False, False)
    # the third failure in a row opens it for everyone: KV work, left to record() on the bus's loop
    assert not breakers.record_closed(route, policy, ok=False, counts=True, call_id="c4")
    assert breakers.local[route].streak == 2, "nothing counted twice"
    asyncio.run(breakers.record(route, policy, ok=False, counts=True, call_id="c4"))
    assert len(kv.writes) == 1 and [type(e.data).__name__ for e in bus.emitted] == ["CircuitOpened"]  # type: ignore[attr-defined]
    assert breakers.local[route] == BreakerState(), "counting starts afresh once it trips"
    # an open (or half-open) breaker is changed only by compare-and-set: never in the caller
    breakers.shared[kv.writes[0]] = BreakerState("open", 3, (), 1.0)
    assert not breakers.record_closed(route, policy, ok=True, counts=True, call_id="c5")
    assert breakers.record_closed(route, BreakerPolicy(enabled=False), ok=False, counts=True, call_id="c6")
