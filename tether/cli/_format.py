"""One readable line per event, for ``tether tail`` and ``tether up --demo``."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from tether.bus import ReadResult
from tether.schemas import Event

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


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.1f}s"


def _detail(event: Event) -> str:
    d: Any = event.data
    t = event.type
    if t == "tether.run.started":
        return _short(d.name or "") + (f" parent={d.parent_run_id}" if d.parent_run_id else "")
    if t == "tether.run.finished":
        return f"{d.status} {_ms(d.duration_ms)}" + (f" {d.error.type}" if d.error else "")
    if t.startswith("tether.llm."):
        base = f"{d.provider}/{d.model} call=…{d.call_id[-6:]}"
        if t.endswith("requested"):
            return f"{base} {d.operation}{' stream' if d.stream else ''} {d.mode}"
        if t.endswith("attempt_failed"):
            nxt = f" in {d.retry_in_s:.2f}s" if d.retry_in_s is not None else ""
            return f"{base} attempt {d.attempt}: {d.error.type} {d.error.status_code or ''} → {d.decision}{nxt}"
        if t.endswith("completed"):
            u = d.usage
            return f"{base} {_ms(d.latency_ms)} tokens {u.input_tokens}→{u.output_tokens}"
        return f"{base} after {d.attempts} attempt(s): {d.error.type} {_short(d.error.message, 40)}"
    if t.startswith("tether.tool."):
        base = f"{d.tool} call=…{d.call_id[-6:]}"
        if t.endswith("requested"):
            return f"{base} args={_short(d.arguments, 40)}"
        if t.endswith("attempt_failed"):
            return f"{base} attempt {d.attempt}: {d.error.type} → {d.decision}"
        if t.endswith("completed"):
            return f"{base} {_ms(d.duration_ms)} → {_short(d.result, 40)}"
        return f"{base} after {d.attempts} attempt(s): {d.error.type}"
    if t.startswith("tether.memory."):
        base = f"{d.namespace}/{d.key}"
        if t.endswith("written"):
            return f"{base} v{d.version}: {_short(d.text, 40)}"
        if t.endswith("compacted"):
            return f"{base} summarised {len(d.replaced)} entries"
        return f"{base} ({d.reason})"
    if t.startswith("tether.circuit."):
        return d.route + (f": {d.reason}" if getattr(d, "reason", None) else "")
    if t == "tether.budget.exceeded":
        return f"{d.scope}={d.scope_id} {d.spent}/{d.limit} {d.unit}"
    if t == "tether.call.dead_lettered":
        return f"{d.call_kind} call={d.call_id} {d.reason} after {d.attempts} attempt(s)"
    if t == "tether.call.redriven":
        return f"call={d.call_id} → {d.new_call_id}"
    return ""


def event_line(event: Event, style: Style | None = None) -> str:
    s = style or Style()
    kind = event.type.removeprefix("tether.")
    colour = s.red if kind.endswith(("failed", "dead_lettered", "exceeded", "opened")) else (
        s.green if kind.endswith(("completed", "finished", "closed")) else s.cyan)
    when = event.time.strftime("%H:%M:%S.%f")[:-3]
    who = f"{event.agentid or '-'}/{event.runid or '-'}"
    ref = " [object store]" if event.dataref else ""
    return f"{s.dim(when)} {who} {colour(kind)} {_detail(event)}{ref}".rstrip()


def result_line(result: ReadResult, style: Style | None = None) -> str:
    s = style or Style()
    if result.event is not None:
        return event_line(result.event, s)
    return s.red(f"!! not a valid tether event on {result.subject} (seq {result.stream_seq}): "
                 f"{result.error}")
