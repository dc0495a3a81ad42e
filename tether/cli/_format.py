"""One readable line per event, for ``tether tail`` and ``tether up --demo``."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from tether.bus import ReadResult
from tether.schemas import (
    BudgetExceeded,
    CallDeadLettered,
    CallRedriven,
    CallReplayed,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    DatasetItemAdded,
    DatasetItemRemoved,
    ErrorInfo,
    Event,
    ExperimentStarted,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    MemoryCompacted,
    MemoryDeleted,
    MemoryEmbedded,
    MemoryWritten,
    RunFinished,
    RunNeedsAttention,
    RunStarted,
    ScoreRecorded,
    ToolCallAttemptFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
    ToolCallResolved,
    TrialCompleted,
    UsageReported,
)

__all__ = ["Style", "event_line", "result_line"]


class Style:
    """ANSI colours, off when the stream is not a terminal or NO_COLOR is set."""

    def __init__(self, stream: Any = None) -> None:
        stream = stream or sys.stdout
        self.on = hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def dim(self, t: str) -> str:
        return self._c("2", t)

    def bold(self, t: str) -> str:
        return self._c("1", t)

    def red(self, t: str) -> str:
        return self._c("31", t)

    def green(self, t: str) -> str:
        return self._c("32", t)

    def yellow(self, t: str) -> str:
        return self._c("33", t)

    def cyan(self, t: str) -> str:
        return self._c("36", t)


def _short(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.1f}s"


def _llm(d: LlmCallRequested | LlmCallAttemptFailed | LlmCallCompleted | LlmCallFailed) -> str:
    return f"{d.provider}/{d.model} call=…{d.call_id[-6:]}"


def _tool(d: ToolCallRequested | ToolCallAttemptFailed | ToolCallCompleted | ToolCallFailed | ToolCallResolved) -> str:
    return f"{d.tool} call=…{d.call_id[-6:]}"


def _error(error: ErrorInfo) -> str:
    return error.type + (f" {error.status_code}" if error.status_code else "")


def _wait(seconds: float | None) -> str:
    """How long until the next attempt; nothing when it follows at once (a fallback, say)."""
    return f" in {seconds:.2f}s" if seconds else ""


def _detail(event: Event) -> str:
    match event.data:
        case RunStarted() as d:
            return _short(d.name or "") + (f" parent={d.parent_run_id}" if d.parent_run_id else "")
        case RunFinished() as d:
            return f"{d.status} {_ms(d.duration_ms)}" + (f" {d.error.type}" if d.error else "")
        case LlmCallRequested() as d:
            return f"{_llm(d)} {d.operation}{' stream' if d.stream else ''} {d.mode}"
        case LlmCallAttemptFailed() as d:
            target = f" to {d.next_provider or d.provider}/{d.next_model}" if d.next_model else ""
            return f"{_llm(d)} attempt {d.attempt}: {_error(d.error)} → {d.decision}{target}{_wait(d.retry_in_s)}"
        case LlmCallCompleted() as d:
            return f"{_llm(d)} {_ms(d.latency_ms)} tokens {d.usage.input_tokens}→{d.usage.output_tokens}"
        case LlmCallFailed() as d:
            return f"{_llm(d)} after {d.attempts} attempt(s): {d.error.type} {_short(d.error.message, 40)}"
        case UsageReported() as d:
            counted = f"{d.reporter or 'the agent'} counted in={d.usage.input_tokens} out={d.usage.output_tokens}"
            if d.recorded is None:
                return counted
            if not d.mismatch:
                return f"{counted}: as recorded ({d.recorded_calls} call(s))"
            return f"{counted}: MISMATCH {'; '.join(d.mismatch)}"
        case ToolCallRequested() as d:
            return f"{_tool(d)} args={_short(d.arguments, 40)}"
        case ToolCallAttemptFailed() as d:
            return f"{_tool(d)} attempt {d.attempt}: {_error(d.error)} → {d.decision}{_wait(d.retry_in_s)}"
        case ToolCallCompleted() as d:
            return f"{_tool(d)} {_ms(d.duration_ms)} → {_short(d.result, 40)}"
        case ToolCallFailed() as d:
            return f"{_tool(d)} after {d.attempts} attempt(s): {d.error.type}"
        case MemoryWritten() as d:
            return f"{d.namespace}/{d.key} v{d.version}: {_short(d.text, 40)}"
        case MemoryCompacted() as d:
            return f"{d.namespace}/{d.key} summarised {len(d.replaced)} entries"
        case MemoryDeleted() as d:
            return f"{d.namespace}/{d.key} ({d.reason})"
        case MemoryEmbedded() as d:
            return f"{d.namespace}/{d.key} v{d.version} by {_short(d.embedder, 60)}"
        case CircuitOpened() as d:
            return d.route + (f": {d.reason}" if d.reason else "")
        case CircuitHalfOpened() | CircuitClosed() as d:
            return d.route
        case BudgetExceeded() as d:
            return f"{d.scope}={d.scope_id} {d.spent}/{d.limit} {d.unit}"
        case CallDeadLettered() as d:
            return f"{d.call_kind} call={d.call_id} {d.reason} after {d.attempts} attempt(s)"
        case CallRedriven() as d:
            return f"call={d.call_id} → {d.new_call_id}"
        case CallReplayed() as d:
            return f"{d.call_kind} call={d.call_id} from {d.via} (paid by call={d.original_call_id})"
        case RunNeedsAttention() as d:
            return f"tool={d.tool} call={d.call_id} #{d.position}: {_short(d.reason, 60)}"
        case ToolCallResolved() as d:
            return f"{_tool(d)} " + (f"happened → {_short(d.result, 40)}" if d.happened else "did not happen")
        case DatasetItemAdded() as d:
            return f"{d.dataset}/{d.item_id} input={_short(d.input, 40)}"
        case DatasetItemRemoved() as d:
            return f"{d.dataset}/{d.item_id}"
        case ExperimentStarted() as d:
            return f"{d.experiment} on {d.dataset or '-'}" + (" (replay)" if d.replay else "")
        case TrialCompleted() as d:
            return f"{d.experiment}/{d.item_id} {_ms(d.latency_ms)}" + (
                f" {d.error.type}" if d.error else f" → {_short(d.output, 40)}")
        case ScoreRecorded() as d:
            verdict = "" if d.passed is None else " pass" if d.passed else " FAIL"
            return f"{d.experiment}/{d.item_id} {d.scorer}={'-' if d.value is None else f'{d.value:g}'}{verdict}"
    return ""


def event_line(event: Event, style: Style | None = None) -> str:
    s = style or Style()
    kind = event.type.removeprefix("tether.")
    colour = s.red if kind.endswith(("failed", "dead_lettered", "exceeded", "opened")) else (
        s.green if kind.endswith(("completed", "finished", "closed")) else s.cyan)
    when = event.time.strftime("%H:%M:%S.%f")[:-3]
    who = f"{event.agentid or '-'}/{event.runid or '-'}"
    ref = " [object store]" if event.dataref else ""
    detail = " ".join(p for p in _detail(event).split(" ") if p)  # an empty part (no status, no duration): no gap
    return f"{s.dim(when)} {who} {colour(kind)} {detail}{ref}".rstrip()


def result_line(result: ReadResult, style: Style | None = None) -> str:
    s = style or Style()
    if result.event is not None:
        return event_line(result.event, s)
    return s.red(f"!! not a valid tether event on {result.subject} (seq {result.stream_seq}): "
                 f"{result.error}")
