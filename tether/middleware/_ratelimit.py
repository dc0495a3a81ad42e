"""Requests and tokens per minute, paced before the provider has to say 429.

A sliding-window approximation over 60 s windows aligned to the minute: the estimate
at ``now`` is this window's count plus the previous window's, weighted by how much of
the previous window still overlaps the last 60 s. Pure: the state is a small value the
caller shares between workers (JetStream KV with compare-and-set, like the breaker).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from ._policy import RateLimitPolicy

__all__ = ["WINDOW_S", "RateState", "rate_acquire", "rate_adjust"]

WINDOW_S = 60.0
_MIN_WAIT_S = 0.001


@dataclass(frozen=True)
class RateState:
    window_start: float
    requests: int
    tokens: int
    prev_requests: int
    prev_tokens: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RateState:
        raw: Any = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError(f"not a rate-limit state: {data[:200]!r}")
        try:
            return cls(float(raw["window_start"]), int(raw["requests"]), int(raw["tokens"]),
                       int(raw["prev_requests"]), int(raw["prev_tokens"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"not a rate-limit state: {data[:200]!r}") from None


def _roll(state: RateState | None, now: float) -> RateState:
    """The state as of ``now``: a new window moves the current counts to ``prev``."""
    start = math.floor(now / WINDOW_S) * WINDOW_S
    if state is None:
        return RateState(start, 0, 0, 0, 0)
    if start <= state.window_start:  # same window (or a worker whose clock is behind)
        return state
    if start - state.window_start == WINDOW_S:
        return RateState(start, 0, 0, state.requests, state.tokens)
    return RateState(start, 0, 0, 0, 0)


def rate_acquire(
    policy: RateLimitPolicy, state: RateState | None, *, now: float, tokens: int
) -> tuple[float, RateState]:
    """May a request of ``tokens`` go now? Returns ``(0.0, state with it counted)`` or
    ``(seconds to wait, state unchanged)``.

    A request larger than the whole token limit goes alone, once the window is empty,
    rather than waiting forever.
    """
    if not policy.limited:
        return 0.0, (state if state is not None else _roll(None, now))
    current = _roll(state, now)
    elapsed = min(max(now - current.window_start, 0.0), WINDOW_S)
    waits = [0.0]
    if policy.requests_per_minute is not None:
        waits.append(_wait(current.prev_requests, current.requests, policy.requests_per_minute - 1, elapsed))
    if policy.tokens_per_minute is not None and tokens > 0:
        room = max(policy.tokens_per_minute - tokens, 0)
        waits.append(_wait(current.prev_tokens, current.tokens, room, elapsed))
    wait = max(waits)
    if wait <= 0:
        counted = replace(current, requests=current.requests + 1, tokens=current.tokens + max(tokens, 0))
        return 0.0, counted
    return max(wait, _MIN_WAIT_S), (state if state is not None else current)


def _wait(prev: int, cur: int, room: float, elapsed: float) -> float:
    """Seconds until ``prev * weight + cur <= room``, with the weight falling from
    ``1 - elapsed/60`` to 0 at the window's end, when ``cur`` becomes the next ``prev``."""
    estimate = prev * (1.0 - elapsed / WINDOW_S) + cur
    if estimate <= room + 1e-9:
        return 0.0
    if cur <= room:  # prev's share decays enough within this window
        weight = (room - cur) / prev  # prev > 0, or the estimate would fit
        return max(0.0, WINDOW_S * (1.0 - weight) - elapsed)
    # wait for the next window, then for this window's count to decay
    to_next = WINDOW_S - elapsed
    return to_next + WINDOW_S * (1.0 - room / cur)


def rate_adjust(state: RateState, *, now: float, tokens_delta: int) -> RateState:
    """Correct the token count once a call's real usage is known (negative: it used fewer
    than reserved). Applies to the current window; never goes below zero."""
    current = _roll(state, now)
    return replace(current, tokens=max(0, current.tokens + tokens_delta))
