"""A run's tool calls as its log holds them, and what a resumed run does with each call it makes.

Calls are matched by position (the n-th tool call of the run, from 0) and checked by tool and
arguments; the first call that differs, and every call after it, runs live. Pure: events in,
decisions out (``_tools`` does the I/O).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from tether.middleware import request_fingerprint
from tether.schemas import (
    Event,
    RunNeedsAttention,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
    ToolCallResolved,
)

__all__ = ["Attention", "Live", "RecordedTool", "Replay", "ToolJournal", "decide", "fingerprint",
           "recorded_tools", "unresolved"]

State = Literal["started", "completed", "failed", "happened", "not_happened"]


def fingerprint(tool: str, arguments: Any) -> str:
    """What makes two tool calls the same call: the tool and its recorded arguments."""
    return request_fingerprint({"tool": tool, "arguments": arguments})


@dataclass
class RecordedTool:
    """One tool call of the run, as far as the log tells."""

    position: int
    call_id: str
    tool: str
    arguments: Any
    idempotent: bool
    idempotency_key: str | None
    state: State = "started"
    result: Any = None
    captured: bool = True
    """The call recorded its arguments and result (``capture=True``): a result can be replayed."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.tool, self.arguments)


def recorded_tools(events: Iterable[Event]) -> dict[int, RecordedTool]:
    """The run's tool calls by position, from its events in log order. A position recorded twice
    (a resumed run that went another way there) holds the later call."""
    by_position: dict[int, RecordedTool] = {}
    by_call: dict[str, RecordedTool] = {}
    for event in events:
        data = event.data
        if isinstance(data, ToolCallRequested):
            if data.position is None:
                continue
            rec = RecordedTool(data.position, data.call_id, data.tool, data.arguments, data.idempotent,
                               data.idempotency_key, captured=data.arguments is not None)
            by_position[data.position] = by_call[data.call_id] = rec
            continue
        rec_or_none = by_call.get(data.call_id) if isinstance(
            data, ToolCallCompleted | ToolCallFailed | ToolCallResolved) else None
        if rec_or_none is None:
            continue
        rec = rec_or_none
        if isinstance(data, ToolCallCompleted):
            rec.state, rec.result = "completed", data.result
        elif isinstance(data, ToolCallFailed):
            if rec.state == "started":  # a resolution or completion read first stays
                rec.state = "failed"
        elif isinstance(data, ToolCallResolved):
            if data.happened:
                rec.state, rec.result, rec.captured = "happened", data.result, True
            else:
                rec.state = "not_happened"
    return by_position


def unresolved(events: Iterable[Event]) -> list[RunNeedsAttention]:
    """The run's ``needs_attention`` calls that no ``tool.call.resolved`` (or completion) answered yet."""
    events = list(events)
    calls = {rec.call_id: rec for rec in recorded_tools(events).values()}
    out: dict[str, RunNeedsAttention] = {}
    for event in events:
        if isinstance(event.data, RunNeedsAttention):
            rec = calls.get(event.data.call_id)
            if rec is None or rec.state == "started":
                out[event.data.call_id] = event.data
    return list(out.values())


@dataclass(frozen=True)
class Replay:
    """Return the recorded result; the tool does not run."""

    recorded: RecordedTool


@dataclass(frozen=True)
class Live:
    """Run the tool. ``rerun`` is the recorded call it repeats (idempotent, or it did not happen)."""

    rerun: RecordedTool | None = None
    diverged: bool = False
    """The recorded call at this position was another: this call and every later one run live."""


@dataclass(frozen=True)
class Attention:
    """Stop the run: whether the recorded call's effect happened is unknown, and it may not run twice."""

    recorded: RecordedTool
    reason: str


def decide(recorded: RecordedTool | None, tool: str, print_: str, idempotent: bool) -> Replay | Live | Attention:
    """What a resumed run does with its call at a position the log holds ``recorded`` for."""
    if recorded is None:
        return Live()
    if recorded.tool != tool or recorded.fingerprint != print_:
        return Live(diverged=True)
    if recorded.state in ("failed", "not_happened"):
        return Live(rerun=recorded)
    if recorded.state in ("completed", "happened"):
        if recorded.captured:
            return Replay(recorded)
        if idempotent:
            return Live(rerun=recorded)
        return Attention(recorded, "the call completed, but its result was not recorded (capture=False) and the "
                                   "tool is not idempotent")
    if idempotent:
        return Live(rerun=recorded)
    return Attention(recorded, "the process died inside the call: its start was recorded, its end was not, and "
                               "the tool is not idempotent")


@dataclass
class ToolJournal:
    """One run's tool calls in this process: the next position, and (resumed) what the log holds."""

    run_id: str
    recorded: dict[int, RecordedTool] = field(default_factory=dict)
    resumed: bool = False
    diverged: bool = False
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def allocate(self) -> int:
        """The position of the run's next tool call (thread-safe: calls are numbered as they start)."""
        with self._lock:
            position = self._next
            self._next += 1
            return position

    def decide(self, position: int, tool: str, print_: str, idempotent: bool) -> Replay | Live | Attention:
        if not self.resumed or self.diverged:
            return Live()
        decision = decide(self.recorded.get(position), tool, print_, idempotent)
        if isinstance(decision, Live) and decision.diverged:
            self.diverged = True
        return decision

    def key(self, position: int, call_id: str) -> str:
        """The call's idempotency key: the run and the position, the same in every resumption of the run;
        a call that replaces another recorded at its position (the run went another way) gets its own."""
        if self.diverged and position in self.recorded:
            return f"{self.run_id}:{position}:{call_id}"
        return f"{self.run_id}:{position}"
