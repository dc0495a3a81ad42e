"""Budget reservations as pure changes to a spend record: reserve, settle, release, lapse."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tether.middleware import BudgetLimits, BudgetRefusal, Spend, check_budget
from tether.middleware._holds import (
    HOLD_GRACE_S,
    HOLD_WITHOUT_DEADLINE_S,
    Hold,
    hold_until,
    release,
    reserve,
    reserved,
    settle,
)

NOW = 1_000_000.0
CALL = Hold(usd=1.0, tokens=100, until=NOW + 60)


def agent_check(doc: dict[str, Any], limits: BudgetLimits, est: Hold) -> Callable[[Spend], BudgetRefusal | None]:
    """What the engine passes to ``reserve``: the budget check over the record's spend."""
    spent = Spend(float(doc.get("usd", 0.0)), int(doc.get("tokens", 0)), int(doc.get("calls", 0)))

    def check(held: Spend) -> BudgetRefusal | None:
        return check_budget("agent", "bot", limits, spent, est_usd=est.usd, est_tokens=est.tokens, reserved=held)
    return check


def admit(doc: dict[str, Any], call_id: str, limits: BudgetLimits, hold: Hold = CALL,
          now: float = NOW) -> BudgetRefusal | None:
    return reserve(doc, call_id, hold, now=now, check=agent_check(doc, limits, hold))


def test_reserved_counts_toward_the_limit() -> None:
    assert check_budget("agent", "bot", BudgetLimits(usd=3.5), Spend(usd=1.0), est_usd=1.0, est_tokens=0,
                        reserved=Spend(usd=1.0, calls=1)) is None
    refusal = check_budget("agent", "bot", BudgetLimits(usd=3.5), Spend(usd=1.0), est_usd=1.0, est_tokens=0,
                           reserved=Spend(usd=2.0, calls=2))
    assert refusal is not None and (refusal.spent, refusal.reserved, refusal.requested) == (1.0, 2.0, 1.0)
    assert "spent $1.0000 (+$2.0000 reserved by calls in flight) of $3.5000" in refusal.message
    assert refusal.to_event().spent == 3.0, "the event's spent includes what is reserved"
    calls = check_budget("run", "r", BudgetLimits(calls=3), Spend(calls=1), est_usd=0.0, est_tokens=0,
                         reserved=Spend(calls=2))
    assert calls is not None and calls.unit == "calls"


def test_holds_stop_admission_at_the_cap_however_many_ask() -> None:
    doc: dict[str, Any] = {}
    verdicts = [admit(doc, f"c{i}", BudgetLimits(usd=3.5)) for i in range(12)]
    assert [v is None for v in verdicts] == [True] * 3 + [False] * 9
    assert reserved(doc, now=NOW) == Spend(usd=3.0, tokens=300, calls=3)
    assert all(v is not None and v.reserved == 3.0 for v in verdicts[3:])


def test_a_redelivered_call_keeps_its_hold_without_a_second_one() -> None:
    doc: dict[str, Any] = {}
    assert admit(doc, "c1", BudgetLimits(usd=1.0)) is None
    assert admit(doc, "c1", BudgetLimits(usd=1.0)) is None
    assert reserved(doc, now=NOW).calls == 1


def test_settle_replaces_the_hold_with_the_real_cost() -> None:
    doc: dict[str, Any] = {}
    admit(doc, "c1", BudgetLimits(usd=3.5))
    admit(doc, "c2", BudgetLimits(usd=3.5))
    settle(doc, "c1", usd=0.25, tokens=40, calls=1, now=NOW)
    assert (doc["usd"], doc["tokens"], doc["calls"]) == (0.25, 40, 1)
    assert reserved(doc, now=NOW) == Spend(usd=1.0, tokens=100, calls=1)
    settle(doc, "c2", usd=0.5, tokens=10, calls=0, now=NOW)
    assert "holds" not in doc and (doc["usd"], doc["calls"]) == (0.75, 1)
    json.dumps(doc)  # the record stays JSON


def test_release_gives_the_room_back() -> None:
    doc: dict[str, Any] = {}
    limits = BudgetLimits(usd=2.0)
    admit(doc, "c1", limits)
    admit(doc, "c2", limits)
    assert admit(doc, "c3", limits) is not None
    release(doc, "c1", now=NOW)
    assert admit(doc, "c3", limits) is None
    release(doc, "never-admitted", now=NOW)
    assert reserved(doc, now=NOW).calls == 2


def test_a_lapsed_hold_counts_no_more_and_is_dropped_on_the_next_write() -> None:
    doc: dict[str, Any] = {}
    admit(doc, "dead-caller", BudgetLimits(usd=1.0))
    assert admit(doc, "c2", BudgetLimits(usd=1.0)) is not None
    later = CALL.until + 1
    assert reserved(doc, now=later) == Spend()
    assert "dead-caller" in doc["holds"], "reading does not change the record"
    assert admit(doc, "c2", BudgetLimits(usd=1.0), hold=Hold(1.0, 100, later + 60), now=later) is None
    assert list(doc["holds"]) == ["c2"]


def test_a_real_cost_above_the_estimate_is_charged_in_full() -> None:
    doc: dict[str, Any] = {}
    admit(doc, "c1", BudgetLimits(usd=1.0))
    settle(doc, "c1", usd=1.4, tokens=140, calls=1, now=NOW)
    assert doc["usd"] == 1.4
    assert admit(doc, "c2", BudgetLimits(usd=1.0)) is not None, "once past the cap, nothing more is admitted"


@pytest.mark.parametrize(("deadline_at", "deadline_s", "expected"), [
    (NOW + 30, 300.0, NOW + 30 + 5 + HOLD_GRACE_S),       # the caller's deadline comes first
    (NOW + 900, 300.0, NOW + 300 + 5 + HOLD_GRACE_S),     # the policy's
    (None, 300.0, NOW + 300 + 5 + HOLD_GRACE_S),
    (NOW + 30, None, NOW + 30 + 5 + HOLD_GRACE_S),
    (None, None, NOW + HOLD_WITHOUT_DEADLINE_S),
])
def test_a_hold_lapses_after_the_calls_deadline(deadline_at: float | None, deadline_s: float | None,
                                                 expected: float) -> None:
    assert hold_until(started_at=NOW, deadline_at=deadline_at, deadline_s=deadline_s, timeout_s=5.0) == expected
