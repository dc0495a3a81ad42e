"""What each page reads from a view: the views' own queries, and the few the dashboard adds
(cost per hour, breaker transitions). Each takes a read-only connection and returns rows."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from tether.projections.errors import list_groups
from tether.projections.ledger import totals
from tether.projections.metrics import stats, total
from tether.projections.traces import list_runs, trace

__all__ = ["breaker_transitions", "cost_data", "error_groups", "find_span", "latency_data", "run_trace", "runs"]


def runs(db: sqlite3.Connection, *, agent: str | None, status: str | None, since: float | None,
         search: str | None, limit: int = 100) -> list[dict[str, Any]]:
    return list_runs(db, limit=limit, agent=agent, status=status, since=since, search=search)


def run_trace(db: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    return trace(db, run_id)


def find_span(roots: list[dict[str, Any]], span_id: str) -> dict[str, Any] | None:
    stack = list(roots)
    while stack:
        span = stack.pop()
        if span["span_id"] == span_id:
            return span
        stack.extend(span["children"])
    return None


def cost_data(db: sqlite3.Connection, since: float | None) -> dict[str, Any]:
    """Totals by model, provider, agent and the 20 dearest runs, and dollars per UTC hour."""
    out: dict[str, Any] = {by: totals(db, by=by, since=since) for by in ("model", "provider", "agent")}
    out["run"] = totals(db, by="run", since=since)[:20]
    where, params = ("WHERE at >= ?", [since]) if since is not None else ("", [])
    hours = {hour: {"hour": hour, "usd": usd or 0.0, "calls": calls} for hour, usd, calls in db.execute(
        f"SELECT CAST(at / 3600 AS INTEGER) * 3600 AS hour, sum(usd), count(*) FROM calls {where} "
        "GROUP BY hour ORDER BY hour", params)}
    out["hours"] = hourly(hours)
    return out


def hourly(hours: dict[int, dict[str, Any]], most: int = 24 * 90) -> list[dict[str, Any]]:
    """Every hour from an hour before the first to an hour after the last: an hour with no call cost $0.
    (A lone point gets its neighbours, so the chart has a sensible range.) Left sparse past ``most`` hours."""
    if not hours:
        return []
    first, last = min(hours) - 3600, max(hours) + 3600
    if (last - first) // 3600 > most:
        return [hours[h] for h in sorted(hours)]
    return [hours.get(h, {"hour": h, "usd": 0.0, "calls": 0}) for h in range(first, last + 1, 3600)]


def latency_data(db: sqlite3.Connection, since: float | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """LLM latency percentiles, rates per 5 minutes, and the same per model over the window."""
    return total(db, "llm", since=since, bucket=300), stats(db, since=since, by="model")


def error_groups(db: sqlite3.Connection, since: float | None) -> list[dict[str, Any]]:
    return list_groups(db, since=since, limit=100)


def breaker_transitions(db: sqlite3.Connection, limit: int = 1000) -> list[dict[str, Any]]:
    """Circuit-breaker transitions, oldest first (the last ``limit``): route, to what state, when, why."""
    found = db.execute("SELECT route, name, started_at, attributes FROM spans WHERE kind = 'circuit' "
                       "ORDER BY started_at DESC LIMIT ?", (limit,)).fetchall()
    out = []
    for route, name, started_at, attributes in reversed(found):
        action = str(name or "").split(" ")[1] if len(str(name or "").split(" ")) > 1 else "?"
        attrs = json.loads(attributes or "{}")
        out.append({"route": route, "action": action, "started_at": started_at,
                    "reason": attrs.get("tether.circuit.reason")})
    return out
