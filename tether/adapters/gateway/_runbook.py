"""The runs the gateways follow: when each starts, ends, resumes, and the tool calls it infers.

A run starts at its first call (named by ``x-tether-run-id`` or derived from a trace) and
ends when the agent says so (its own ``run.finished``, or ``x-tether-run-end`` on a call) or
when no call came for ``idle_s``; a run that ended comes back as the same run (``run.started``
with ``metadata.resumed``) when its agent calls again. Between an answer that asks for tool
calls and the request that carries their results, the run keeps each call pending; the
result makes it a tool span (``tool.call.requested`` then ``completed``, or ``failed`` when
the result reads as an error), all marked ``inferred``. A result that arrives before its
call was seen (another gateway served the answer and has not written it yet) waits in
``early`` for it. A call still pending when its run ends is closed as ``ToolResultMissing``.
A tool call the agent reports itself (a plugin's ``tool.call.requested`` naming the same
``tool_call_id``) is never inferred as well.

Pure: a :class:`Followed` (JSON in KV, shared by every gateway) and events in, payloads out
(:class:`Out`), with ids derived from the run so that two gateways deciding the same thing send
one event. :class:`RunBook` keeps runs in memory (tests, benchmarks); the gateway keeps them
in KV (``_runstore``).
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from tether.schemas import (
    ErrorInfo,
    Event,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    Payload,
    RunFinished,
    RunStarted,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
)

from .._wire import Kind
from ._identity import started_id
from ._toolcalls import ToolUse, calls_before, positional, tool_results, tool_uses

__all__ = ["EARLY_S", "MISSING", "Followed", "Out", "RunBook", "answered", "asked", "begin", "call_ended", "failed",
           "forget_early", "idle", "operation_kind", "reported", "run_summary", "touch"]

MISSING = "ToolResultMissing"
"""The error type of an inferred tool call whose result never came before its run ended."""
EARLY_S = 60.0
"""How long a result waits for the answer that asked for it (then its id is only remembered)."""
_EARLY_BYTES = 32_768
_EARLY_TOTAL = 262_144
_NAMESPACE = uuid.UUID("0f6d1c9e-3b7a-4e21-9a55-2c8f4d7e6b13")
EndedBy = Literal["agent", "header", "idle"]
Status = Literal["ok", "error", "cancelled"]


@dataclass(frozen=True, slots=True)
class Out:
    """One event to publish: its payload, the run's ids, and when it happened."""

    payload: Payload
    run_id: str
    agent: str | None
    traceparent: str | None
    at: datetime
    id: str | None = None

    def event(self, source: str) -> Event:
        return Event.of(self.payload, id=self.id, runid=self.run_id, agentid=self.agent,
                        traceparent=self.traceparent, time=self.at, source=source)


@dataclass(slots=True)
class _Pending:
    span_id: str
    use: ToolUse
    at: datetime
    traceparent: str | None


@dataclass(slots=True)
class _Early:
    """A tool result that came before the answer asking for it was seen."""

    result: Any
    error: bool
    at: datetime


@dataclass(slots=True)
class Followed:
    """One run as the gateways see it. Tool call ids are kept with only their letters and
    digits (OpenClaw resends ``call_abc`` as ``callabc``), but for the ones the gateway made
    for Gemini's calls without an id (``#2:get_weather``), kept whole."""

    run_id: str
    agent: str | None
    trace_id: str
    traceparent: str | None
    first_at: float
    last_at: float
    running: bool = True
    ended_by: EndedBy | None = None
    ended_at: float | None = None
    ends: int = 0
    """How many times the run ended: names the ids of its next ``run.finished`` and ``run.started``."""
    in_flight: int = 0
    """Calls in flight (the in-memory book; gateways count their own and keep ``last_at`` fresh)."""
    last_failed: bool = False
    pending: dict[str, _Pending] = field(default_factory=dict)
    early: dict[str, _Early] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    """Tool calls made spans, given up, or reported by the agent itself: never inferred (again)."""

    def to_json(self) -> bytes:
        doc = {"run": self.run_id, "agent": self.agent, "trace": self.trace_id, "tp": self.traceparent,
               "first": self.first_at, "last": self.last_at, "running": self.running, "by": self.ended_by,
               "ended": self.ended_at, "ends": self.ends, "failed": self.last_failed,
               "pending": {k: [p.span_id, p.use.id, p.use.name, p.use.arguments, p.at.isoformat(), p.traceparent]
                           for k, p in self.pending.items()},
               "early": {k: [e.result, e.error, e.at.isoformat()] for k, e in self.early.items()},
               "done": sorted(self.done)}
        return json.dumps(doc, separators=(",", ":"), default=str).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Followed:
        doc = json.loads(raw)
        return cls(doc["run"], doc["agent"], doc["trace"], doc["tp"], doc["first"], doc["last"], doc["running"],
                   doc["by"], doc["ended"], doc["ends"], 0, doc["failed"],
                   {k: _Pending(s, ToolUse(i, n, a), datetime.fromisoformat(t), tp)
                    for k, (s, i, n, a, t, tp) in doc["pending"].items()},
                   {k: _Early(r, e, datetime.fromisoformat(t)) for k, (r, e, t) in doc["early"].items()},
                   set(doc["done"]))


# -- the decisions: each changes one run and says what to publish ------------------------------


def begin(run: Followed | None, run_id: str, agent: str | None, trace_id: str, traceparent: str | None, now: float,
          *, derived: bool = True, touch_s: float = 0.0) -> tuple[Followed, list[Out]]:
    """A call of ``run_id`` arrived at ``now``: the run starts, or resumes if it had ended."""
    at = _at(now)
    if run is None:
        run = Followed(run_id, agent, trace_id, traceparent, now, now)
        started = RunStarted(name=f"trace {trace_id}" if derived else None, tags=("gateway",),
                             metadata={"trace_id": trace_id, "via": "tether gateway"})
        return run, [Out(started, run_id, agent, traceparent, at, id=started_id(run_id))]
    touch(run, now, touch_s)
    if run.running:
        return run, []
    resumed_after = run.ended_by
    run.running, run.ended_by, run.ended_at = True, None, None
    resumed = RunStarted(name=f"trace {trace_id}" if derived else None, tags=("gateway",),
                         metadata={"trace_id": trace_id, "via": "tether gateway", "resumed": True,
                                   "resumed_after": resumed_after})
    return run, [Out(resumed, run_id, agent, traceparent, at, id=_id(run_id, f"resumed:{run.ends}"))]


def touch(run: Followed, now: float, touch_s: float = 0.0) -> None:
    """A call of the run was seen at ``now`` (written only when it moves ``last_at`` by over ``touch_s``)."""
    if now - run.last_at > touch_s:
        run.last_at = now


def call_ended(run: Followed, now: float, *, end: Status | None = None, touch_s: float = 0.0) -> list[Out]:
    """A call of the run was answered (its events are in); ``end``: it asked to end the run."""
    touch(run, now, touch_s)
    if end is not None and run.running:
        return _finish(run, now, end, "header")
    return []


def failed(run: Followed) -> None:
    run.last_failed = True


def asked(run: Followed, event: Event, kind: Kind) -> list[Out]:
    """A request of the run (its ``llm.call.requested``): the tool results it carries."""
    data = event.data
    assert isinstance(data, LlmCallRequested)
    if not run.pending and not run.running:
        return []
    out: list[Out] = []
    for result in tool_results(kind, data.operation, data.request):
        key = _key(result.id)
        if key in run.done or key in run.early:
            continue
        pending = run.pending.pop(key, None)
        if pending is not None:
            run.done.add(key)
            out.extend(_span(run, pending, event.time, result.result, error=result.error))
        elif run.running:
            run.early[key] = _Early(_kept(result.result, run), result.error, event.time)
    return out


def answered(run: Followed, event: Event, kind: Kind, operation: str,
             before: dict[str, int] | None = None) -> list[Out]:
    """An answer of the run (its ``llm.call.completed``): the tool calls it asks for (``before``:
    the :func:`~._toolcalls.calls_before` of its request)."""
    data = event.data
    assert isinstance(data, LlmCallCompleted)
    run.last_failed = False
    out: list[Out] = []
    for use in tool_uses(kind, operation, data.response, before):
        key = _key(use.id)
        if key in run.done or key in run.pending:
            continue
        span = _Pending(str(uuid.uuid5(_NAMESPACE, f"{run.run_id}:{use.id}")), use, event.time, event.traceparent)
        early = run.early.pop(key, None)
        if early is not None:  # its result came first (through another gateway)
            run.done.add(key)
            out.extend(_span(run, span, early.at, early.result, error=early.error))
        else:
            run.pending[key] = span
    return out


def reported(run: Followed, event: Event) -> list[Out]:
    """An event the agent posted itself (``/v1/events``): its own tool calls, its end."""
    data = event.data
    if isinstance(data, ToolCallRequested) and not data.inferred and data.tool_call_id:
        # OpenClaw names a Responses API call `<call_id>|<item id>`: the call_id is the conversation's
        for key in {_key(data.tool_call_id), _key(data.tool_call_id.split("|", 1)[0])}:
            run.done.add(key)
            run.pending.pop(key, None)
            run.early.pop(key, None)
        return []
    if isinstance(data, RunFinished) and run.running:
        return _finish(run, event.time.timestamp(), data.status, "agent", announce=False)
    return []


def idle(run: Followed, now: float, idle_s: float) -> list[Out]:
    """End the run if no call came for ``idle_s`` (the caller knows none is in flight)."""
    forget_early(run, now)
    if run.running and now - run.last_at >= idle_s:
        return _finish(run, now, "error" if run.last_failed else "ok", "idle")
    return []


def forget_early(run: Followed, now: float) -> None:
    """Results that waited :data:`EARLY_S` for their call: only their ids are kept."""
    for key in [k for k, e in run.early.items() if now - e.at.timestamp() > EARLY_S]:
        del run.early[key]
        run.done.add(key)


def _finish(run: Followed, now: float, status: Status, ended_by: EndedBy, *, announce: bool = True) -> list[Out]:
    run.running, run.ended_by, run.ended_at = False, ended_by, now
    run.ends += 1
    at = _at(now)
    out: list[Out] = []
    for key, pending in run.pending.items():
        run.done.add(key)
        out.extend(_span(run, pending, at, None, missing=ended_by))
    run.pending.clear()
    for key in run.early:
        run.done.add(key)
    run.early.clear()
    if announce:
        finished = RunFinished(status=status, duration_ms=max(0.0, (now - run.first_at) * 1000),
                               ended_by=ended_by)
        out.append(Out(finished, run.run_id, run.agent, run.traceparent, at,
                       id=_id(run.run_id, f"finished:{run.ends}")))
    return out


def _span(run: Followed, pending: _Pending, end: datetime, result: Any, *, error: bool = False,
          missing: EndedBy | None = None) -> list[Out]:
    use = pending.use
    duration = max(0.0, (end - pending.at).total_seconds() * 1000)
    requested = ToolCallRequested(call_id=pending.span_id, tool=use.name, arguments=use.arguments,
                                  tool_call_id=None if positional(use.id) else use.id, inferred=True)
    first = Out(requested, run.run_id, run.agent, pending.traceparent, pending.at, id=_child(pending, "r"))
    if missing is not None:
        how = "was closed as idle" if missing == "idle" else "ended"
        info = ErrorInfo(type=MISSING, message=f"the run {how} before the agent sent this tool call's result")
        last: Payload = ToolCallFailed(call_id=pending.span_id, tool=use.name, attempts=1, error=info,
                                       duration_ms=duration, inferred=True)
    elif error:
        info = ErrorInfo(type="ToolError", message=_text(result)[:500])
        last = ToolCallFailed(call_id=pending.span_id, tool=use.name, attempts=1, error=info,
                              duration_ms=duration, result=result, inferred=True)
    else:
        last = ToolCallCompleted(call_id=pending.span_id, tool=use.name, result=result, duration_ms=duration,
                                 inferred=True)
    return [first, Out(last, run.run_id, run.agent, pending.traceparent, end, id=_child(pending, "e"))]


def _kept(result: Any, run: Followed) -> Any:
    """What an early result keeps: itself, or its text's start when large (KV values are bounded)."""
    size = len(json.dumps(result, default=str))
    held = sum(len(json.dumps(e.result, default=str)) for e in run.early.values())
    if size <= _EARLY_BYTES and held + size <= _EARLY_TOTAL:
        return result
    return _text(result)[:1024] + f"... ({size} bytes; the whole result is in the request that carried it)"


def _key(call_id: str) -> str:
    """The key a tool call is kept by (see :class:`Followed`)."""
    if positional(call_id):
        return call_id
    return "".join(c for c in call_id if c.isascii() and c.isalnum())


def _id(run_id: str, what: str) -> str:
    """The id of one of the run's own events: every gateway that decides it derives the same."""
    return str(uuid.uuid5(_NAMESPACE, f"{run_id}:{what}"))


def _child(pending: _Pending, suffix: str) -> str:
    """The id of one of an inferred span's events: the same on a replay of the same conversation."""
    return str(uuid.uuid5(_NAMESPACE, f"{pending.span_id}:{suffix}"))


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def _text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, list):
        return "".join(p.get("text", "") for p in result if isinstance(p, dict) and isinstance(p.get("text"), str))
    return str(result)


def operation_kind(operation: str) -> Kind:
    return "anthropic" if operation == "messages" else "gemini" if operation == "generate_content" else "openai"


# -- in memory ------------------------------------------------------------------------------------


class RunBook:
    """Runs followed in one process's memory (the newest ``limit``): the decisions above over a dict."""

    def __init__(self, *, idle_s: float, infer_tools: bool = True, limit: int = 50_000) -> None:
        self.idle_s = idle_s
        self.infer_tools = infer_tools
        self.limit = limit
        self.runs: OrderedDict[str, Followed] = OrderedDict()
        self.calls: dict[str, tuple[str, dict[str, int]]] = {}
        """LLM calls in flight: call id -> operation, and the calls of each function their conversation held."""

    def call_started(self, run_id: str, agent: str | None, trace_id: str, traceparent: str | None,
                     now: float, *, derived: bool = True) -> list[Out]:
        run, out = begin(self.runs.get(run_id), run_id, agent, trace_id, traceparent, now, derived=derived)
        self.runs[run_id] = run
        self.runs.move_to_end(run_id)
        if len(self.runs) > self.limit:
            self.runs.popitem(last=False)
        run.in_flight += 1
        return out

    def call_ended(self, run_id: str, now: float, *, end: Status | None = None) -> list[Out]:
        run = self.runs.get(run_id)
        if run is None:
            return []
        run.in_flight = max(0, run.in_flight - 1)
        return call_ended(run, now, end=end)

    def observed(self, event: Event) -> list[Out]:
        """An event of a call the gateway made (requested / completed / failed)."""
        run = self.runs.get(event.runid or "")
        if run is None:
            return []
        data = event.data
        if isinstance(data, LlmCallRequested):
            kind = operation_kind(data.operation)
            self.calls[data.call_id] = (data.operation, calls_before(kind, data.request))
            return asked(run, event, kind) if self.infer_tools else []
        if isinstance(data, LlmCallFailed):
            self.calls.pop(data.call_id, None)
            failed(run)
        elif isinstance(data, LlmCallCompleted):
            found = self.calls.pop(data.call_id, None)
            if found is None:
                return []
            if not self.infer_tools:
                run.last_failed = False
                return []
            operation, before = found
            return answered(run, event, operation_kind(operation), operation, before)
        return []

    def reported(self, event: Event) -> list[Out]:
        run = self.runs.get(event.runid or "")
        return reported(run, event) if run is not None else []

    def sweep(self, now: float) -> list[Out]:
        """End the runs no call came for in ``idle_s`` (none in flight)."""
        out: list[Out] = []
        for run in list(self.runs.values()):
            if run.in_flight == 0:
                out.extend(idle(run, now, self.idle_s))
        return out


def run_summary(run: Followed) -> dict[str, Any]:
    """A followed run as ``GET /v1/runs`` shows it."""
    return {"run_id": run.run_id, "agent": run.agent, "trace_id": run.trace_id,
            "status": "running" if run.running else "finished", "ended_by": run.ended_by,
            "started_at": _at(run.first_at).isoformat(), "last_call_at": _at(run.last_at).isoformat(),
            "calls_in_flight": run.in_flight, "tool_calls_pending": len(run.pending)}
