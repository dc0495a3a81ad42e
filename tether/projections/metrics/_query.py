"""The metrics view's queries: rows per model, provider or tool (:func:`stats`), or their sum (:func:`total`)."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from ._fold import BUCKET_S, COUNTERS, By

__all__ = ["percentile", "stats", "total"]



def percentile(ordered: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of sorted values: the smallest value with at least
    ``p`` % of the values at or below it (always an observed value). None when there are none."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _start_bucket(since: datetime | float | None) -> int | None:
    if since is None:
        return None
    start = since.timestamp() if isinstance(since, datetime) else float(since)
    return int(start // BUCKET_S) * BUCKET_S


def stats(db: sqlite3.Connection, *, since: datetime | float | None = None, by: By = "model",
          bucket: int | None = None) -> list[dict[str, Any]]:
    """One row per ``by`` dimension (and per ``bucket`` seconds, if given), busiest first.

    ``since`` counts from the minute it falls in. Latencies are in milliseconds, percentiles
    nearest-rank over the samples in the window; ``calls_per_s`` divides by the window (from
    the first bucket, or ``since``, to the end of the last one) or by ``bucket``; rates are
    per attempt (``retry_rate`` = attempts that were retried / attempts). ``by="all"`` gives
    the totals (dimension ``*``), with latencies over every provider and tool sample.
    """
    if by not in ("model", "provider", "tool", "all"):
        raise ValueError(f"by must be model, provider, tool or all, not {by!r}")
    dim_column = "'*'" if by == "all" else by  # every sample has a provider or a tool
    return _stats(db, by, by, dim_column, since=since, bucket=bucket)


def total(db: sqlite3.Connection, of: Literal["llm", "tool"], *, since: datetime | float | None = None,
          bucket: int | None = None) -> list[dict[str, Any]]:
    """The sum of the LLM rows (``of="llm"``: every model, every provider) or of the tool rows,
    as one row per ``bucket`` (or one in all) with dimension ``*``: what the rows of
    :func:`stats` by model, provider or tool add up to, with percentiles over their samples.
    (``stats(by="all")`` counts LLM and tool calls together.)"""
    if of not in ("llm", "tool"):
        raise ValueError(f"of must be llm or tool, not {of!r}")
    column = "provider" if of == "llm" else "tool"  # every LLM event has one provider, and only they
    return _stats(db, of, column, f"CASE WHEN {column} IS NOT NULL THEN '*' END", since=since, bucket=bucket,
                  collapse=True)


def _stats(db: sqlite3.Connection, label: str, dim_kind: str, dim_column: str, *,
           since: datetime | float | None, bucket: int | None, collapse: bool = False) -> list[dict[str, Any]]:
    """Rows from the counters of ``dim_kind`` (every dimension summed into ``*`` if ``collapse``)
    and the samples whose ``dim_column`` is not null, labelled ``label``."""
    if bucket is not None and (bucket <= 0 or bucket % BUCKET_S):
        raise ValueError(f"bucket must be a positive multiple of {BUCKET_S} seconds, got {bucket}")
    start = _start_bucket(since)
    where = "dim_kind = ?"
    params: list[Any] = [dim_kind]
    if start is not None:
        where += " AND bucket >= ?"
        params.append(start)
    cols = ", ".join(f"sum({c})" for c in COUNTERS)
    rows = db.execute(f"SELECT bucket, dim, {cols} FROM counters WHERE {where} GROUP BY bucket, dim",
                      params).fetchall()
    if not rows:
        return []
    size = bucket or 0

    def slot(b: int) -> int | None:
        return b // size * size if size else None

    totals: dict[tuple[str, int | None], dict[str, int]] = {}
    for b, dim, *values in rows:
        acc = totals.setdefault(("*" if collapse else dim, slot(b)), dict.fromkeys(COUNTERS, 0))
        for name, v in zip(COUNTERS, values, strict=True):
            acc[name] += v or 0
    first = start if start is not None else min(r[0] for r in rows)
    span = float(size or max(r[0] for r in rows) + BUCKET_S - first)

    swhere = "metric IN ('latency_ms', 'ttft_ms')" + (" AND bucket >= ?" if start is not None else "")
    measured: dict[tuple[str, str, int | None], list[float]] = {}
    for dim, metric, b, value in db.execute(f"SELECT {dim_column}, metric, bucket, value FROM samples "
                                            f"WHERE {swhere} ORDER BY value", [] if start is None else [start]):
        if dim is not None:
            measured.setdefault((dim, metric, slot(b)), []).append(value)

    out = []
    for (dim, b), c in totals.items():
        latency = measured.get((dim, "latency_ms", b), [])
        ttft = measured.get((dim, "ttft_ms", b), [])
        attempts = c["attempts"]
        row: dict[str, Any] = {"dim_kind": label, "dim": dim}
        if size:
            row["bucket"] = b
        row.update({
            "calls": c["calls"], "calls_per_s": c["calls"] / span if span > 0 else None,
            "requests": c["requests"], "attempts": attempts,
            "latency_p50_ms": percentile(latency, 50), "latency_p95_ms": percentile(latency, 95),
            "latency_p99_ms": percentile(latency, 99), "latency_samples": len(latency),
            "ttft_p50_ms": percentile(ttft, 50), "ttft_samples": len(ttft),
            "input_tokens": c["input_tokens"], "output_tokens": c["output_tokens"],
            "cached_input_tokens": c["cached_input_tokens"], "reasoning_tokens": c["reasoning_tokens"],
            "tokens": c["input_tokens"] + c["output_tokens"],
            "retries": c["retries"], "fallbacks": c["fallbacks"], "give_ups": c["give_ups"],
            "attempt_errors": c["attempt_errors"],
            "retry_rate": c["retries"] / attempts if attempts else None,
            "fallback_rate": c["fallbacks"] / attempts if attempts else None,
            "error_rate": c["attempt_errors"] / attempts if attempts else None,
            "dead_letters": c["dead_letters"], "budget_exceeded": c["budget_exceeded"],
            "breaker_opened": c["breaker_opened"],
            "breaker_transitions": c["breaker_opened"] + c["breaker_half_opened"] + c["breaker_closed"],
            "replayed": c["replayed"], "cache_hits": c["cache_hits"],
        })
        out.append(row)
    out.sort(key=lambda r: (r.get("bucket") or 0, -r["calls"], -r["attempts"], r["dim"]))
    return out
