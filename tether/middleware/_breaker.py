"""The circuit breaker as a pure state machine.

The state of one route's breaker is a small frozen value; :func:`breaker_admit` and
:func:`breaker_record` map (policy, state, now) to a new state and, when the breaker
changes state, a :class:`Transition` to publish as an event. Sharing the state between
workers is the caller's job: read it (JetStream KV), compute, and write it back with
compare-and-set; on a conflict, read again and recompute. A decision counts only once its
state is stored, which is what makes "exactly one half-open probe" hold across workers.
When the returned state equals the one read, there is nothing to store.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tether.schemas import CircuitClosed, CircuitHalfOpened, CircuitOpened

from ._policy import BreakerPolicy

__all__ = ["BreakerState", "Transition", "breaker_admit", "breaker_record", "breaker_retry_in"]

_STATES = ("closed", "open", "half_open")


@dataclass(frozen=True)
class BreakerState:
    state: Literal["closed", "open", "half_open"] = "closed"
    streak: int = 0
    """Counting failures in a row (closed only)."""
    recent: tuple[bool, ...] = ()
    """Outcomes of the last ``window`` counting calls, True for a success."""
    opened_at: float | None = None
    """When it last opened; the cooldown runs from here."""
    probe: str | None = None
    """The call id of the one half-open probe."""
    probe_started: float | None = None
    open_since: float | None = None
    """When the current outage began (the first opening, not a re-opening after a probe)."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BreakerState:
        raw: Any = json.loads(data)
        if not isinstance(raw, dict) or raw.get("state") not in _STATES:
            raise ValueError(f"not a breaker state: {data[:200]!r}")
        recent = raw.get("recent", [])
        if not isinstance(recent, list) or not all(isinstance(x, bool) for x in recent):
            raise ValueError(f"not a breaker state (recent): {data[:200]!r}")
        return cls(
            state=raw["state"],
            streak=int(raw.get("streak", 0)),
            recent=tuple(recent),
            opened_at=_opt_float(raw.get("opened_at")),
            probe=None if raw.get("probe") is None else str(raw["probe"]),
            probe_started=_opt_float(raw.get("probe_started")),
            open_since=_opt_float(raw.get("open_since")),
        )

    @property
    def failure_rate(self) -> float | None:
        if not self.recent:
            return None
        return self.recent.count(False) / len(self.recent)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Transition:
    """A change of breaker state, to publish as a ``tether.circuit.*`` event."""

    to: Literal["opened", "half_opened", "closed"]
    reason: str
    failures: int
    failure_rate: float | None
    open_for_s: float | None = None
    probe_call_id: str | None = None

    def to_event(self, route: str, *, cooldown_s: float) -> CircuitOpened | CircuitHalfOpened | CircuitClosed:
        if self.to == "opened":
            return CircuitOpened(route=route, reason=self.reason, failures=self.failures,
                                 failure_rate=self.failure_rate, cooldown_s=cooldown_s)
        if self.to == "half_opened":
            return CircuitHalfOpened(route=route, probe_call_id=self.probe_call_id)
        return CircuitClosed(route=route, open_for_s=self.open_for_s)


def breaker_admit(
    policy: BreakerPolicy, state: BreakerState, *, now: float, call_id: str
) -> tuple[bool, BreakerState, Transition | None]:
    """May ``call_id`` go ahead now? Returns (allowed, new state, transition or None).

    Closed: yes. Open: no, until ``cooldown_s`` has passed; then this call becomes the
    one half-open probe. Half-open: only the probe (asking again is fine); a probe older
    than ``cooldown_s`` is presumed dead and this call takes its place.
    """
    if not policy.enabled or state.state == "closed":
        return True, state, None
    if state.state == "open":
        if state.opened_at is not None and now - state.opened_at < policy.cooldown_s:
            return False, state, None
        probing = BreakerState("half_open", state.streak, state.recent, state.opened_at, call_id, now,
                               state.open_since)
        transition = Transition("half_opened", "cooldown elapsed", state.streak, state.failure_rate,
                                probe_call_id=call_id)
        return True, probing, transition
    if state.probe == call_id:
        return True, state, None
    if state.probe is None or state.probe_started is None or now - state.probe_started >= policy.cooldown_s:
        return True, BreakerState("half_open", state.streak, state.recent, state.opened_at, call_id, now,
                                  state.open_since), None
    return False, state, None


def breaker_record(
    policy: BreakerPolicy, state: BreakerState, *, ok: bool, counts: bool, now: float, call_id: str
) -> tuple[BreakerState, Transition | None]:
    """Fold the outcome of ``call_id`` into the state.

    ``counts=False`` (a 400, a 429, a cancellation: nothing about the route's health)
    changes nothing, except that a half-open probe ending that way frees its slot for
    the next caller. The probe's success closes the breaker, its failure re-opens it;
    outcomes of other calls while open or half-open are ignored (they were admitted
    before it opened). When closed, it opens on ``failure_streak`` failures in a row, or
    on a failure rate of at least ``failure_rate`` over the last ``window`` calls once
    there are ``min_calls`` of them.
    """
    if not policy.enabled:
        return state, None
    if state.state != "closed":
        if state.state != "half_open" or state.probe != call_id:
            return state, None
        if not counts:
            return BreakerState("half_open", state.streak, state.recent, state.opened_at, None, None,
                                state.open_since), None
        if ok:
            since = state.open_since if state.open_since is not None else state.opened_at
            open_for = None if since is None else max(0.0, now - since)
            return BreakerState(), Transition("closed", "probe succeeded", 0, None, open_for_s=open_for)
        failures = state.streak + 1
        reopened = BreakerState("open", failures, state.recent, now, None, None, state.open_since)
        return reopened, Transition("opened", "half-open probe failed", failures, state.failure_rate)
    if not counts:
        return state, None
    recent = (*state.recent, ok)[-policy.window :]
    if ok:
        return BreakerState("closed", 0, recent), None
    streak = state.streak + 1
    failures = recent.count(False)
    rate = failures / len(recent)
    if streak >= policy.failure_streak:
        reason = f"{streak} failures in a row"
    elif len(recent) >= policy.min_calls and rate >= policy.failure_rate:
        reason = f"{failures} of the last {len(recent)} calls failed"
    else:
        return BreakerState("closed", streak, recent), None
    opened = BreakerState("open", streak, recent, now, None, None, now)
    return opened, Transition("opened", reason, max(streak, failures), rate)


def breaker_retry_in(policy: BreakerPolicy, state: BreakerState, *, now: float) -> float:
    """Seconds until a refused call could be admitted: the rest of the cooldown when open,
    the time until the probe is presumed dead when half-open, 0 when closed."""
    if not policy.enabled or state.state == "closed":
        return 0.0
    since = state.opened_at if state.state == "open" else state.probe_started
    if since is None:
        return 0.0
    return max(0.0, since + policy.cooldown_s - now)
