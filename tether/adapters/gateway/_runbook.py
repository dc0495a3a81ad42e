"""The runs a gateway follows: when each starts, ends, resumes, and the tool calls it infers.

A run starts at its first call (named by ``x-tether-run-id`` or derived from a trace) and
ends when the agent says so (its own ``run.finished``, or ``x-tether-run-end`` on a call) or
when no call came for ``idle_s``; a run that ended comes back as the same run (``run.started``
with ``metadata.resumed``) when its agent calls again. Between an answer that asks for tool
calls and the request that carries their results, the book keeps each call pending; the
result makes it a tool span (``tool.call.requested`` then ``completed``, or ``failed`` when
the result reads as an error), all marked ``inferred``. A call still pending when its run
ends is closed as ``ToolResultMissing``. A tool call the agent reports itself (a plugin's
``tool.call.requested`` naming the same ``tool_call_id``) is never inferred as well.

Pure: events in, payloads out (:class:`Out`); the gateway does the I/O.
"""

from __future__ import annotations

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
    uuid7,
)

from .._wire import Kind
from ._identity import started_id
from ._toolcalls import ToolUse, tool_results, tool_uses

__all__ = ["MISSING", "Followed", "Out", "RunBook", "run_summary"]

MISSING = "ToolResultMissing"
"""The error type of an inferred tool call whose result never came before its run ended."""
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
class Followed:
    """One run as the gateway sees it."""

    run_id: str
    agent: str | None
    trace_id: str
    traceparent: str | None
    first_at: float
    last_at: float
    running: bool = True
    ended_by: EndedBy | None = None
    in_flight: int = 0
    last_failed: bool = False
    pending: dict[str, _Pending] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    """Tool call ids the agent reported itself: never inferred."""
    aliases: dict[str, str] = field(default_factory=dict)
    """A pending call's id with only its letters and digits -> its id, as some agents resend it."""
    calls: dict[str, str] = field(default_factory=dict)
    """LLM calls in flight: call id -> operation."""


class RunBook:
    """Every run one gateway follows (the newest ``limit``; older ones are forgotten)."""

    def __init__(self, *, idle_s: float, infer_tools: bool = True, limit: int = 50_000) -> None:
        self.idle_s = idle_s
        self.infer_tools = infer_tools
        self.limit = limit
        self.runs: OrderedDict[str, Followed] = OrderedDict()

    # -- calls ---------------------------------------------------------------------------------

    def call_started(self, run_id: str, agent: str | None, trace_id: str, traceparent: str | None,
                     now: float, *, derived: bool = True) -> list[Out]:
        """A call of ``run_id`` arrived: the run starts, or resumes if it had ended."""
        run = self.runs.get(run_id)
        at = _at(now)
        if run is None:
            run = self.runs[run_id] = Followed(run_id, agent, trace_id, traceparent, now, now, in_flight=1)
            if len(self.runs) > self.limit:
                self.runs.popitem(last=False)
            started = RunStarted(name=f"trace {trace_id}" if derived else None, tags=("gateway",),
                                 metadata={"trace_id": trace_id, "via": "tether gateway"})
            return [Out(started, run_id, agent, traceparent, at, id=started_id(run_id))]
        self.runs.move_to_end(run_id)
        run.last_at = now
        run.in_flight += 1
        if run.running:
            return []
        resumed_after = run.ended_by
        run.running, run.ended_by = True, None
        resumed = RunStarted(name=f"trace {trace_id}" if derived else None, tags=("gateway",),
                             metadata={"trace_id": trace_id, "via": "tether gateway", "resumed": True,
                                       "resumed_after": resumed_after})
        return [Out(resumed, run_id, agent, traceparent, at, id=uuid7())]

    def call_ended(self, run_id: str, now: float, *, end: Status | None = None) -> list[Out]:
        """A call of the run was answered (its events are in); ``end``: it asked to end the run."""
        run = self.runs.get(run_id)
        if run is None:
            return []
        run.in_flight = max(0, run.in_flight - 1)
        run.last_at = now
        if end is not None and run.running:
            return self._finish(run, now, end, "header")
        return []

    def observed(self, event: Event) -> list[Out]:
        """An event of a call the gateway made (requested / completed / failed)."""
        run = self.runs.get(event.runid or "")
        if run is None:
            return []
        data = event.data
        if isinstance(data, LlmCallRequested):
            run.calls[data.call_id] = data.operation
            out: list[Out] = []
            if self.infer_tools and run.pending:
                kind: Kind = "anthropic" if data.operation == "messages" else "openai"
                for result in tool_results(kind, data.operation, data.request):
                    pending = run.pending.pop(result.id, None)
                    if pending is None:  # OpenClaw resends call_abc as callabc: its ids are alphanumeric
                        pending = run.pending.pop(run.aliases.get(_alnum(result.id), ""), None)
                    if pending is not None:
                        run.aliases.pop(_alnum(pending.use.id), None)
                        out.extend(self._span(run, pending, event.time, result.result, error=result.error))
            return out
        if isinstance(data, LlmCallFailed):
            run.calls.pop(data.call_id, None)
            run.last_failed = True
        elif isinstance(data, LlmCallCompleted):
            operation = run.calls.pop(data.call_id, None)
            run.last_failed = False
            if self.infer_tools and operation is not None:
                kind = "anthropic" if operation == "messages" else "openai"
                for use in tool_uses(kind, operation, data.response):
                    if use.id not in run.pending and use.id not in run.reported:
                        span_id = str(uuid.uuid5(_NAMESPACE, f"{run.run_id}:{use.id}"))
                        run.pending[use.id] = _Pending(span_id, use, event.time, event.traceparent)
                        run.aliases[_alnum(use.id)] = use.id
        return []

    def reported(self, event: Event) -> list[Out]:
        """An event the agent posted itself (``/v1/events``): its own tool calls, its end."""
        run = self.runs.get(event.runid or "")
        if run is None:
            return []
        data = event.data
        if isinstance(data, ToolCallRequested) and not data.inferred and data.tool_call_id:
            run.reported.add(data.tool_call_id)
            found = run.pending.pop(data.tool_call_id, None) or run.pending.pop(
                run.aliases.get(_alnum(data.tool_call_id), ""), None)
            if found is not None:
                run.aliases.pop(_alnum(found.use.id), None)
            return []
        if isinstance(data, RunFinished) and run.running:
            return self._finish(run, event.time.timestamp(), data.status, "agent", announce=False)
        return []

    def sweep(self, now: float) -> list[Out]:
        """End the runs no call came for in ``idle_s`` (none in flight)."""
        out: list[Out] = []
        for run in list(self.runs.values()):
            if run.running and run.in_flight == 0 and now - run.last_at >= self.idle_s:
                out.extend(self._finish(run, now, "error" if run.last_failed else "ok", "idle"))
        return out

    # -- ends -----------------------------------------------------------------------------------

    def _finish(self, run: Followed, now: float, status: Status, ended_by: EndedBy, *,
                announce: bool = True) -> list[Out]:
        run.running, run.ended_by = False, ended_by
        at = _at(now)
        out: list[Out] = []
        for pending in run.pending.values():
            out.extend(self._span(run, pending, at, None, missing=ended_by))
        run.pending.clear()
        run.aliases.clear()
        if announce:
            finished = RunFinished(status=status, duration_ms=max(0.0, (now - run.first_at) * 1000),
                                   ended_by=ended_by)
            out.append(Out(finished, run.run_id, run.agent, run.traceparent, at, id=uuid7()))
        return out

    def _span(self, run: Followed, pending: _Pending, end: datetime, result: Any, *, error: bool = False,
              missing: EndedBy | None = None) -> list[Out]:
        use = pending.use
        duration = max(0.0, (end - pending.at).total_seconds() * 1000)
        requested = ToolCallRequested(call_id=pending.span_id, tool=use.name, arguments=use.arguments,
                                      tool_call_id=use.id, inferred=True)
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


def _alnum(call_id: str) -> str:
    return "".join(c for c in call_id if c.isascii() and c.isalnum())


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


def run_summary(run: Followed) -> dict[str, Any]:
    """A followed run as ``GET /v1/runs`` shows it."""
    return {"run_id": run.run_id, "agent": run.agent, "trace_id": run.trace_id,
            "status": "running" if run.running else "finished", "ended_by": run.ended_by,
            "started_at": _at(run.first_at).isoformat(), "last_call_at": _at(run.last_at).isoformat(),
            "calls_in_flight": run.in_flight, "tool_calls_pending": len(run.pending)}
