"""The metrics view: latency percentiles, throughput, tokens and reliability rates over time.

Everything is kept per 1-minute bucket (of the event's own time) and per dimension: ``model``,
``provider``, ``tool``, and ``all`` (dimension ``*``, the totals). Two tables:

- ``samples``: one row per latency measurement (``latency_ms`` of a completed LLM or tool
  call: the attempt that succeeded, not the wait for retries before it; ``ttft_ms`` of a
  streamed LLM call) with its model and provider, or its tool; keyed
  by stream sequence and metric, so a rebuild writes the very same rows; percentiles are
  computed when read, over any window and any dimension;
- ``counters``: sums per bucket and dimension, folded with ``add``.

What feeds which counter:

- ``requests``: ``*.call.requested``; ``calls``: calls that ended (``completed`` or ``failed``);
- ``attempts``: ``completed`` plus ``attempt_failed``; ``attempt_errors``: ``attempt_failed``,
  with ``retries``, ``fallbacks`` and ``give_ups`` by its decision;
- ``dead_letters``: per model, provider and tool, the calls that gave up (``*.call.failed``:
  tether dead-letters every one of them, and ``call.dead_lettered`` names no model or tool);
  in ``all``, the ``call.dead_lettered`` events themselves, malformed work included;
- ``breaker_opened`` / ``breaker_half_opened`` / ``breaker_closed``: ``circuit.*`` of the
  route (``provider:model`` or ``tool:name``); ``budget_exceeded`` (``all`` only);
- tokens from ``llm.call.completed``'s usage (cached and reasoning are parts, not extras).

Counters count stream messages: JetStream drops a re-publish inside its duplicate window,
but an event published twice beyond it is counted twice (the errors view, keyed by event
id, is exact).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal

from tether.schemas import (
    BudgetExceeded,
    CallDeadLettered,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    ToolCallAttemptFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
)

from ._ops import Merge, Op, Table, Upsert
from ._store import Projection

__all__ = ["BUCKET_S", "COUNTERS", "MetricsView", "percentile", "stats", "total"]

BUCKET_S = 60
COUNTERS = (
    "requests", "calls", "attempts", "attempt_errors", "retries", "fallbacks", "give_ups", "dead_letters",
    "breaker_opened", "breaker_half_opened", "breaker_closed", "budget_exceeded",
    "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens",
)
By = Literal["model", "provider", "tool", "all"]
Dims = tuple[tuple[str, str], ...]

_SAMPLES = Table("samples", {"seq": "INTEGER", "metric": "TEXT", "bucket": "INTEGER", "model": "TEXT",
                             "provider": "TEXT", "tool": "TEXT", "value": "REAL"},
                 key=("seq", "metric"), indexes=(("metric", "bucket"),))
_COUNTERS = Table("counters", {"bucket": "INTEGER", "dim_kind": "TEXT", "dim": "TEXT",
                               **dict.fromkeys(COUNTERS, "INTEGER")},
                  key=("bucket", "dim_kind", "dim"), indexes=(("dim_kind", "bucket"),))
_ADD: dict[str, Merge] = dict.fromkeys(COUNTERS, "add")
_ZERO = dict.fromkeys(COUNTERS, 0)
_DECISIONS = {"retry": "retries", "fallback": "fallbacks", "give_up": "give_ups"}
_Fold = tuple[Dims, dict[str, int], dict[str, float | None], dict[str, int] | None]
"""What one event adds: its dimensions, its counters there, its samples, and its counters in
``all`` (None: the same)."""


def _llm(d: LlmCallRequested | LlmCallAttemptFailed | LlmCallCompleted | LlmCallFailed) -> Dims:
    return (("model", d.model), ("provider", d.provider))


def _tool(d: ToolCallRequested | ToolCallAttemptFailed | ToolCallCompleted | ToolCallFailed) -> Dims:
    return (("tool", d.tool),)


def _requested(d: LlmCallRequested | ToolCallRequested) -> _Fold:
    return _llm(d) if isinstance(d, LlmCallRequested) else _tool(d), {"requests": 1}, {}, None


def _llm_completed(d: LlmCallCompleted) -> _Fold:
    u = d.usage
    return _llm(d), {"calls": 1, "attempts": 1, "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                     "cached_input_tokens": u.cached_input_tokens, "reasoning_tokens": u.reasoning_tokens}, \
        {"latency_ms": d.latency_ms, "ttft_ms": d.ttft_ms}, None


def _tool_completed(d: ToolCallCompleted) -> _Fold:
    return _tool(d), {"calls": 1, "attempts": 1}, {"latency_ms": d.duration_ms}, None


def _attempt_failed(d: LlmCallAttemptFailed | ToolCallAttemptFailed) -> _Fold:
    dims = _llm(d) if isinstance(d, LlmCallAttemptFailed) else _tool(d)
    return dims, {"attempts": 1, "attempt_errors": 1, _DECISIONS[d.decision]: 1}, {}, None


def _failed(d: LlmCallFailed | ToolCallFailed) -> _Fold:
    # Per dimension a call that gave up is a dead letter; in ``all`` the dead letters are the
    # call.dead_lettered events, which also count malformed work.
    return _llm(d) if isinstance(d, LlmCallFailed) else _tool(d), {"calls": 1, "dead_letters": 1}, {}, {"calls": 1}


def _circuit(d: CircuitOpened | CircuitHalfOpened | CircuitClosed) -> _Fold:
    kind, sep, rest = d.route.partition(":")  # "provider:model" or "tool:name"
    dims: Dims = ((("tool", rest),) if kind == "tool" else (("provider", kind), ("model", rest))) if sep \
        else (("provider", d.route),)
    return dims, {f"breaker_{d.action}": 1}, {}, None


def _dead_lettered(d: CallDeadLettered) -> _Fold:
    return (), {}, {}, {"dead_letters": 1}


def _budget(d: BudgetExceeded) -> _Fold:
    return (), {}, {}, {"budget_exceeded": 1}


# Dispatch on the type name: the catalogue maps each to one payload class.
_FOLDS: dict[str, Callable[[Any], _Fold]] = {
    LlmCallRequested.event_type: _requested, ToolCallRequested.event_type: _requested,
    LlmCallCompleted.event_type: _llm_completed, ToolCallCompleted.event_type: _tool_completed,
    LlmCallAttemptFailed.event_type: _attempt_failed, ToolCallAttemptFailed.event_type: _attempt_failed,
    LlmCallFailed.event_type: _failed, ToolCallFailed.event_type: _failed,
    CircuitOpened.event_type: _circuit, CircuitHalfOpened.event_type: _circuit, CircuitClosed.event_type: _circuit,
    CallDeadLettered.event_type: _dead_lettered, BudgetExceeded.event_type: _budget,
}


def _read(event: Event, seq: int) -> tuple[list[tuple[int, str, str, dict[str, Any]]], list[Upsert]]:
    """What one event adds: (bucket, dim kind, dim, counts) per counters row it counts in, and
    its samples' upserts (nothing for a type the view does not count)."""
    fold = _FOLDS.get(event.type)
    if fold is None:
        return [], []
    dims, counts, samples, in_all = fold(event.data)
    bucket = int(event.time.timestamp() // BUCKET_S) * BUCKET_S
    rows = [(bucket, kind, dim, counts) for kind, dim in dims]
    rows.append((bucket, "all", "*", counts if in_all is None else in_all))
    if not samples:
        return rows, []
    where = dict(dims)
    return rows, [Upsert("samples", {"seq": seq, "metric": metric, "bucket": bucket, "model": where.get("model"),
                                     "provider": where.get("provider"), "tool": where.get("tool"), "value": value})
                  for metric, value in samples.items() if value is not None]


class MetricsView(Projection):
    """Latency samples and counters per minute, model, provider and tool (see the module docstring)."""

    name = "metrics"
    version = 1
    weight = 4.0  # measured: some four times the cost ledger's fold
    tables = (_SAMPLES, _COUNTERS)
    types: ClassVar[frozenset[str] | None] = frozenset(_FOLDS)

    def apply(self, event: Event, seq: int) -> Iterable[Op]:
        counts, samples = _read(event, seq)
        return [*(Upsert("counters", {"bucket": b, "dim_kind": kind, "dim": dim, **_ZERO, **n}, _ADD)
                  for b, kind, dim, n in counts), *samples]

    def fold(self, events: Sequence[tuple[int, Event]]) -> tuple[list[Op], list[tuple[int, Exception]]]:
        """:meth:`apply` for a batch, with one upsert per counters row: its counts summed.

        Exact: a counters row is only ever written by these ``add`` upserts, and SQLite adds
        integers exactly in any order, so a row's summed upsert takes the place of its first
        one. Counts that are not all integers (only hand-built events have them) keep their
        place, and the row's later counts are summed after them; a key that is not
        (int, str, str) is left alone (SQLite may key it apart). Samples are kept as they are."""
        out: list[Op | None] = []
        summed: dict[tuple[int, str, str], tuple[int, dict[str, Any]]] = {}  # row -> (its place in out, counts)
        refused: list[tuple[int, Exception]] = []
        for seq, event in events:
            try:
                rows, sampled = _read(event, seq)
            except Exception as exc:  # refused: nothing of it is kept
                refused.append((seq, exc))
                continue
            for b, kind, dim, row_counts in rows:
                key = (b, kind, dim)
                ints = all(type(n) is int for n in row_counts.values())
                if type(b) is int and type(kind) is str and type(dim) is str:
                    if ints:
                        slot = summed.get(key)
                        if slot is None:
                            summed[key] = (len(out), {**_ZERO, **row_counts})
                            out.append(None)  # filled in below
                        else:
                            total = slot[1]
                            for c, n in row_counts.items():
                                total[c] += n
                        continue
                    left = summed.pop(key, None)  # this row's later counts are summed after this one
                    if left is not None:
                        out[left[0]] = Upsert("counters", {"bucket": b, "dim_kind": kind, "dim": dim, **left[1]},
                                              _ADD)
                out.append(Upsert("counters", {"bucket": b, "dim_kind": kind, "dim": dim, **_ZERO, **row_counts},
                                  _ADD))
            out.extend(sampled)
        for (b, kind, dim), (at, total) in summed.items():
            out[at] = Upsert("counters", {"bucket": b, "dim_kind": kind, "dim": dim, **total}, _ADD)
        return [op for op in out if op is not None], refused  # (every place was filled)

    def notify_key(self, op: Op) -> str | None:
        """Counters announce ``<dim_kind>:<dim>`` (``tether.proj.metrics.model:gpt-4o``); samples nothing."""
        if op.table != "counters" or not isinstance(op, Upsert):
            return None
        return f"{op.values['dim_kind']}:{op.values['dim']}"


# -- reading --------------------------------------------------------------------------------------


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
        })
        out.append(row)
    out.sort(key=lambda r: (r.get("bucket") or 0, -r["calls"], -r["attempts"], r["dim"]))
    return out
