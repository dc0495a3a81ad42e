"""The errors view's fold: each failure event into its group, its occurrence and the run it affected."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import ClassVar

from tether.schemas import Event

from .._ops import Merge, Op, Table, Upsert
from .._store import Projection
from ._fingerprint import occurrence_of

__all__ = ["ErrorsView"]

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
    """Failures grouped by fingerprint (see :mod:`~tether.projections.errors._fingerprint`).

    Tables (every merge rule commutes, so any order of the same events gives the same rows):

    - ``groups``: one row per fingerprint, its parts, first and last seen (event time) and
      stream sequence, and ``sample``: the first event by sequence (``[seq, event id, raw
      message]`` as JSON with the sequence zero-padded, so ``min`` picks the earliest);
    - ``occurrences``: one row per failure event, **keyed by event id**, so an event published
      twice under two message ids counts once;
    - ``group_runs``: the runs a fingerprint affected, with first and last seen.

    Counts are computed when read (:func:`~tether.projections.errors.list_groups`).
    """

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
