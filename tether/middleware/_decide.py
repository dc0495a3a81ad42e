"""The decision after a failed attempt: retry in N s, fall back to another target, or give up.

:func:`decide` is a pure function of the policy, the attempt history and the failure:
time comes in as ``now`` and randomness as an ``rng``, so every decision can be replayed
and tested without a clock or a socket.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from ._failures import Failure
from ._policy import Policy, RetryPolicy, Target

__all__ = [
    "AttemptRecord",
    "Decision",
    "Fallback",
    "GiveUp",
    "GiveUpReason",
    "Retry",
    "backoff_delay",
    "decide",
    "is_retryable",
    "tool_decision",
]

GiveUpReason = Literal["exhausted", "not_retryable", "deadline"]


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt of a call: where it went (``None`` for a tool) and how it failed."""

    attempt: int
    target: Target | None
    failure: Failure | None
    started_at: float
    duration_s: float


@dataclass(frozen=True)
class Retry:
    """Try the same target again after ``delay_s``."""

    delay_s: float
    target: Target | None
    decision: ClassVar[Literal["retry"]] = "retry"


@dataclass(frozen=True)
class Fallback:
    """Try ``target`` next, after ``delay_s`` (0: a different provider need not wait)."""

    target: Target
    delay_s: float = 0.0
    decision: ClassVar[Literal["fallback"]] = "fallback"


@dataclass(frozen=True)
class GiveUp:
    """Stop: the call fails (and goes to the dead-letter stream) for ``reason``."""

    reason: GiveUpReason
    decision: ClassVar[Literal["give_up"]] = "give_up"


Decision = Retry | Fallback | GiveUp


def is_retryable(retry: RetryPolicy, failure: Failure) -> bool:
    """Whether trying the same target again may help, per the retry policy.

    HTTP statuses in ``retry_statuses``, timeouts and connection errors (each unless
    switched off), malformed responses, the local rate limiter and an open breaker are;
    client errors, tool errors and cancellations are not.
    """
    if failure.kind == "http":
        return failure.status_code in retry.retry_statuses
    if failure.kind == "timeout":
        return retry.retry_timeouts
    if failure.kind == "connection":
        return retry.retry_connection_errors
    return failure.kind in ("malformed", "rate_limited", "breaker_open")


def backoff_delay(retry: RetryPolicy, n: int, rng: random.Random) -> float:
    """Full jitter: ``uniform(0, min(max_delay_s, base_delay_s * 2**(n-1)))`` for retry ``n``."""
    ceiling = min(retry.max_delay_s, retry.base_delay_s * 2.0 ** min(max(n - 1, 0), 64))
    return rng.uniform(0.0, ceiling)


def decide(
    policy: Policy,
    history: Sequence[AttemptRecord],
    failure: Failure,
    *,
    now: float,
    started_at: float,
    current: Target | None,
    rng: random.Random,
) -> Decision:
    """What to do after ``failure``; ``history`` includes the attempt that just failed.

    In order:

    1. A failure that can neither be retried (:func:`is_retryable`) nor fall back gives
       up as ``not_retryable``: no budget would change that.
    2. Past the call's deadline (``started_at + deadline_s``): ``deadline``.
    3. ``policy.total_attempts`` made, across every target: ``exhausted``. Fallbacks
       never restart the count (3 attempts and 2 fallbacks make 5 attempts, not 9).
    4. Fall back to the next untried ``fallback.targets`` entry (at most
       ``max_fallbacks`` switches; never for a tool call) when the category is in
       ``fallback.on`` and either: this target has had ``retry.max_attempts``; or the
       breaker is open; or the provider asked to wait longer than
       ``after_retry_after_s``; or the failure is not retryable on this target; or the
       attempts left are only enough for one per remaining fallback (so the shared total
       reaches every fallback instead of being spent on the first target that fails).
    5. Retry while this target has had fewer than ``retry.max_attempts``, after the
       Retry-After hint (capped at ``max_retry_after_s``) if there is one and it is
       honoured, else full-jitter backoff. An open breaker is waited out (its remaining
       cooldown plus a jittered backoff, so waiting calls do not return together).
    6. A delay that would end past the deadline gives up as ``deadline``.
    """
    category = failure.category
    retryable = is_retryable(policy.retry, failure)
    fallback = policy.fallback
    next_target = _next_fallback(policy, history, current) if fallback.falls_back_on(category) else None

    if not retryable and next_target is None:
        return GiveUp("not_retryable")
    deadline = None if policy.deadline_s is None else started_at + policy.deadline_s
    if deadline is not None and now >= deadline:
        return GiveUp("deadline")
    total = len(history)
    if total >= policy.total_attempts:
        return GiveUp("exhausted")

    on_current = sum(1 for record in history if record.target == current)
    if next_target is not None:
        fallbacks_left = min(fallback.max_fallbacks - _fallbacks_made(history),
                             len(_untried(policy, history, current)))
        long_wait = failure.retry_after_s is not None and failure.retry_after_s > fallback.after_retry_after_s
        if (
            on_current >= policy.retry.max_attempts
            or category == "breaker_open"
            or long_wait
            or not retryable
            or policy.total_attempts - total <= fallbacks_left
        ):
            return Fallback(next_target, 0.0)

    if not retryable:
        return GiveUp("not_retryable")
    if on_current >= policy.retry.max_attempts:
        return GiveUp("exhausted")
    delay = _retry_delay(policy, failure, on_current, rng)
    if deadline is not None and now + delay > deadline:
        return GiveUp("deadline")
    return Retry(delay, current)


def _retry_delay(policy: Policy, failure: Failure, n: int, rng: random.Random) -> float:
    retry = policy.retry
    if failure.kind == "breaker_open":
        wait = policy.breaker.cooldown_s if failure.retry_after_s is None else failure.retry_after_s
        return max(0.0, wait) + backoff_delay(retry, n, rng)
    if failure.retry_after_s is not None and (retry.honour_retry_after or failure.kind == "rate_limited"):
        return min(max(0.0, failure.retry_after_s), retry.max_retry_after_s)
    return backoff_delay(retry, n, rng)


def _tried(history: Sequence[AttemptRecord], current: Target | None) -> set[Target]:
    tried = {record.target for record in history if record.target is not None}
    if current is not None:
        tried.add(current)
    return tried


def _untried(policy: Policy, history: Sequence[AttemptRecord], current: Target | None) -> list[Target]:
    tried = _tried(history, current)
    return [target for target in policy.fallback.targets if target not in tried]


def _fallbacks_made(history: Sequence[AttemptRecord]) -> int:
    return sum(1 for before, after in itertools.pairwise(history) if before.target != after.target)


def _next_fallback(policy: Policy, history: Sequence[AttemptRecord], current: Target | None) -> Target | None:
    if current is None:  # a tool call has no alternative
        return None
    if _fallbacks_made(history) >= policy.fallback.max_fallbacks:
        return None
    untried = _untried(policy, history, current)
    return untried[0] if untried else None


def tool_decision(idempotent: bool, failure: Failure) -> GiveUp | None:
    """A tool's side effect is never repeated by tether: a failed call of a tool that is not
    idempotent is given up (unless its breaker refused it: nothing ran), as is a cancelled
    one; ``None`` leaves the decision to :func:`decide`."""
    if failure.kind == "cancelled" or (not idempotent and failure.kind != "breaker_open"):
        return GiveUp("not_retryable")
    return None
