"""The errors view: failures grouped by fingerprint, with counts, first and last seen, affected runs.

A **fingerprint** hashes what makes two failures the same problem: the error type, where it
happened (``llm:<provider>``, ``tool:<name>``, ``dlq:<call kind>``, ``run`` or ``run:<agent>``,
``budget:<scope>``), the status code, and the message with its variable parts replaced
(:func:`normalise_message`: numbers, ids, UUIDs, hex, quoted values, URLs), so
``Rate limit reached for requests 123 in org-abc`` groups with its siblings.

Tables (every merge rule commutes, so any order of the same events gives the same rows):

- ``groups``: one row per fingerprint, its parts, first and last seen (event time) and
  stream sequence, and ``sample``: the first event by sequence (``[seq, event id, raw
  message]`` as JSON with the sequence zero-padded, so ``min`` picks the earliest);
- ``occurrences``: one row per failure event, **keyed by event id**, so an event published
  twice under two message ids counts once;
- ``group_runs``: the runs a fingerprint affected, with first and last seen.

Counts are computed when read (:func:`list_groups`), which is what makes them exact and lets
``--since`` count within a window. One failing call yields several events with the same
error: each failed attempt, the call's ``*.call.failed``, its ``call.dead_lettered`` (and a
``budget.exceeded`` for a refusal). ``count`` is the number of distinct failures: failed
attempts, plus finals that no ``give_up`` attempt announced (refusals, deadlines), plus runs
that failed; a dead letter or a budget refusal counts in the group of its call's final
failure (matched by call id) and stands alone only when there is none (malformed work).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from tether.schemas import (
    BudgetExceeded,
    CallDeadLettered,
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallFailed,
    RunFinished,
    ToolCallAttemptFailed,
    ToolCallFailed,
)

from ._ops import Merge, Op, Table, Upsert
from ._store import Projection

__all__ = ["ErrorsView", "Occurrence", "fingerprint", "list_groups", "normalise_message", "occurrence_of"]

# -- normalisation -----------------------------------------------------------------------------

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{}]*[^\s'\"<>()\[\]{},.;:!?]")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_QUOTED = re.compile(r"\"[^\"\n]*\"|(?<![\w])'[^'\n]*'(?![\w])|`[^`\n]*`")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_TOKEN = re.compile(r"[A-Za-z0-9_](?:[\w.\-]*[A-Za-z0-9_])?")
_NUMBER = re.compile(r"^[+-]?\d[\d,.]*(?:e[+-]?\d+)?(?:ms|us|ns|s|m|h|d|k|kb|mb|gb|x|%)?$", re.IGNORECASE)
_HEX = re.compile(r"^(?:0x[0-9a-fA-F]+|(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,})$")
_ID_PREFIX = re.compile(
    r"^(?:org|req|request|user|proj|project|sk|key|call|msg|run|chatcmpl|cmpl|resp|toolu|file|asst|thread|batch"
    r"|ft|ftjob|job|sess|session|trace|span|tenant|acct)[-_][\w.\-]+$", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_MAX_MESSAGE = 500


def _token(m: re.Match[str]) -> str:
    word = m[0]
    if _NUMBER.match(word):
        return "<n>"
    if _HEX.match(word):
        return "<hex>"
    if _ID_PREFIX.match(word) or (any(c.isdigit() for c in word) and any(c.isalpha() for c in word)):
        return "<id>"
    return word


def normalise_message(message: str) -> str:
    """The message with its variable parts replaced, so sibling failures read the same.

    URLs become ``<url>``, e-mail addresses ``<email>``, quoted values ``<val>``, UUIDs and
    ids (``org-abc``, ``req_123``, ``gpt-4o``: a known id prefix, or letters mixed with
    digits) ``<id>``, long hex ``<hex>``, numbers (with a unit such as ``120ms``) ``<n>``.
    """
    text = _URL.sub("<url>", message)
    text = _EMAIL.sub("<email>", text)
    text = _QUOTED.sub("<val>", text)
    text = _UUID.sub("<id>", text)
    text = _TOKEN.sub(_token, text)
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def fingerprint(error_type: str, source: str, status_code: int | None, message: str) -> str:
    """16 hex digits naming a group; ``message`` is the normalised one."""
    raw = "\x1f".join((error_type, source, "" if status_code is None else str(status_code), message))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


# -- what an event says about a failure -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One failure event, as the errors view sees it."""

    kind: str
    """``attempt``, ``final`` (a call gave up), ``dead_letter``, ``budget`` or ``run``."""
    source: str
    error_type: str
    status_code: int | None
    raw_message: str
    message: str
    """Normalised: the part of the message that goes into the fingerprint."""
    decision: str | None = None
    call_id: str | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.error_type, self.source, self.status_code, self.message)


def _of(kind: str, source: str, error: ErrorInfo, *, decision: str | None = None,
        call_id: str | None = None) -> Occurrence:
    return Occurrence(kind, source, error.type, error.status_code, error.message,
                      normalise_message(error.message), decision, call_id)


def occurrence_of(event: Event) -> Occurrence | None:
    """The failure an event reports, or None (not a failure, or a type this view does not read)."""
    match event.data:
        case LlmCallAttemptFailed() as d:
            return _of("attempt", f"llm:{d.provider}", d.error, decision=d.decision, call_id=d.call_id)
        case ToolCallAttemptFailed() as d:
            return _of("attempt", f"tool:{d.tool}", d.error, decision=d.decision, call_id=d.call_id)
        case LlmCallFailed() as d:
            return _of("final", f"llm:{d.provider}", d.error, call_id=d.call_id)
        case ToolCallFailed() as d:
            return _of("final", f"tool:{d.tool}", d.error, call_id=d.call_id)
        case CallDeadLettered() as d:
            error = d.error or ErrorInfo(type="DeadLettered", message=d.reason)
            return _of("dead_letter", f"dlq:{d.call_kind}", error, call_id=d.call_id)
        case RunFinished() as d if d.error is not None or d.status == "error":
            error = d.error or ErrorInfo(type="RunFailed")
            return _of("run", f"run:{event.agentid}" if event.agentid else "run", error)
        case BudgetExceeded() as d:
            raw = (f"{d.scope} {d.scope_id}: {d.unit} budget {d.limit:g} exceeded (spent {d.spent:g}"
                   + (f", requested {d.requested:g}" if d.requested is not None else "") + ")")
            # Grouped by scope and unit: which run or agent it was is in the sample and the runs.
            return Occurrence("budget", f"budget:{d.scope}", "BudgetExceeded", None, raw,
                              f"{d.unit} budget exceeded", call_id=d.call_id)
    return None


# -- the view -------------------------------------------------------------------------------------

_GROUPS = Table("groups", {
    "fingerprint": "TEXT", "source": "TEXT", "error_type": "TEXT", "status_code": "INTEGER", "message": "TEXT",
    "sample": "TEXT", "first_seen": "REAL", "last_seen": "REAL", "first_seq": "INTEGER", "last_seq": "INTEGER",
}, key=("fingerprint",), indexes=(("last_seen",), ("source",)))
_OCCURRENCES = Table("occurrences", {
    "event_id": "TEXT", "fingerprint": "TEXT", "kind": "TEXT", "decision": "TEXT", "call_id": "TEXT",
    "run_id": "TEXT", "seq": "INTEGER", "time": "REAL",
}, key=("event_id",), indexes=(("fingerprint", "time"), ("call_id", "kind"), ("time",)))
_GROUP_RUNS = Table("group_runs", {"fingerprint": "TEXT", "run_id": "TEXT", "first_seen": "REAL",
                                   "last_seen": "REAL"},
                    key=("fingerprint", "run_id"), indexes=(("run_id",),))

_GROUP_MERGE: dict[str, Merge] = {"sample": "min", "first_seen": "min", "last_seen": "max", "first_seq": "min",
                                  "last_seq": "max"}
_OCCURRENCE_MERGE: dict[str, Merge] = {"seq": "min"}
_RUN_MERGE: dict[str, Merge] = {"first_seen": "min", "last_seen": "max"}


class ErrorsView(Projection):
    """Failures grouped by fingerprint (see the module docstring for the tables)."""

    name = "errors"
    version = 1
    tables = (_GROUPS, _OCCURRENCES, _GROUP_RUNS)
    types: ClassVar[frozenset[str] | None] = frozenset({
        "tether.llm.call.attempt_failed", "tether.llm.call.failed", "tether.tool.call.attempt_failed",
        "tether.tool.call.failed", "tether.call.dead_lettered", "tether.run.finished", "tether.budget.exceeded",
    })

    def apply(self, event: Event, seq: int) -> Iterable[Op]:
        if event.type not in (self.types or ()):
            return []
        found = occurrence_of(event)
        if found is None:
            return []
        fp = found.fingerprint
        when = event.time.timestamp()
        sample = json.dumps([f"{seq:020d}", event.id, found.raw_message], ensure_ascii=False)
        ops: list[Op] = [
            Upsert("groups", {"fingerprint": fp, "source": found.source, "error_type": found.error_type,
                              "status_code": found.status_code, "message": found.message, "sample": sample,
                              "first_seen": when, "last_seen": when, "first_seq": seq, "last_seq": seq},
                   _GROUP_MERGE),
            Upsert("occurrences", {"event_id": event.id, "fingerprint": fp, "kind": found.kind,
                                   "decision": found.decision, "call_id": found.call_id,
                                   "run_id": event.runid, "seq": seq, "time": when}, _OCCURRENCE_MERGE),
        ]
        if event.runid:
            ops.append(Upsert("group_runs", {"fingerprint": fp, "run_id": event.runid, "first_seen": when,
                                             "last_seen": when}, _RUN_MERGE))
        return ops

    def notify_key(self, op: Op) -> str | None:
        """Every table announces the group it touched: ``tether.proj.errors.<fingerprint>``."""
        values = op.values if isinstance(op, Upsert) else op.key
        fp = values.get("fingerprint")
        return None if fp is None else str(fp)


# -- reading --------------------------------------------------------------------------------------


def _epoch(since: datetime | float | None) -> float:
    if since is None:
        return float("-inf")
    return since.timestamp() if isinstance(since, datetime) else float(since)


_DIRECT = """
SELECT fingerprint, sum(kind = 'attempt'), sum(decision IS 'retry'), sum(decision IS 'fallback'),
       sum(decision IS 'give_up'), sum(kind = 'final'), sum(kind = 'run')
FROM occurrences WHERE time >= ? AND kind IN ('attempt', 'final', 'run') GROUP BY fingerprint
"""
# A dead letter or budget refusal belongs to the group of its call's final failure, when there is one.
_SECONDARY = """
SELECT coalesce(f.fingerprint, o.fingerprint), f.fingerprint IS NOT NULL, o.kind, count(*)
FROM occurrences o LEFT JOIN occurrences f ON f.event_id = (
    SELECT event_id FROM occurrences WHERE call_id = o.call_id AND kind = 'final' ORDER BY seq LIMIT 1)
WHERE o.time >= ? AND o.kind IN ('dead_letter', 'budget')
GROUP BY 1, 2, 3
"""


def list_groups(db: sqlite3.Connection, *, since: datetime | float | None = None, limit: int | None = 50,
                source: str | None = None) -> list[dict[str, Any]]:
    """Error groups, most frequent first, counted over failures at or after ``since``.

    ``source`` keeps one source (``llm:openai``) or a kind of source (``llm``, ``tool``,
    ``dlq``, ``run``, ``budget``). Times are epoch seconds; ``first_seen`` and ``last_seen``
    are over the group's whole history, the counts and ``runs`` over the window.
    """
    start = _epoch(since)
    counts: dict[str, dict[str, int]] = {}

    def bump(fp: str, **values: int) -> None:
        row = counts.setdefault(fp, dict.fromkeys(
            ("attempts", "retry", "fallback", "give_up", "failed", "runs_failed", "dead_letters",
             "budget_refusals", "alone"), 0))
        for k, v in values.items():
            row[k] += v

    for fp, attempts, retry, fallback, give_up, failed, runs_failed in db.execute(_DIRECT, (start,)):
        bump(fp, attempts=attempts, retry=retry, fallback=fallback, give_up=give_up, failed=failed,
             runs_failed=runs_failed)
    for fp, joined, kind, n in db.execute(_SECONDARY, (start,)):
        bump(fp, **{"dead_letters" if kind == "dead_letter" else "budget_refusals": n}, alone=0 if joined else n)
    runs: dict[str, list[str]] = {}
    for fp, run_id in db.execute("SELECT fingerprint, run_id FROM group_runs WHERE last_seen >= ? "
                                 "ORDER BY last_seen DESC, run_id", (start,)):
        runs.setdefault(fp, []).append(run_id)
    out = []
    for row in db.execute("SELECT fingerprint, source, error_type, status_code, message, sample, first_seen, "
                          "last_seen, first_seq, last_seq FROM groups"):
        fp, src, error_type, status, message, sample, first_seen, last_seen, first_seq, last_seq = row
        c = counts.get(fp)
        if c is None:
            continue
        if source is not None and src != source and not src.startswith(source + ":"):
            continue
        count = c["attempts"] + max(0, c["failed"] - c["give_up"]) + c["runs_failed"] + c["alone"]
        if count == 0:
            continue
        sample_seq, sample_id, sample_message = json.loads(sample)
        affected = runs.get(fp, [])
        out.append({
            "fingerprint": fp, "source": src, "error_type": error_type, "status_code": status, "message": message,
            "count": count, "attempts": c["attempts"],
            "decisions": {"retry": c["retry"], "fallback": c["fallback"], "give_up": c["give_up"]},
            "failed": c["failed"], "dead_letters": c["dead_letters"], "budget_refusals": c["budget_refusals"],
            "runs_failed": c["runs_failed"], "runs": len(affected), "run_ids": affected[:5],
            "first_seen": first_seen, "last_seen": last_seen, "first_seq": first_seq, "last_seq": last_seq,
            "sample_message": sample_message, "sample_event_id": sample_id, "sample_seq": int(sample_seq),
        })
    out.sort(key=lambda g: (-g["count"], -g["last_seen"], g["fingerprint"]))
    return out if limit is None else out[:limit]
