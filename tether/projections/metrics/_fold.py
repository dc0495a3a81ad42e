"""The metrics view's fold: each call, attempt, breaker and budget event into per-minute counters and samples."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Literal

from tether.schemas import (
    BudgetExceeded,
    CallDeadLettered,
    CallReplayed,
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

from .._ops import Merge, Op, Table, Upsert
from .._store import Projection

__all__ = ["BUCKET_S", "COUNTERS", "By", "MetricsView"]

BUCKET_S = 60
COUNTERS = (
    "requests", "calls", "attempts", "attempt_errors", "retries", "fallbacks", "give_ups", "dead_letters",
    "breaker_opened", "breaker_half_opened", "breaker_closed", "budget_exceeded",
    "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens", "replayed", "cache_hits",
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


def _replayed(d: CallReplayed) -> _Fold:
    """A call answered from the record ends there: no attempt, no tokens, no latency sample."""
    dims: Dims = (("model", d.model or "?"), ("provider", d.provider or "?")) if d.call_kind == "llm" \
        else (("tool", d.tool or "?"),)
    return dims, {"calls": 1, "cache_hits" if d.via == "cache" else "replayed": 1}, {}, None


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
    CallReplayed.event_type: _replayed,
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
    """Latency percentiles, throughput, tokens and reliability rates over time.

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
    - tokens from ``llm.call.completed``'s usage (cached and reasoning are parts, not extras);
    - ``replayed`` / ``cache_hits``: ``call.replayed`` from a resumed run's journal / the response
      cache (each also a call: it ended there, with no attempt).

    Counters count stream messages: JetStream drops a re-publish inside its duplicate window,
    but an event published twice beyond it is counted twice (the errors view, keyed by event
    id, is exact).
    """

    name = "metrics"
    version = 2
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
