"""The traces view's fold: each event into rows of ``runs`` and ``spans``, pure and order-insensitive."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from tether.schemas import (
    BudgetExceeded,
    CallDeadLettered,
    CallRedriven,
    CallReplayed,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    MemoryCompacted,
    MemoryDeleted,
    MemoryWritten,
    RunFinished,
    RunNeedsAttention,
    RunStarted,
    ToolCallAttemptFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
    ToolCallResolved,
)

from .._ops import Index, Merge, Op, Table, Upsert, _merge_into
from .._priced import call_price
from .._store import Projection

__all__ = ["TracesView"]

RUNS = Table("runs", {
    "run_id": "TEXT", "agent": "TEXT", "name": "TEXT", "parent_run_id": "TEXT", "tenant": "TEXT",
    "status": "TEXT", "started_at": "REAL", "ended_at": "REAL", "duration_ms": "REAL", "last_at": "REAL",
    "error_type": "TEXT", "error_message": "TEXT", "trace_id": "TEXT", "first_seq": "INTEGER",
    "last_seq": "INTEGER",
}, key=("run_id",), indexes=(("started_at",), ("parent_run_id",)))

SPANS = Table("spans", {
    "span_id": "TEXT", "run_id": "TEXT", "parent_id": "TEXT", "trace_id": "TEXT", "kind": "TEXT", "name": "TEXT",
    "status": "TEXT", "started_at": "REAL", "ended_at": "REAL", "duration_ms": "REAL", "agent": "TEXT",
    "call_id": "TEXT", "route": "TEXT", "provider": "TEXT", "model": "TEXT", "tool": "TEXT", "attempt": "INTEGER",
    "input_tokens": "INTEGER", "output_tokens": "INTEGER", "cached_tokens": "INTEGER",
    "reasoning_tokens": "INTEGER", "cost_usd": "REAL", "priced": "INTEGER", "error_type": "TEXT",
    "error_message": "TEXT", "decision": "TEXT", "attributes": "TEXT", "end_attributes": "TEXT",
    "first_seq": "INTEGER", "last_seq": "INTEGER",
}, key=("span_id",), indexes=(("run_id",), Index(("route", "started_at"), "kind = 'circuit'", "circuit_route")),
    retired_indexes=("spans_call_id", "spans_route_started_at"))
# No index on call_id: every span of a call has the call id for its span id, or begins with it
# and '#' ("{call_id}#a2"...), so the primary key finds them (see trace); and the route index
# covers breaker transitions only, the one query that uses it. The span rows of the commonest
# events, LLM and tool calls, are written to two indexes fewer than they were.

# gen_ai.operation.name for tether's operations (the span is named "{operation} {model}").
OPERATIONS = {"chat": "chat", "messages": "chat", "responses": "chat", "embeddings": "embeddings",
              "completions": "text_completion", "generate_content": "generate_content"}
_PARAMETERS = {"max_tokens": "max_tokens", "max_completion_tokens": "max_tokens",
               "max_output_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p",
               "top_k": "top_k", "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
               "seed": "seed", "stop": "stop_sequences", "n": "choice.count"}

Cols = dict[str, tuple[Any, Merge]]

# The columns every event of a run touches on its two rows (see TracesView.fold).
_TOUCH_MERGE: dict[str, Merge] = {"agent": "keep", "trace_id": "keep", "started_at": "min", "first_seq": "min",
                                  "last_seq": "max"}
_RUN_MERGE: dict[str, Merge] = {**_TOUCH_MERGE, "tenant": "keep", "last_at": "max"}
_RUN_SPAN_MERGE: dict[str, Merge] = {**_TOUCH_MERGE, "kind": "keep", "name": "keep"}
_SPAN_MERGE: dict[str, Merge] = {"run_id": "keep", "trace_id": "keep", "agent": "keep", "first_seq": "min",
                                 "last_seq": "max"}  # what every span of an event carries


class TracesView(Projection):
    """Runs and their span trees, named after the OpenTelemetry GenAI conventions.

    Every run gets an ``invoke_agent {agent}`` span; under it, each LLM call is a
    ``chat {model}`` span (``embeddings {model}``... for other operations), each tool call an
    ``execute_tool {name}`` span, and each memory write a ``write_memory {namespace}`` span.
    Under a call hang its failed attempts (``attempt N``, with the error and what tether
    decided), the backoff waits and fallbacks in between, a budget refusal and the
    dead-lettering. A span that started and never finished keeps ``status='running'``: that
    is what a crash looks like. Circuit-breaker transitions belong to a route, not a run;
    :func:`~tether.projections.traces.trace` shows those of the run's routes while it ran.

    Span ids are derived from what the events name (the run id, the call id,
    ``{call_id}#a{N}`` for attempt N...), never from the order events arrive in, and every
    column is merged with a rule that makes the fold insensitive to order and to duplicates
    where it can be: a completion read before its request, or an event published twice,
    gives the same rows.

    Tables (``started_at``/``ended_at`` are epoch seconds, UTC):

    * ``runs``: one row per run id seen on any event;
    * ``spans``: one row per span; ``attributes`` holds the GenAI attributes known when the
      span opened and ``end_attributes`` those known when it closed (JSON objects with
      disjoint keys; :func:`~tether.projections.traces.trace` returns them merged as ``attributes``).
    """

    name = "traces"
    version = 1
    weight = 10.0  # measured: some ten times the cost ledger's fold, more than the other three together
    tables = (RUNS, SPANS)
    types = frozenset(c.event_type for c in (
        RunStarted, RunFinished, LlmCallRequested, LlmCallAttemptFailed, LlmCallCompleted, LlmCallFailed,
        ToolCallRequested, ToolCallAttemptFailed, ToolCallCompleted, ToolCallFailed, MemoryWritten, MemoryDeleted,
        MemoryCompacted, CallDeadLettered, CallRedriven, CallReplayed, CircuitOpened, CircuitHalfOpened, CircuitClosed,
        BudgetExceeded, RunNeedsAttention, ToolCallResolved))

    def apply(self, event: Event, seq: int) -> list[Op]:
        fold = _Fold(event, seq)
        ops = fold.spans()  # first: run.started / run.finished say what goes in the run's rows
        if event.runid:
            ops[:0] = fold.run_rows()
        return ops

    def fold(self, events: Sequence[tuple[int, Event]]) -> tuple[list[Op], list[tuple[int, Exception]]]:
        """:meth:`apply` for a batch, with the run rows every event touches folded per run.

        Each event of a run touches its ``runs`` row and its run span with the same few
        columns (agent, trace id, tenant: ``keep``; times and sequences: ``min``/``max``),
        so the batch gathers those per run and writes each run's two rows once. That is
        exact: ``keep`` values keep their order among themselves, ``min``/``max`` commute,
        and ``keep`` commutes with the ``coalesce`` of ``run.started``/``run.finished``
        (``coalesce`` wins when set, else what is there, else the first ``keep``), so the
        lifecycle rows of ``run.started``/``run.finished`` fold into the same upsert (by the
        composition :func:`~tether.projections._ops.combine_upserts` uses). A batch where some
        span id is also a run id is folded event by event instead."""
        ops: list[Op] = []
        refused: list[tuple[int, Exception]] = []
        # run id -> [agent, trace id, tenant, first at, last at, first seq, last seq, span name]
        touched: dict[str, list[Any]] = {}
        lives: dict[str, list[tuple[Upsert, Upsert]]] = {}  # run id -> its lifecycle rows, in log order
        span_ids: set[Any] = set()
        for seq, event in events:
            try:
                fold = _Fold(event, seq)
                own = fold.spans()
                for op in own:
                    if op.table == "spans" and isinstance(op, Upsert):
                        span_ids.add(op.values["span_id"])
                run = event.runid
                life = None
                if run:
                    if fold.run_cols:  # run.started / run.finished: folded into the run's rows below
                        life = (_upsert("runs", {"run_id": run}, fold.run_cols),
                                _upsert("spans", {"span_id": run}, fold.run_span_cols))
                    at = fold.at
                    t = touched.get(run)
                    if t is None:
                        agent = event.agentid
                        touched[run] = [agent, fold.trace_id, event.extensions.get("tenant"), at, at, seq, seq,
                                        f"invoke_agent {agent}" if agent else "invoke_agent"]
                    else:
                        if t[0] is None:
                            t[0] = event.agentid
                        if t[1] is None:
                            t[1] = fold.trace_id
                        if t[2] is None:
                            t[2] = event.extensions.get("tenant")
                        if at < t[3]:
                            t[3] = at
                        elif at > t[4]:
                            t[4] = at
                        if seq < t[5]:
                            t[5] = seq
                        elif seq > t[6]:
                            t[6] = seq
            except Exception as exc:  # refused: none of its ops, nor its touch, are kept
                refused.append((seq, exc))
                continue
            ops.extend(own)
            if life is not None and run:
                lives.setdefault(run, []).append(life)
        if not span_ids.isdisjoint(touched):  # a span named like a run: keep the order of everything
            accepted = {seq for seq, _ in events} - {seq for seq, _ in refused}
            return super().fold([(seq, event) for seq, event in events if seq in accepted])
        head: list[Op] = []
        after: list[Op] = []
        for run, (agent, trace_id, tenant, first_at, last_at, first_seq, last_seq, name) in touched.items():
            common = {"agent": agent, "trace_id": trace_id, "started_at": first_at, "first_seq": first_seq,
                      "last_seq": last_seq}
            rows = ((("run_id",), {"run_id": run, **common, "tenant": tenant, "last_at": last_at}, dict(_RUN_MERGE)),
                    (("span_id",), {"span_id": run, **common, "run_id": run, "kind": "run", "name": name},
                     dict(_RUN_SPAN_MERGE)))
            for i, (key, values, merge) in enumerate(rows):
                # The run's lifecycle rows after its touch, as one upsert where the rules compose
                # (they do for tether's: keep, coalesce, max); else in order after it.
                kept = False
                for life in lives.get(run, ()):
                    if kept or not _merge_into(values, merge, life[i], key):
                        kept = True
                        after.append(life[i])
                head.append(Upsert("spans" if i else "runs", values, merge))
        return head + after + ops, refused

    def notify_key(self, op: Op) -> str | None:
        """Changes are announced per run (``tether.proj.traces.<run_id>``), else per span."""
        values = op.values if isinstance(op, Upsert) else op.key
        key = values.get("run_id") or values.get("span_id")
        return None if key is None else str(key)


class _Fold:
    """The row operations of one event. Pure: reads nothing but the event."""

    def __init__(self, event: Event, seq: int) -> None:
        self.event = event
        self.seq = seq
        self.at = event.time.timestamp()
        self.trace_id = _trace_id(event.traceparent)
        self.run_cols: Cols = {}
        self.run_span_cols: Cols = {}

    # -- the run: its row and its span ------------------------------------------------------------

    def run_rows(self) -> list[Upsert]:
        ev, at, seq = self.event, self.at, self.seq
        agent = ev.agentid
        common: Cols = {"agent": (agent, "keep"), "trace_id": (self.trace_id, "keep"), "started_at": (at, "min"),
                        "first_seq": (seq, "min"), "last_seq": (seq, "max")}
        run = {**common, "tenant": (ev.extensions.get("tenant"), "keep"), "last_at": (at, "max"),
               **self.run_cols}
        span = {**common, "run_id": (ev.runid, "set"), "kind": ("run", "keep"),
                "name": (f"invoke_agent {agent}" if agent else "invoke_agent", "keep"), **self.run_span_cols}
        return [_upsert("runs", {"run_id": ev.runid}, run), _upsert("spans", {"span_id": ev.runid}, span)]

    def _run_started(self, data: RunStarted) -> None:
        agent = self.event.agentid or data.name or self.event.runid
        # a run the gateway resumes (its agent came back after it was closed as idle) runs again
        running: tuple[str, Merge] = ("running", "coalesce" if data.metadata.get("resumed") else "keep")
        self.run_cols = {"name": (data.name, "coalesce"), "parent_run_id": (data.parent_run_id, "coalesce"),
                         "status": running, "trace_id": (self.trace_id, "coalesce")}
        self.run_span_cols = {
            "name": (f"invoke_agent {agent}", "coalesce"), "status": running,
            "parent_id": (data.parent_run_id, "coalesce"), "trace_id": (self.trace_id, "coalesce"),
            "attributes": (_json({
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent,
                "gen_ai.agent.id": self.event.agentid, "tether.run.id": self.event.runid,
                "tether.run.name": data.name, "tether.run.parent_id": data.parent_run_id,
                "tether.run.tags": list(data.tags) or None, "tether.traceparent": self.event.traceparent,
            }), "coalesce")}

    def _run_finished(self, data: RunFinished) -> None:
        error = data.error
        ended: Cols = {"status": (data.status, "coalesce"), "ended_at": (self.at, "max"),
                       "duration_ms": (data.duration_ms, "coalesce"),
                       "error_type": (error.type if error else None, "coalesce"),
                       "error_message": (error.message or None if error else None, "coalesce")}
        self.run_cols = ended
        self.run_span_cols = {**ended, "end_attributes": (_json({
            "tether.run.status": data.status, "tether.run.ended_by": data.ended_by, **_error_attributes(error)}),
            "coalesce")}

    # -- the event's own spans -----------------------------------------------------------------

    def spans(self) -> list[Op]:
        match self.event.data:
            case RunStarted() as d:
                self._run_started(d)
                return []
            case RunFinished() as d:
                self._run_finished(d)
                return []
            case LlmCallRequested() as d:
                op = OPERATIONS.get(d.operation, d.operation)
                params = {f"gen_ai.request.{_PARAMETERS[k]}": v for k, v in d.parameters.items() if k in _PARAMETERS}
                return [self._call(d.call_id, "llm", {
                    "name": (f"{op} {d.model}", "coalesce"), "status": ("running", "keep"),
                    "started_at": (self.at, "min"), "provider": (d.provider, "keep"), "model": (d.model, "keep"),
                    "route": (f"{d.provider}:{d.model}", "coalesce"),
                    "attributes": (_json({
                        "gen_ai.operation.name": op, "gen_ai.provider.name": d.provider,
                        "gen_ai.request.model": d.model, **params, "tether.call.id": d.call_id,
                        "tether.operation": d.operation, "tether.mode": d.mode, "tether.stream": d.stream or None,
                        "tether.route": d.route, "tether.traceparent": self.event.traceparent,
                    }), "coalesce")})]
            case ToolCallRequested() as d:
                return [self._call(d.call_id, "tool", {
                    "name": (f"execute_tool {d.tool}", "coalesce"), "status": ("running", "keep"),
                    "started_at": (self.at, "min"), "tool": (d.tool, "keep"), "route": (f"tool:{d.tool}", "keep"),
                    "attributes": (_json({
                        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": d.tool,
                        "gen_ai.tool.call.id": d.tool_call_id or d.call_id, "gen_ai.tool.type": "function",
                        "tether.call.id": d.call_id, "tether.mode": d.mode, "tether.idempotent": d.idempotent,
                        "tether.traceparent": self.event.traceparent, "tether.inferred": d.inferred or None,
                    }), "coalesce")})]
            case LlmCallAttemptFailed() as d:
                return self._attempt_failed(d.call_id, "llm", d.attempt, d.error, d.latency_ms, d.decision,
                                            d.retry_in_s, provider=d.provider, model=d.model,
                                            next_route=f"{d.next_provider}:{d.next_model}" if d.next_model else None)
            case ToolCallAttemptFailed() as d:
                return self._attempt_failed(d.call_id, "tool", d.attempt, d.error, d.duration_ms, d.decision,
                                            d.retry_in_s, tool=d.tool)
            case LlmCallCompleted() as d:
                return self._llm_completed(d)
            case ToolCallCompleted() as d:
                started = self.at - (d.duration_ms or 0.0) / 1000
                ops: list[Op] = [self._call(d.call_id, "tool", {
                    "name": (f"execute_tool {d.tool}", "keep"), "status": ("ok", "coalesce"),
                    "started_at": (started, "min"), "ended_at": (self.at, "max"), "tool": (d.tool, "keep"),
                    "route": (f"tool:{d.tool}", "keep"), "attempt": (d.attempt, "max"),
                    "end_attributes": (_json({"tether.attempts": d.attempt, "tether.duration_ms": d.duration_ms}),
                                       "coalesce")})]
                if d.attempt > 1:
                    ops.append(self._attempt_ok(d.call_id, d.attempt, started, d.duration_ms, tool=d.tool))
                return ops
            case LlmCallFailed() as d:
                return [self._call_failed(d.call_id, "llm", d.attempts, d.error, provider=d.provider,
                                          model=d.model)]
            case ToolCallFailed() as d:
                return [self._call_failed(d.call_id, "tool", d.attempts, d.error, tool=d.tool,
                                          duration_ms=d.duration_ms)]
            case RunNeedsAttention() as d:  # one row per call: open until a resolution row names the call
                return [self._mark(f"{d.call_id}#attention", "attention", f"needs_attention {d.tool}", "error",
                                   parent=d.call_id, call_id=d.call_id, route=f"tool:{d.tool}", attributes={
                                       "tether.attention.reason": d.reason, "tether.tool.position": d.position,
                                       "tether.idempotency_key": d.idempotency_key})]
            case ToolCallResolved() as d:
                return [self._mark(f"{d.call_id}#resolved", "resolution", f"resolved {d.tool}", "ok",
                                   parent=d.call_id, call_id=d.call_id, route=f"tool:{d.tool}", attributes={
                                       "tether.resolved.happened": d.happened, "tether.resolved.note": d.note})]
            case CallDeadLettered() as d:
                return [self._mark(f"{d.call_id}#dead_letter", "dead_letter", f"dead_letter {d.reason}", "error",
                                   parent=d.call_id, call_id=d.call_id, error=d.error, attributes={
                                       "tether.dead_letter.reason": d.reason, "tether.attempts": d.attempts,
                                       "tether.dlq_seq": d.dlq_seq, "tether.call.kind": d.call_kind})]
            case CallReplayed() as d:
                return self._replayed(d)
            case CallRedriven() as d:
                return [self._mark(f"{d.call_id}#redriven/{d.new_call_id}", "redrive", "redrive", "ok",
                                   parent=d.call_id, call_id=d.call_id, attributes={
                                       "tether.call.new_id": d.new_call_id, "tether.dlq_seq": d.dlq_seq})]
            case BudgetExceeded() as d:
                message = (f"{d.scope} {d.scope_id} would exceed its {d.unit} budget: spent {d.spent:g} of "
                           f"{d.limit:g}" + (f", needs {d.requested:g}" if d.requested is not None else ""))
                return [self._mark(f"{d.call_id}#budget" if d.call_id else f"budget:{self.event.id}", "budget",
                                   f"budget_exceeded {d.scope}", "error", parent=d.call_id or self.event.runid,
                                   call_id=d.call_id, error=ErrorInfo(type="BudgetExceeded", message=message),
                                   attributes={"tether.budget.scope": d.scope, "tether.budget.scope_id": d.scope_id,
                                               "tether.budget.unit": d.unit, "tether.budget.limit": d.limit,
                                               "tether.budget.spent": d.spent,
                                               "tether.budget.requested": d.requested})]
            case MemoryWritten() | MemoryDeleted() | MemoryCompacted() as d:
                verb = {"written": "write", "deleted": "delete", "compacted": "compact"}[d.action]
                version = d.version if d.version is not None else self.event.id
                suffix = "" if verb == "write" else f"#{d.action}"
                extra: dict[str, Any] = {}
                if isinstance(d, MemoryWritten):
                    extra = {"tether.memory.text_length": len(d.text), "tether.memory.encrypted": bool(d.key_id)
                             or None, "tether.memory.source_call_id": d.source_call_id}
                elif isinstance(d, MemoryDeleted):
                    extra = {"tether.memory.reason": d.reason}
                else:
                    extra = {"tether.memory.replaced": list(d.replaced), "tether.memory.summarizer": d.summarizer,
                             "tether.memory.source_call_id": d.source_call_id}
                return [self._mark(f"mem:{d.namespace}/{d.key}@{version}{suffix}", "memory",
                                   f"{verb}_memory {d.namespace}", "ok", parent=self.event.runid, attributes={
                                       "tether.memory.namespace": d.namespace, "tether.memory.key": d.key,
                                       "tether.memory.version": d.version, **extra})]
            case CircuitOpened() | CircuitHalfOpened() | CircuitClosed() as d:
                attrs: dict[str, Any] = {"tether.circuit.route": d.route, "tether.circuit.state": d.action}
                if isinstance(d, CircuitOpened):
                    attrs |= {"tether.circuit.reason": d.reason, "tether.circuit.failures": d.failures,
                              "tether.circuit.failure_rate": d.failure_rate, "tether.circuit.cooldown_s": d.cooldown_s}
                elif isinstance(d, CircuitHalfOpened):
                    attrs["tether.circuit.probe_call_id"] = d.probe_call_id
                else:
                    attrs["tether.circuit.open_for_s"] = d.open_for_s
                return [self._mark(f"circuit:{self.event.id}", "circuit", f"circuit {d.action} {d.route}",
                                   "error" if isinstance(d, CircuitOpened) else "ok", route=d.route,
                                   parent=d.probe_call_id if isinstance(d, CircuitHalfOpened) else None,
                                   attributes=attrs)]
        return []

    # -- span builders -------------------------------------------------------------------------

    def _span(self, span_id: str, cols: Cols) -> Upsert:
        """A span's upsert: what every span of this event carries, then ``cols`` over it.

        Built straight into values and rules: what ``_upsert`` would make of the two merged."""
        seq = self.seq
        values: dict[str, Any] = {"span_id": span_id, "run_id": self.event.runid, "trace_id": self.trace_id,
                                  "agent": self.event.agentid, "first_seq": seq, "last_seq": seq}
        merge = dict(_SPAN_MERGE)
        for column, (value, rule) in cols.items():
            values[column] = value
            if rule == "set":
                merge.pop(column, None)
            else:
                merge[column] = rule
        return Upsert("spans", values, merge)

    def _call(self, call_id: str, kind: str, cols: Cols) -> Upsert:
        return self._span(call_id, {"parent_id": (self.event.runid, "keep"), "kind": (kind, "keep"),
                                    "call_id": (call_id, "keep"), **cols})

    def _llm_completed(self, d: LlmCallCompleted) -> list[Op]:
        u = d.usage
        cost = call_price(d.provider, d.model, u, self.event.time)
        started = self.at - (d.latency_ms or 0.0) / 1000
        ops: list[Op] = [self._call(d.call_id, "llm", {
            "name": (f"chat {d.model}", "keep"), "status": ("ok", "coalesce"), "started_at": (started, "min"),
            "ended_at": (self.at, "max"), "provider": (d.provider, "coalesce"), "model": (d.model, "coalesce"),
            "route": (f"{d.provider}:{d.model}", "keep"), "attempt": (d.attempt, "max"),
            "input_tokens": (u.input_tokens, "coalesce"), "output_tokens": (u.output_tokens, "coalesce"),
            "cached_tokens": (u.cached_input_tokens, "coalesce"),
            "reasoning_tokens": (u.reasoning_tokens, "coalesce"), "cost_usd": (cost.usd, "coalesce"),
            "priced": (int(cost.priced), "coalesce"),
            "end_attributes": (_json({
                "gen_ai.response.model": d.model, "gen_ai.provider.name": d.provider,
                "gen_ai.usage.input_tokens": u.input_tokens, "gen_ai.usage.output_tokens": u.output_tokens,
                "gen_ai.usage.cache_read.input_tokens": u.cached_input_tokens or None,
                "gen_ai.usage.cache_creation.input_tokens": u.cache_write_tokens or None,
                "gen_ai.usage.reasoning.output_tokens": u.reasoning_tokens or None,
                "gen_ai.response.finish_reasons": [d.finish_reason] if d.finish_reason else None,
                "tether.attempts": d.attempt, "tether.latency_ms": d.latency_ms, "tether.ttft_ms": d.ttft_ms,
                "tether.cost.usd": cost.usd, "tether.cost.source": cost.source, "tether.cost.version": cost.version,
                "tether.cost.unpriced_reason": cost.unpriced_reason,
            }), "coalesce")})]
        if d.attempt > 1:
            ops.append(self._attempt_ok(d.call_id, d.attempt, started, d.latency_ms, provider=d.provider,
                                        model=d.model))
        return ops

    def _replayed(self, d: CallReplayed) -> list[Op]:
        """A call answered from the record: ok at once, no tokens, no cost; what it saved."""
        saved = call_price(d.provider or "?", d.model or "?", d.usage, self.event.time).usd \
            if d.call_kind == "llm" else None
        attributes = {"tether.replayed.via": d.via, "tether.replayed.from": d.original_call_id,
                      "tether.replayed.event": d.original_event_id, "tether.replayed.run": d.original_run_id,
                      "tether.journal.position": d.position, "tether.cost.saved_usd": saved}
        cols: Cols = {"status": ("ok", "coalesce"), "started_at": (self.at, "min"), "ended_at": (self.at, "max"),
                      "end_attributes": (_json({**attributes, "tether.cost.usd": 0.0}), "coalesce")}
        if d.call_kind == "llm":
            cols |= {"cost_usd": (0.0, "coalesce"), "priced": (1, "coalesce"), "input_tokens": (0, "coalesce"),
                     "output_tokens": (0, "coalesce"), "provider": (d.provider, "keep"), "model": (d.model, "keep")}
        else:
            cols |= {"tool": (d.tool, "keep")}
        what = "cache hit" if d.via == "cache" else "replayed"
        return [self._call(d.call_id, d.call_kind, cols),
                self._mark(f"{d.call_id}#replayed", "replay", f"{what} from call {d.original_call_id}", "ok",
                           parent=d.call_id, call_id=d.call_id, attributes=attributes)]

    def _attempt_ok(self, call_id: str, attempt: int, started: float, took_ms: float | None, *,
                    provider: str | None = None, model: str | None = None, tool: str | None = None) -> Upsert:
        """The attempt that succeeded, shown beside the failed ones when there were any."""
        return self._span(f"{call_id}#a{attempt}", {
            **self._attempt_cols(call_id, attempt, provider, model, tool), "status": ("ok", "coalesce"),
            "started_at": (started, "min"), "ended_at": (self.at, "max"), "duration_ms": (took_ms, "coalesce")})

    def _attempt_cols(self, call_id: str, attempt: int, provider: str | None, model: str | None,
                      tool: str | None) -> Cols:
        return {"parent_id": (call_id, "keep"), "kind": ("attempt", "keep"), "call_id": (call_id, "keep"),
                "name": (f"attempt {attempt}" + (f" {model}" if model else ""), "keep"),
                "attempt": (attempt, "keep"), "provider": (provider, "keep"), "model": (model, "keep"),
                "tool": (tool, "keep"), "route": (f"{provider}:{model}" if model else f"tool:{tool}", "keep")}

    def _attempt_failed(self, call_id: str, kind: str, attempt: int, error: ErrorInfo, took_ms: float | None,
                        decision: str, retry_in_s: float | None, *, provider: str | None = None,
                        model: str | None = None, tool: str | None = None, next_route: str | None = None) -> list[Op]:
        at = self.at
        started = at - (took_ms or 0.0) / 1000
        call_cols: Cols = {"kind": (kind, "keep"), "status": ("running", "keep"), "started_at": (started, "min"),
                           "attempt": (attempt, "max")}
        if kind == "tool":  # an LLM attempt's model may be a fallback's: the call's comes from its request
            call_cols |= {"name": (f"execute_tool {tool}", "keep"), "tool": (tool, "keep"),
                          "route": (f"tool:{tool}", "keep")}
        ops: list[Op] = [self._call(call_id, kind, call_cols), self._span(f"{call_id}#a{attempt}", {
            **self._attempt_cols(call_id, attempt, provider, model, tool), "status": ("error", "keep"),
            "started_at": (started, "min"), "ended_at": (at, "max"), "duration_ms": (took_ms, "keep"),
            "error_type": (error.type, "keep"), "error_message": (error.message or None, "keep"),
            "decision": (decision, "keep"),
            "attributes": (_json({**_error_attributes(error), "tether.attempt": attempt,
                                  "tether.decision": decision, "tether.retry_in_s": retry_in_s,
                                  "tether.next_route": next_route}), "keep")})]
        if decision == "retry":
            ops.append(self._mark(f"{call_id}#a{attempt}/backoff", "backoff", "backoff", "ok", parent=call_id,
                                  call_id=call_id, until=at + (retry_in_s or 0.0),
                                  attributes={"tether.decision": "retry", "tether.retry_in_s": retry_in_s}))
        elif decision == "fallback":
            ops.append(self._mark(f"{call_id}#a{attempt}/fallback", "fallback", f"fallback {next_route}", "ok",
                                  parent=call_id, call_id=call_id, until=at + (retry_in_s or 0.0),
                                  attributes={"tether.decision": "fallback", "tether.next_route": next_route,
                                              "tether.retry_in_s": retry_in_s}))
        return ops

    def _call_failed(self, call_id: str, kind: str, attempts: int, error: ErrorInfo, *,
                     provider: str | None = None, model: str | None = None, tool: str | None = None,
                     duration_ms: float | None = None) -> Upsert:
        started = self.at - (duration_ms or 0.0) / 1000
        cols: Cols = {"kind": (kind, "keep"), "status": ("error", "coalesce"), "started_at": (started, "min"),
                      "ended_at": (self.at, "max"), "attempt": (attempts or None, "max"),
                      "error_type": (error.type, "coalesce"), "error_message": (error.message or None, "coalesce"),
                      "end_attributes": (_json({**_error_attributes(error), "tether.attempts": attempts}),
                                         "coalesce")}
        if kind == "llm":
            cols |= {"name": (f"chat {model}", "keep"), "provider": (provider, "coalesce"),
                     "model": (model, "coalesce"), "route": (f"{provider}:{model}", "keep")}
        else:
            cols |= {"name": (f"execute_tool {tool}", "keep"), "tool": (tool, "keep"),
                     "route": (f"tool:{tool}", "keep")}
        return self._call(call_id, kind, cols)

    def _mark(self, span_id: str, kind: str, name: str, status: str, *, parent: str | None,
              attributes: Mapping[str, Any], call_id: str | None = None, route: str | None = None,
              error: ErrorInfo | None = None, until: float | None = None) -> Upsert:
        """A span of one event: zero-length, or lasting ``until`` (a backoff's wait)."""
        end = self.at if until is None else until
        return self._span(span_id, {
            "parent_id": (parent, "set"), "kind": (kind, "set"), "name": (name, "set"), "status": (status, "set"),
            "started_at": (self.at, "min"), "ended_at": (end, "max"), "duration_ms": ((end - self.at) * 1000, "set"),
            "call_id": (call_id, "set"), "route": (route, "set"),
            "error_type": (error.type if error else None, "set"),
            "error_message": (error.message or None if error else None, "set"),
            "attributes": (_json({**_error_attributes(error), **attributes}), "set")})


def _upsert(table: str, key: Mapping[str, Any], cols: Cols) -> Upsert:
    values = dict(key)
    merge: dict[str, Merge] = {}
    for column, (value, rule) in cols.items():
        values[column] = value
        if rule != "set":
            merge[column] = rule
    return Upsert(table, values, merge)


# What json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode writes, without
# building the C encoder again on every call (a quarter of the cost) nor checking for cycles
# (attributes come from parsed JSON, which has none).
_C_ENCODE = c_make_encoder(None, json.JSONEncoder().default, encode_basestring, None, ":", ",", False, False, True) \
    if c_make_encoder is not None else None
_PY_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _encode(value: Mapping[str, Any]) -> str:
    return "".join(_C_ENCODE(value, 0)) if _C_ENCODE is not None else _PY_ENCODE(value)


def _json(attributes: Mapping[str, Any]) -> str | None:
    """Attributes that are set, as compact JSON (in the fold's own, fixed key order)."""
    kept = {k: v for k, v in attributes.items() if v is not None}
    return _encode(kept) if kept else None


def _error_attributes(error: ErrorInfo | None) -> dict[str, Any]:
    if error is None:
        return {}
    return {"error.type": error.type, "http.response.status_code": error.status_code,
            "tether.error.message": error.message or None, "tether.error.code": error.code,
            "tether.error.retryable": error.retryable}


def _trace_id(traceparent: str | None) -> str | None:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None
