"""A run's trace as evaluation reads it: tools called, retries, dead letters, cost, output.

Pure: built from the run's events in log order (:meth:`RunTrace.of`); ``read_run`` in
``_log`` fetches them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.pricing import price
from tether.schemas import (
    CallDeadLettered,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    RunFinished,
    RunStarted,
    ToolCallAttemptFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
)

__all__ = ["RunTrace", "ToolUse"]


@dataclass(frozen=True)
class ToolUse:
    """One tool call of the run, in the order it was asked for."""

    name: str
    call_id: str
    arguments: Any
    result: Any = None
    error: str | None = None
    """The error's type when the call failed."""
    done: bool = False


@dataclass(frozen=True)
class RunTrace:
    """What a run did, for scorers and test assertions (``run.called_tool("search")``, ``run.cost < 0.01``)."""

    run_id: str
    agent: str | None = None
    status: str | None = None
    """``ok``, ``error``, ``cancelled``, or None while the run has not finished."""
    input: Any = None
    output: Any = None
    error: str | None = None
    tools: tuple[ToolUse, ...] = ()
    llm_calls: int = 0
    models: tuple[str, ...] = ()
    retries: int = 0
    """Attempts that failed and were retried (LLM and tool calls)."""
    fallbacks: int = 0
    failed_calls: int = 0
    dead_letters: int = 0
    tokens: int = 0
    cost: float = 0.0
    """US dollars of the run's LLM calls, priced by genai-prices (unpriced calls count 0; see ``unpriced``)."""
    unpriced: int = 0
    duration_ms: float | None = None
    events: tuple[Event, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, run_id: str, events: Iterable[Event]) -> RunTrace:
        """The trace of ``run_id`` from its events (others are ignored), in log order."""
        evs = tuple(e for e in events if e.runid == run_id)
        requested: dict[str, ToolCallRequested] = {}
        order: list[str] = []
        outcome: dict[str, ToolCallCompleted | ToolCallFailed] = {}
        agent = status = error = None
        inp = out = None
        duration = None
        llm = retries = fallbacks = failed = dead = tokens = unpriced = 0
        cost = 0.0
        models: list[str] = []
        for e in evs:
            agent = agent or e.agentid
            match e.data:
                case RunStarted() as d:
                    inp = d.input
                case RunFinished() as d:
                    status, out, duration = d.status, d.output, d.duration_ms
                    error = d.error.type if d.error else None
                case ToolCallRequested() as d:
                    if d.call_id not in requested:
                        order.append(d.call_id)
                    requested[d.call_id] = d
                case ToolCallCompleted() | ToolCallFailed() as d:
                    outcome[d.call_id] = d
                    failed += isinstance(d, ToolCallFailed)
                case ToolCallAttemptFailed() as d:
                    retries += d.decision == "retry"
                case LlmCallAttemptFailed() as d:
                    retries += d.decision == "retry"
                    fallbacks += d.decision == "fallback"
                case LlmCallCompleted() as d:
                    llm += 1
                    if d.model not in models:
                        models.append(d.model)
                    tokens += d.usage.input_tokens + d.usage.output_tokens
                    priced = price(d.provider, d.model, d.usage, at=e.time)
                    if priced.usd is None:
                        unpriced += 1
                    else:
                        cost += priced.usd
                case LlmCallFailed():
                    llm += 1
                    failed += 1
                case CallDeadLettered():
                    dead += 1
        tools = []
        for call_id in order:
            asked = requested[call_id]
            done = outcome.get(call_id)
            tools.append(ToolUse(asked.tool, call_id, asked.arguments,
                                 result=done.result if isinstance(done, ToolCallCompleted) else None,
                                 error=done.error.type if isinstance(done, ToolCallFailed) else None,
                                 done=done is not None))
        return cls(run_id=run_id, agent=agent, status=status, input=inp, output=out, error=error, tools=tuple(tools),
                   llm_calls=llm, models=tuple(models), retries=retries, fallbacks=fallbacks, failed_calls=failed,
                   dead_letters=dead, tokens=tokens, cost=cost, unpriced=unpriced, duration_ms=duration, events=evs)

    # -- assertions read like tests ------------------------------------------------------------

    def called_tool(self, name: str, /, **arguments: Any) -> bool:
        """Whether the run called tool ``name`` (with these arguments, if any are given)."""
        return any(t.name == name and _has(t.arguments, arguments) for t in self.tools)

    def tool_calls(self, name: str | None = None) -> list[ToolUse]:
        return [t for t in self.tools if name is None or t.name == name]

    def no_dead_letters(self) -> bool:
        return self.dead_letters == 0

    def recorded_results(self) -> dict[str, list[ToolUse]]:
        """Each tool's calls in the order they were asked for: what a replay hands back by position."""
        out: dict[str, list[ToolUse]] = {}
        for t in self.tools:
            out.setdefault(t.name, []).append(t)
        return out


def _has(recorded: Any, wanted: Mapping[str, Any]) -> bool:
    if not wanted:
        return True
    return isinstance(recorded, Mapping) and all(k in recorded and recorded[k] == v for k, v in wanted.items())
