"""Budgets and the runaway guard: refuse a call before it is sent, not after it is paid for.

Pure checks over numbers the caller keeps (what a run, an agent or a tenant has spent)
and the runaway guard's one rule (:func:`runaway_count`), over a run's record kept in
memory or in KV.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, Literal

from tether.schemas import BudgetExceeded

from ._policy import BudgetLimits, BudgetScope, RunawayGuard

__all__ = [
    "MAX_FINGERPRINTS",
    "VOLATILE_KEYS",
    "BudgetCheck",
    "BudgetRefusal",
    "BudgetUnit",
    "RunawayTracker",
    "Spend",
    "check_budget",
    "check_budgets",
    "request_fingerprint",
    "runaway_count",
]

BudgetUnit = Literal["usd", "tokens", "calls"]
_EPSILON = 1e-9


@dataclass(frozen=True)
class Spend:
    """What a run, an agent or a tenant has spent so far."""

    usd: float = 0.0
    tokens: int = 0
    calls: int = 0

    def add(self, *, usd: float | None = None, tokens: int = 0, calls: int = 1) -> Spend:
        """This spend plus one call's; an unpriced call (``usd=None``) adds no dollars."""
        return Spend(self.usd + (usd or 0.0), self.tokens + tokens, self.calls + calls)


@dataclass(frozen=True)
class BudgetRefusal:
    """A call refused because it would take ``scope_id`` past its ``unit`` budget."""

    scope: BudgetScope
    scope_id: str
    unit: BudgetUnit
    limit: float
    spent: float
    requested: float
    reserved: float = 0.0
    """Held by calls admitted and still running (their estimates, see ``_holds``)."""

    @property
    def message(self) -> str:
        held = f" (+{_amount(self.unit, self.reserved)} reserved by calls in flight)" if self.reserved else ""
        return (f"{self.scope} {self.scope_id} would exceed its {self.unit} budget: spent "
                f"{_amount(self.unit, self.spent)}{held} of {_amount(self.unit, self.limit)}, "
                f"this call needs up to {_amount(self.unit, self.requested)}")

    def __str__(self) -> str:
        return self.message

    def to_event(self, *, call_id: str | None = None) -> BudgetExceeded:
        """The ``budget.exceeded`` event; its ``spent`` counts what calls in flight reserved."""
        return BudgetExceeded(scope=self.scope, scope_id=self.scope_id, unit=self.unit, limit=self.limit,
                              spent=self.spent + self.reserved, requested=self.requested, call_id=call_id)


def _amount(unit: BudgetUnit, value: float) -> str:
    if unit == "usd":
        return f"${value:.4f}"
    return f"{value:,.0f} {unit}"


def check_budget(
    scope: BudgetScope,
    scope_id: str,
    limits: BudgetLimits,
    spent: Spend,
    *,
    est_usd: float | None,
    est_tokens: int,
    reserved: Spend = Spend(),
) -> BudgetRefusal | None:
    """The refusal if this call (estimated at ``est_usd`` and ``est_tokens``, one call)
    would take ``spent`` plus ``reserved`` (what calls admitted earlier and still running
    hold) past ``limits``; else ``None``. Dollars are checked first, then tokens, then
    calls. An unpriced call (``est_usd=None``) counts as $0 here: it cannot exceed a
    dollar budget (see :func:`check_budgets` for the note that it was unpriced).
    """
    if limits.usd is not None:
        requested = est_usd or 0.0
        if spent.usd + reserved.usd + requested > limits.usd + _EPSILON:
            return BudgetRefusal(scope, scope_id, "usd", limits.usd, spent.usd, requested, reserved.usd)
    if limits.tokens is not None and spent.tokens + reserved.tokens + est_tokens > limits.tokens:
        return BudgetRefusal(scope, scope_id, "tokens", limits.tokens, spent.tokens, est_tokens, reserved.tokens)
    if limits.calls is not None and spent.calls + reserved.calls + 1 > limits.calls:
        return BudgetRefusal(scope, scope_id, "calls", limits.calls, spent.calls, 1, reserved.calls)
    return None


@dataclass(frozen=True)
class BudgetCheck:
    """The verdict over every budget a call is charged to."""

    refusal: BudgetRefusal | None
    notes: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.refusal is None


def check_budgets(
    budgets: Iterable[tuple[BudgetScope, str, BudgetLimits]],
    spent: Mapping[tuple[str, str], Spend],
    *,
    est_usd: float | None,
    est_tokens: int,
    reserved: Mapping[tuple[str, str], Spend] | None = None,
) -> BudgetCheck:
    """Check each ``(scope, id, limits)`` (as ``PolicySet.budgets_for`` lists them) against
    ``spent[(scope, id)]`` plus ``reserved[(scope, id)]``; the first refusal wins. ``notes``
    says when a dollar budget could not be enforced for this call because its model has no
    price."""
    notes: list[str] = []
    for scope, scope_id, limits in budgets:
        refusal = check_budget(scope, scope_id, limits, spent.get((scope, scope_id), Spend()),
                               est_usd=est_usd, est_tokens=est_tokens,
                               reserved=(reserved or {}).get((scope, scope_id), Spend()))
        if refusal is not None:
            return BudgetCheck(refusal, tuple(notes))
        if limits.usd is not None and est_usd is None:
            notes.append(f"the usd budget of {scope} {scope_id} cannot count this call: "
                         "its model is unpriced")
    return BudgetCheck(None, tuple(notes))


# -- the runaway guard -----------------------------------------------------------------

_CANONICAL = c_make_encoder(None, str, encode_basestring, None, ":", ",", True, False, True) if c_make_encoder else None


def canonical_json(value: Any) -> str:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)``,
    the canonical writing every request hash and fingerprint is made of, by one C encoder made once
    (``json.dumps`` makes an encoder and a table of the containers seen per call: half its cost on an
    agent's request). A value that contains itself is refused by ``json.dumps`` as it always was."""
    if _CANONICAL is not None:
        try:
            return "".join(_CANONICAL(value, 0))
        except RecursionError:  # a cycle (or data nested too deep): json.dumps says which
            pass
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


VOLATILE_KEYS = frozenset({"stream", "stream_options", "user", "metadata", "store"})
"""Request keys that do not change what is asked, left out of the fingerprint."""


def request_fingerprint(body: Mapping[str, Any]) -> str:
    """SHA-256 of the request as canonical JSON, without :data:`VOLATILE_KEYS`.

    Two calls with the same fingerprint ask the same model the same thing.
    """
    canonical = {key: value for key, value in body.items() if key not in VOLATILE_KEYS}
    return hashlib.sha256(canonical_json(canonical).encode()).hexdigest()


MAX_FINGERPRINTS = 256
"""Distinct calls remembered per run; past that, the least recently repeated is forgotten
(a loop keeps its own fingerprint fresh, so it is never the one dropped)."""


MAX_ADMITTED = 128
"""Call ids remembered per run as counted (workers), so a redelivered call is not counted again."""


def runaway_count(doc: dict[str, Any], run_id: str, fingerprint: str, guard: RunawayGuard, *,
                  call_id: str | None = None) -> str | None:
    """The runaway guard's one rule: refuse this call of ``run_id``, or count it in ``doc``.

    ``doc`` is the run's record, ``{"calls": n, "fingerprints": {fingerprint: n}}``: kept
    in memory by a :class:`RunawayTracker` (inline calls, adapters) or in the run's KV
    record (workers). Returns why the call is refused (not counted), else ``None``.
    With ``call_id`` (workers), a call counted already is admitted again without being
    counted twice: a worker that could not save the call's record (a KV bucket electing a
    leader) leaves it to be redelivered, and the redelivery is admitted again."""
    admitted: list[str] | None = None
    if call_id is not None:
        admitted = doc.setdefault("admitted", [])
        if call_id in admitted:
            return None
    calls = int(doc.get("calls", 0))
    fingerprints: dict[str, int] = doc.setdefault("fingerprints", {})
    same = fingerprints.get(fingerprint, 0)
    if guard.max_calls_per_run is not None and calls + 1 > guard.max_calls_per_run:
        return (f"run {run_id} reached its limit of {guard.max_calls_per_run} calls "
                f"(runaway.max_calls_per_run={guard.max_calls_per_run})")
    if guard.max_identical_calls is not None and same + 1 > guard.max_identical_calls:
        return (f"run {run_id} repeated the same call {same + 1} times "
                f"(runaway.max_identical_calls={guard.max_identical_calls})")
    doc["calls"] = calls + 1
    fingerprints[fingerprint] = fingerprints.pop(fingerprint, 0) + 1  # now the most recent
    while len(fingerprints) > MAX_FINGERPRINTS:
        del fingerprints[next(iter(fingerprints))]  # the least recently repeated
    if admitted is not None and call_id is not None:
        admitted.append(call_id)
        del admitted[:-MAX_ADMITTED]
    return None


class RunawayTracker:
    """The runaway guard's records of the runs this process saw (thread-safe).

    Bounded: past ``max_runs``, the least recently active run is forgotten (workers keep
    their runs' records in KV, where they expire with the bucket); within a run, the rule
    of :func:`runaway_count` forgets the least recently repeated call.
    """

    def __init__(self, *, max_runs: int = 10_000) -> None:
        self.max_runs = max_runs
        self._runs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_counts(cls, runs: Mapping[str, tuple[int, Mapping[str, int]]], *,
                    max_runs: int = 10_000) -> RunawayTracker:
        """Rebuild a tracker from ``{run_id: (calls, {fingerprint: count})}`` (as
        :meth:`counts` gives them, or as folded from the event log)."""
        tracker = cls(max_runs=max_runs)
        for run_id, (calls, fingerprints) in runs.items():
            tracker._run(run_id).update(calls=calls, fingerprints=dict(fingerprints))
        return tracker

    def counts(self, run_id: str) -> tuple[int, dict[str, int]]:
        doc = self._runs.get(run_id, {})
        return int(doc.get("calls", 0)), dict(doc.get("fingerprints", {}))

    def admit(self, run_id: str, fingerprint: str, guard: RunawayGuard) -> str | None:
        """Why this call must be refused, or ``None`` (then it is counted)."""
        with self._lock:
            return runaway_count(self._run(run_id), run_id, fingerprint, guard)

    def forget(self, run_id: str) -> None:
        """Drop a finished run."""
        with self._lock:
            self._runs.pop(run_id, None)

    def __len__(self) -> int:
        return len(self._runs)

    def _run(self, run_id: str) -> dict[str, Any]:
        doc = self._runs.get(run_id)
        if doc is None:
            doc = self._runs[run_id] = {}
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
        else:
            self._runs.move_to_end(run_id)
        return doc
