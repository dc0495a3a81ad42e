"""The cost ledger's queries: totals per run, agent, model, provider or day, and the priced calls."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any, Literal

from .._reading import epoch, rows

__all__ = ["GroupBy", "calls", "totals"]

GroupBy = Literal["run", "agent", "model", "provider", "day"]

_GROUP_COLUMN: dict[str, str] = {"run": "run_id", "agent": "agent", "model": "model", "provider": "provider",
                                 "day": "day"}


def totals(db: sqlite3.Connection, *, by: GroupBy = "model", since: datetime | float | None = None) -> list[
        dict[str, Any]]:
    """Calls, tokens and dollars per run, agent, model, provider or UTC day.

    ``usd`` sums the priced calls only, and is ``None`` when none of the group's calls
    was priced; ``unpriced`` counts the calls that could not be. ``replayed`` and
    ``cache_hits`` count the calls answered from a resumed run's journal and from the
    response cache (in ``calls``, at no cost); ``saved_usd`` is what they would have cost.
    Days come oldest first, other groups most expensive first.
    """
    column = _GROUP_COLUMN.get(by)
    if column is None:
        raise ValueError(f"totals by {by!r}: choose one of {', '.join(_GROUP_COLUMN)}")
    where = ""
    params: list[Any] = []
    if since is not None:
        where, params = "WHERE at >= ?", [epoch(since)]
    order = "key" if by == "day" else "usd IS NULL, usd DESC, key"
    return rows(db, f"""
        SELECT "{column}" AS key, count(*) AS calls,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cached_tokens) AS cached_tokens, sum(cache_write_tokens) AS cache_write_tokens,
               sum(reasoning_tokens) AS reasoning_tokens, sum(usd) AS usd,
               sum(priced = 0) AS unpriced, min(at) AS first_at, max(at) AS last_at,
               coalesce(sum(via = 'journal'), 0) AS replayed, coalesce(sum(via = 'cache'), 0) AS cache_hits,
               coalesce(sum(saved_usd), 0.0) AS saved_usd
        FROM calls {where} GROUP BY "{column}" ORDER BY {order}""", params)


def calls(db: sqlite3.Connection, *, run_id: str | None = None, agent: str | None = None, model: str | None = None,
          provider: str | None = None, since: datetime | float | None = None, unpriced: bool | None = None,
          limit: int = 100) -> list[dict[str, Any]]:
    """The ledger's rows, newest first, filtered by any of the arguments."""
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    for column, value in (("run_id", run_id), ("agent", agent), ("model", model), ("provider", provider)):
        if value is not None:
            where.append(f'"{column}" = ?')
            params.append(value)
    if since is not None:
        where.append("at >= ?")
        params.append(epoch(since))
    if unpriced is not None:
        where.append("priced = ?")
        params.append(0 if unpriced else 1)
    return rows(db, f"SELECT * FROM calls WHERE {' AND '.join(where)} ORDER BY at DESC, call_id LIMIT ?",
                 [*params, limit])
