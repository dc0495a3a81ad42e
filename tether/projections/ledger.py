"""The cost ledger: one row per completed LLM call, priced by :func:`tether.pricing.price`.

Each ``llm.call.completed`` becomes a row keyed by its call id (a duplicate event
rewrites the same row), with its tokens, the dollars, and where that figure came from
(``price_source``, ``price_version``). A model genai-prices does not know is recorded
with ``usd`` NULL, ``priced`` 0 and the reason: unpriced, never free. Calls are priced
at the event's own time, so a rebuild gives the same figures; a rebuild under a newer
genai-prices re-prices history (``tether replay cost``).

Tokens as tether records them (see :class:`tether.schemas.Usage`): ``cached_tokens`` and
``cache_write_tokens`` are parts of ``input_tokens`` and ``reasoning_tokens`` a part of
``output_tokens``; each part is priced once, at its own rate.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from tether.schemas import Event, LlmCallCompleted

from ._ops import Op, Table, Upsert
from ._priced import call_price
from ._store import Projection

__all__ = ["CostLedger", "GroupBy", "calls", "totals"]

GroupBy = Literal["run", "agent", "model", "provider", "day"]

CALLS = Table("calls", {
    "call_id": "TEXT", "run_id": "TEXT", "agent": "TEXT", "tenant": "TEXT", "provider": "TEXT", "model": "TEXT",
    "day": "TEXT", "at": "REAL", "input_tokens": "INTEGER", "output_tokens": "INTEGER", "cached_tokens": "INTEGER",
    "cache_write_tokens": "INTEGER", "reasoning_tokens": "INTEGER", "usd": "REAL", "priced": "INTEGER",
    "price_source": "TEXT", "price_version": "TEXT", "unpriced_reason": "TEXT", "seq": "INTEGER",
}, key=("call_id",), indexes=(("at",), ("run_id",)))

_GROUP_COLUMN: dict[str, str] = {"run": "run_id", "agent": "agent", "model": "model", "provider": "provider",
                                 "day": "day"}


class CostLedger(Projection):
    """Priced LLM calls (table ``calls``); see :func:`totals` and :func:`calls`."""

    name = "cost"
    version = 1
    tables = (CALLS,)
    types = frozenset({LlmCallCompleted.event_type})

    def apply(self, event: Event, seq: int) -> list[Op]:
        data = event.data
        if not isinstance(data, LlmCallCompleted):
            return []
        usage = data.usage
        cost = call_price(data.provider, data.model, usage, event.time)
        return [Upsert("calls", {
            "call_id": data.call_id, "run_id": event.runid, "agent": event.agentid,
            "tenant": event.extensions.get("tenant"), "provider": data.provider, "model": data.model,
            "day": event.time.astimezone(UTC).date().isoformat(), "at": event.time.timestamp(),
            "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_input_tokens, "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens, "usd": cost.usd, "priced": int(cost.priced),
            "price_source": cost.source, "price_version": cost.version, "unpriced_reason": cost.unpriced_reason,
            "seq": seq,
        })]


def _epoch(value: datetime | float | None) -> float | None:
    if value is None or isinstance(value, float | int):
        return value
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _rows(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cursor = db.execute(sql, params)
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def totals(db: sqlite3.Connection, *, by: GroupBy = "model", since: datetime | float | None = None) -> list[
        dict[str, Any]]:
    """Calls, tokens and dollars per run, agent, model, provider or UTC day.

    ``usd`` sums the priced calls only, and is ``None`` when none of the group's calls
    was priced; ``unpriced`` counts the calls that could not be. Days come oldest first,
    other groups most expensive first.
    """
    column = _GROUP_COLUMN.get(by)
    if column is None:
        raise ValueError(f"totals by {by!r}: choose one of {', '.join(_GROUP_COLUMN)}")
    where = ""
    params: list[Any] = []
    if since is not None:
        where, params = "WHERE at >= ?", [_epoch(since)]
    order = "key" if by == "day" else "usd IS NULL, usd DESC, key"
    return _rows(db, f"""
        SELECT "{column}" AS key, count(*) AS calls,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cached_tokens) AS cached_tokens, sum(cache_write_tokens) AS cache_write_tokens,
               sum(reasoning_tokens) AS reasoning_tokens, sum(usd) AS usd,
               sum(priced = 0) AS unpriced, min(at) AS first_at, max(at) AS last_at
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
        params.append(_epoch(since))
    if unpriced is not None:
        where.append("priced = ?")
        params.append(0 if unpriced else 1)
    return _rows(db, f"SELECT * FROM calls WHERE {' AND '.join(where)} ORDER BY at DESC, call_id LIMIT ?",
                 [*params, limit])
