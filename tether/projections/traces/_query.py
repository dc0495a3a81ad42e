"""The traces view's queries: runs with their counts (:func:`list_runs`) and a run's span tree (:func:`trace`).

Counts are not stored: they are summed from the span rows when read.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .._reading import epoch, rows

__all__ = ["HEARTBEAT_S", "STATUSES", "list_runs", "run_status", "trace"]


# Each distinct event of a run leaves its mark on exactly one span row (a request sets its
# call's ``attributes``, an outcome its ``end_attributes``, a failed attempt its own span's),
# so ``events`` counts those marks.
_AGGREGATES = """
SELECT run_id,
       sum(kind = 'llm') AS llm_calls,
       sum(kind = 'tool') AS tool_calls,
       sum(kind IN ('llm', 'tool') AND status = 'error') AS errors,
       sum(kind = 'attempt' AND status = 'error') AS failed_attempts,
       sum(kind IN ('llm', 'tool') AND status = 'running') AS running_calls,
       sum(kind = 'attention') - sum(kind = 'resolution') AS unresolved,
       coalesce(sum(CASE WHEN kind = 'llm' THEN input_tokens END), 0) AS input_tokens,
       coalesce(sum(CASE WHEN kind = 'llm' THEN output_tokens END), 0) AS output_tokens,
       sum(CASE WHEN kind = 'llm' THEN cost_usd END) AS cost_usd,
       sum(kind = 'llm' AND priced = 0) AS unpriced_calls,
       sum(kind = 'replay') AS replayed_calls,
       sum(CASE WHEN kind = 'replay' THEN json_extract(attributes, '$."tether.cost.saved_usd"') END) AS saved_usd,
       max(ended_at) AS spans_ended_at,
       sum(CASE WHEN kind IN ('run', 'llm', 'tool') THEN (attributes IS NOT NULL) + (end_attributes IS NOT NULL)
                WHEN kind = 'attempt' THEN attributes IS NOT NULL
                WHEN kind IN ('backoff', 'fallback', 'circuit', 'replay') THEN 0
                ELSE 1 END) AS events
FROM spans WHERE run_id IN ({marks}) GROUP BY run_id
"""


STATUSES = ("ok", "error", "cancelled", "running", "interrupted", "needs_attention")
HEARTBEAT_S = 300.0
"""A run open and quiet (no event) for this long is ``interrupted``: its process is taken to be gone."""


def run_status(stored: str | None, running_calls: int, errors: int, *, unresolved: int = 0,
               last_at: float | None = None, now: float | None = None, heartbeat_s: float = HEARTBEAT_S) -> str:
    """A finished run's own word; else ``needs_attention`` while a call it stopped at is unresolved;
    ``interrupted`` when it stayed open and quiet past ``heartbeat_s``; ``running`` while it or a call
    is open; else by its calls."""
    if stored in ("ok", "error", "cancelled"):
        return stored
    if unresolved > 0:
        return "needs_attention"
    if stored == "running" or running_calls:
        quiet = last_at is not None and (time.time() if now is None else now) - last_at > heartbeat_s
        return "interrupted" if quiet else "running"
    return "error" if errors else "ok"


def _with_counts(db: sqlite3.Connection, runs: list[dict[str, Any]], *, now: float | None = None,
                 heartbeat_s: float = HEARTBEAT_S) -> list[dict[str, Any]]:
    if not runs:
        return runs
    ids = [r["run_id"] for r in runs]
    marks = ", ".join("?" for _ in ids)
    agg = {a["run_id"]: a for a in rows(db, _AGGREGATES.format(marks=marks), ids)}
    out = []
    for run in runs:
        a = agg.get(run["run_id"], {})
        counts = {k: int(a.get(k) or 0) for k in ("events", "llm_calls", "tool_calls", "errors", "failed_attempts",
                                                  "input_tokens", "output_tokens", "unpriced_calls",
                                                  "replayed_calls")}
        status = run_status(run["status"], int(a.get("running_calls") or 0), counts["errors"],
                            unresolved=int(a.get("unresolved") or 0), last_at=run["last_at"], now=now,
                            heartbeat_s=heartbeat_s)
        ended = run["ended_at"]
        if ended is None and status not in ("running", "interrupted", "needs_attention"):
            ended = max((x for x in (a.get("spans_ended_at"), run["last_at"]) if x is not None), default=None)
        duration = run["duration_ms"]
        if duration is None and ended is not None and run["started_at"] is not None:
            duration = (ended - run["started_at"]) * 1000
        out.append({**run, "status": status, "ended_at": ended, "duration_ms": duration, **counts,
                    "cost_usd": a.get("cost_usd"), "saved_usd": a.get("saved_usd")})
    return out


def list_runs(db: sqlite3.Connection, *, limit: int = 50, agent: str | None = None, status: str | None = None,
              since: datetime | float | None = None, search: str | None = None, now: float | None = None,
              heartbeat_s: float = HEARTBEAT_S) -> list[dict[str, Any]]:
    """The newest runs first, with their counts, tokens and cost (summed from their spans).

    ``search`` keeps the runs whose id, agent or name contains it (case-insensitive).

    ``status`` is the run's own (from ``run.finished``) when it has one; a run stopped at a tool call
    nobody resolved yet is ``needs_attention``; a run still open, or with a call still open, is
    ``running``, or ``interrupted`` once no event came for ``heartbeat_s`` (its process is gone:
    ``tether resume``); a run without lifecycle events is ``error`` when one of its calls failed,
    else ``ok``.
    """
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    if agent is not None:
        where.append("agent = ?")
        params.append(agent)
    if since is not None:
        where.append("started_at >= ?")
        params.append(epoch(since))
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(run_id LIKE ? ESCAPE '\\' OR agent LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\')")
        params += [pattern] * 3
    cursor = db.execute(f"SELECT * FROM runs WHERE {' AND '.join(where)} ORDER BY started_at DESC, run_id",
                        params)
    names = [c[0] for c in cursor.description]
    out: list[dict[str, Any]] = []
    while len(out) < limit:
        page = [dict(zip(names, row, strict=True)) for row in cursor.fetchmany(max(limit, 100))]
        if not page:
            break
        out.extend(r for r in _with_counts(db, page, now=now, heartbeat_s=heartbeat_s)
                   if status is None or r["status"] == status)
    return out[:limit]


def trace(db: sqlite3.Connection, run_id: str, *, now: float | None = None,
          heartbeat_s: float = HEARTBEAT_S) -> list[dict[str, Any]]:
    """The span tree of a run (its sub-agents' runs nested in it), or of a call id.

    Returns the root spans (normally one, the run's), each a dict of the span's columns
    with ``attributes`` (merged), ``duration_ms`` (computed for spans that ended) and
    ``children``, sorted by start time. Circuit-breaker transitions on the run's routes
    while it ran appear under the run. Empty if the id is unknown.
    """
    runs = [r for (r,) in db.execute(
        "WITH RECURSIVE tree(id) AS (SELECT ? UNION SELECT runs.run_id FROM runs JOIN tree "
        "ON runs.parent_run_id = tree.id) SELECT id FROM tree", (run_id,))]
    marks = ", ".join("?" for _ in runs)
    spans = rows(db, f"SELECT * FROM spans WHERE run_id IN ({marks})", runs)
    if not spans:  # a call made outside any run, or a call id
        spans = rows(db, "SELECT * FROM spans WHERE span_id = ? OR (span_id >= ? AND span_id < ? AND call_id = ?)",
                      (run_id, f"{run_id}#", f"{run_id}$", run_id))  # '$' follows '#': all "{id}#..."
    if not spans:
        return []
    spans += _circuits(db, spans)
    counts = {r["run_id"]: r for r in _with_counts(db, rows(db, f"SELECT * FROM runs WHERE run_id IN ({marks})",
                                                              runs), now=now, heartbeat_s=heartbeat_s)}
    by_id: dict[str, dict[str, Any]] = {}
    for span in spans:
        attributes = {**json.loads(span.pop("attributes") or "{}"), **json.loads(span.pop("end_attributes") or "{}")}
        if span["kind"] == "run" and span["span_id"] in counts:
            run = counts[span["span_id"]]
            span |= {"status": run["status"], "ended_at": run["ended_at"], "input_tokens": run["input_tokens"],
                     "output_tokens": run["output_tokens"], "cost_usd": run["cost_usd"]}
        if span["duration_ms"] is None and span["ended_at"] is not None and span["status"] != "running":
            span["duration_ms"] = (span["ended_at"] - span["started_at"]) * 1000
        if span["name"] is None:  # only attempts of this call are in the log (yet)
            span["name"] = {"llm": "chat", "tool": "execute_tool"}.get(span["kind"], span["kind"])
        by_id[span["span_id"]] = {**span, "attributes": attributes, "children": []}
    for span in by_id.values():  # one trace per run: spans recorded without a traceparent join the run's
        if span["trace_id"] is None and span["run_id"] in by_id:
            span["trace_id"] = by_id[span["run_id"]]["trace_id"]
    roots = []
    for span in by_id.values():
        parent = by_id.get(span["parent_id"] or "")
        if parent is None and span["kind"] != "run":  # its parent is not in the log (yet): under the run
            parent = by_id.get(span["run_id"] or "") or by_id.get(run_id)
        if parent is None or parent is span:
            roots.append(span)
        else:
            parent["children"].append(span)
    for span in by_id.values():
        span["children"].sort(key=_start_order)
    return sorted(roots, key=_start_order)


def _circuits(db: sqlite3.Connection, spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    routes = sorted({s["route"] for s in spans if s["kind"] in ("llm", "attempt") and s["route"]})
    starts = [s["started_at"] for s in spans if s["started_at"] is not None]
    if not routes or not starts:
        return []
    ends = [s["ended_at"] or s["started_at"] for s in spans if s["started_at"] is not None]
    marks = ", ".join("?" for _ in routes)
    return rows(db, f"SELECT * FROM spans WHERE kind = 'circuit' AND route IN ({marks}) "
                     "AND started_at BETWEEN ? AND ?", [*routes, min(starts), max(ends)])


def _start_order(span: Mapping[str, Any]) -> tuple[float, str]:
    started = span["started_at"]
    return (float("inf") if started is None else started, span["span_id"])
