"""Budget reservations: a call admitted under a budget holds its estimate until it ends.

Pure changes to one spend record (the JSON document a run, an agent or a tenant has in
the ``tether-spend`` bucket, written by compare-and-set): :func:`reserve` at admission,
:func:`settle` (the real cost replaces the hold) or :func:`release` at the end. A hold
lapses at ``until``, tied to the call's deadline, so a caller that died leaks nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._budget import BudgetRefusal, Spend

__all__ = ["HOLD_GRACE_S", "HOLD_WITHOUT_DEADLINE_S", "Hold", "hold_until", "release", "reserve", "reserved",
           "settle"]

HOLDS = "holds"
HOLD_GRACE_S = 60.0
"""Kept past the call's last possible attempt end, for the settling write to land."""
HOLD_WITHOUT_DEADLINE_S = 3600.0
"""How long a call with no deadline at all holds its reservation."""


@dataclass(frozen=True)
class Hold:
    """What one running call reserved, and when the reservation lapses (epoch seconds)."""

    usd: float
    tokens: int
    until: float


def hold_until(*, started_at: float, deadline_at: float | None, deadline_s: float | None,
               timeout_s: float) -> float:
    """When a call's hold lapses: its deadline (the earlier of the caller's ``deadline_at``
    and the policy's ``started_at + deadline_s``), plus one attempt's ``timeout_s`` (an
    attempt may start just before the deadline) and :data:`HOLD_GRACE_S`. A call with
    neither holds for :data:`HOLD_WITHOUT_DEADLINE_S`."""
    ends = [t for t in (deadline_at, None if deadline_s is None else started_at + deadline_s) if t is not None]
    if not ends:
        return started_at + HOLD_WITHOUT_DEADLINE_S
    return min(ends) + timeout_s + HOLD_GRACE_S


def _live(doc: dict[str, Any], now: float) -> dict[str, list[Any]]:
    """The record's holds that have not lapsed; the record keeps only those."""
    holds = {call_id: h for call_id, h in (doc.get(HOLDS) or {}).items() if float(h[2]) > now}
    if holds:
        doc[HOLDS] = holds
    else:
        doc.pop(HOLDS, None)
    return holds


def _total(holds: dict[str, list[Any]]) -> Spend:
    return Spend(usd=sum(float(h[0]) for h in holds.values()), tokens=sum(int(h[1]) for h in holds.values()),
                 calls=len(holds))


def _drop(doc: dict[str, Any], call_id: str, now: float) -> None:
    holds = _live(doc, now)
    if holds.pop(call_id, None) is not None and not holds:
        del doc[HOLDS]


def reserved(doc: dict[str, Any], *, now: float) -> Spend:
    """What the live holds on this record add up to (``calls``: how many there are)."""
    return _total(_live(dict(doc), now))


def reserve(doc: dict[str, Any], call_id: str, hold: Hold, *, now: float,
            check: Callable[[Spend], BudgetRefusal | None]) -> BudgetRefusal | None:
    """Add ``call_id``'s hold to ``doc`` unless ``check``, given what the other live holds
    add up to, refuses the call. A call that holds one already (a redelivery) keeps it."""
    holds = _live(doc, now)
    if call_id in holds:
        return None
    refusal = check(_total(holds))
    if refusal is None:
        holds[call_id] = [hold.usd, hold.tokens, hold.until]
        doc[HOLDS] = holds
    return refusal


def settle(doc: dict[str, Any], call_id: str, *, usd: float, tokens: int, calls: int, now: float) -> None:
    """The call ended and cost this: the cost replaces the call's hold (if it still has one)."""
    _drop(doc, call_id, now)
    doc["usd"] = float(doc.get("usd", 0.0)) + usd
    doc["tokens"] = int(doc.get("tokens", 0)) + tokens
    if calls:
        doc["calls"] = int(doc.get("calls", 0)) + calls


def release(doc: dict[str, Any], call_id: str, *, now: float) -> None:
    """The call ended with nothing to charge (refused, failed, cancelled): drop its hold."""
    _drop(doc, call_id, now)
