"""What is sent, and when: OpenTelemetry spans from rows of the traces view, decided without I/O."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["DEFAULT_TIMING", "FINAL", "AttrValue", "Mode", "OtelSpan", "RunState", "Timing", "Verdict", "otel_span",
           "span_id_of", "trace_id_of", "verdict"]

FINAL = frozenset({"ok", "error", "cancelled"})
Verdict = Literal["finished", "unfinished", "wait"]
Mode = Literal["finished", "unfinished", "late"]
Scalar = str | bool | int | float
AttrValue = Scalar | Sequence[str] | Sequence[bool] | Sequence[int] | Sequence[float]


@dataclass(frozen=True, slots=True)
class Timing:
    """When a span that has not finished is sent anyway, in seconds of its run's silence."""

    unfinished_after_s: float = 600.0
    """A span still running after its run has been silent this long is sent unfinished."""
    run_idle_s: float = 30.0
    """A run without ``run.finished`` ends once no call of it runs and it was quiet this long."""


DEFAULT_TIMING = Timing()


@dataclass(frozen=True, slots=True)
class RunState:
    """What the decisions need to know about a span's run."""

    last_at: float | None = None
    """The time of the run's latest event."""
    running_calls: int = 0
    failed_calls: int = 0
    last_end: float | None = None
    """The latest end of any span of the run."""
    failures: tuple[str, ...] = ()
    """What failed, one line per failed call (``BadRequestError: ... (chat o3-mini)``)."""
    dead_lettered: int = 0
    """Of the failed calls, those dead-lettered."""
    first_error_type: str | None = None
    """The error type of the run's first failed call."""
    session_id: str | None = None
    """What backends group traces by: the root run's ``session:<id>`` tag, else the root run's id."""
    user_id: str | None = None
    """The root run's ``user:<id>`` tag, else the run's tenant."""


@dataclass(frozen=True, slots=True)
class OtelSpan:
    """One OpenTelemetry span, as plain data (the sink turns it into the SDK's)."""

    trace_id: int
    span_id: int
    parent_id: int | None
    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, AttrValue]
    error: str | None = None
    """None: status UNSET (tether's ``ok``); else status ERROR with this description."""
    client: bool = False
    """SpanKind CLIENT (an LLM call, a request to a provider); else INTERNAL."""
    source: str = field(default="", compare=False)
    """Tether's span id (bookkeeping; not sent)."""


def span_id_of(tether_span_id: str) -> int:
    """The OpenTelemetry span id (64 bits, never 0) for one of tether's span ids."""
    value = int.from_bytes(hashlib.sha256(b"tether-span:" + tether_span_id.encode()).digest()[:8], "big")
    return value or 1


def trace_id_of(key: str, traceparent_trace: str | None = None) -> int:
    """The trace id (128 bits, never 0): the traceparent's when valid, else derived from ``key``."""
    if traceparent_trace and len(traceparent_trace) == 32:
        with contextlib.suppress(ValueError):
            value = int(traceparent_trace, 16)
            if value:
                return value
    value = int.from_bytes(hashlib.sha256(b"tether-trace:" + key.encode()).digest()[:16], "big")
    return value or 1


def _last_activity(span: Mapping[str, Any], run: RunState | None) -> float | None:
    if run is not None and run.last_at is not None:
        return run.last_at
    times = [t for t in (span["started_at"], span["ended_at"]) if t is not None]
    return max(times) if times else None


def verdict(span: Mapping[str, Any], run: RunState | None, now: float, timing: Timing | None = None) -> Verdict:
    """Whether a span row of the traces view is sent now, and how.

    ``finished``: its outcome is in the log (for a call, its request too, unless the run has
    been silent for ``unfinished_after_s``); ``unfinished``: still running, but its run has
    been silent that long; ``wait``: neither yet.
    """
    timing = timing or DEFAULT_TIMING
    last = _last_activity(span, run)
    idle = 0.0 if last is None else now - last
    status = span["status"]
    if span["kind"] == "run":
        if status in FINAL:
            return "finished"
        if status is None and run is not None and not run.running_calls and idle >= timing.run_idle_s:
            return "finished"  # a run without lifecycle events, quiet and with nothing open
    elif status in FINAL and span["ended_at"] is not None:
        if span["kind"] not in ("llm", "tool") or span["attributes"] is not None or idle >= timing.unfinished_after_s:
            return "finished"
        return "wait"  # its outcome was folded before its request: wait for the request's attributes
    return "unfinished" if idle >= timing.unfinished_after_s else "wait"


def _ns(seconds: float) -> int:
    return round(seconds * 1_000_000_000)


def _attr(value: Any) -> AttrValue | None:
    """An OpenTelemetry attribute value: a scalar, a list of one scalar type, else JSON text."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple):
        items = [v for v in value if v is not None]
        for kind in (str, bool, int, float):
            if items and all(type(v) is kind for v in items):
                return list(items)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


# OpenInference's span kind (what Phoenix groups and draws by) for each of tether's.
OPENINFERENCE_KIND = {"run": "AGENT", "llm": "LLM", "tool": "TOOL", "attempt": "CHAIN", "backoff": "CHAIN",
                      "fallback": "CHAIN", "dead_letter": "CHAIN", "redrive": "CHAIN", "memory": "CHAIN",
                      "budget": "GUARDRAIL", "circuit": "CHAIN"}
HANDLED = frozenset({"retry", "fallback"})
"""An attempt that failed with one of these decisions was handled: not an error of the call."""


def handled(span: Mapping[str, Any]) -> bool:
    """A failed attempt tether retried or fell back from: by the OTel conventions' *Recording
    errors* ("errors that were retried or handled ... SHOULD NOT be recorded"), status UNSET."""
    return span["kind"] == "attempt" and span["status"] == "error" and span.get("decision") in HANDLED


def _attributes(span: Mapping[str, Any]) -> dict[str, AttrValue]:
    merged: dict[str, Any] = {**json.loads(span["attributes"] or "{}"), **json.loads(span["end_attributes"] or "{}")}
    kind = span["kind"]
    name = span["name"] or ""
    if kind == "run":
        merged.setdefault("gen_ai.operation.name", "invoke_agent")
        merged.setdefault("gen_ai.agent.name", span["agent"])
        merged.setdefault("tether.run.id", span["span_id"])
    elif kind == "llm":
        merged.setdefault("gen_ai.operation.name", name.split(" ", 1)[0] or "chat")
        merged.setdefault("gen_ai.provider.name", span["provider"])
        if span["status"] == "ok":
            merged.setdefault("gen_ai.response.model", span["model"])
        merged.setdefault("gen_ai.usage.input_tokens", span["input_tokens"])
        merged.setdefault("gen_ai.usage.output_tokens", span["output_tokens"])
        # The model that answered prices the call (after a fallback it is not the requested one):
        # OpenInference's llm.model_name (embedding.model_name) is what Phoenix prices by.
        answered = merged.get("gen_ai.response.model") or merged.get("gen_ai.request.model") or span["model"]
        merged["embedding.model_name" if merged["gen_ai.operation.name"] == "embeddings" else "llm.model_name"] = \
            answered
        if span.get("cost_usd") is not None:  # tether's own price, as OpenInference and Langfuse name it
            merged["llm.cost.total"] = merged["gen_ai.usage.cost"] = span["cost_usd"]
    elif kind == "tool":
        merged.setdefault("gen_ai.operation.name", "execute_tool")
        merged.setdefault("gen_ai.tool.name", span["tool"])
    elif kind == "attempt":
        merged.setdefault("tether.attempt", span["attempt"])
        merged.setdefault("tether.decision", span["decision"])
    merged.setdefault("tether.call.id", span["call_id"])
    if kind in ("attempt", "llm", "tool"):
        merged.setdefault("tether.route", span["route"])
    merged["tether.span.id"] = span["span_id"]
    merged["tether.span.kind"] = kind
    operation = merged.get("gen_ai.operation.name")
    merged["openinference.span.kind"] = "EMBEDDING" if kind == "llm" and operation == "embeddings" else \
        OPENINFERENCE_KIND.get(kind, "CHAIN")
    if handled(span):  # kept, but not as error.type: the call went on
        merged["tether.error.type"] = merged.pop("error.type", None) or span["error_type"]
    elif span["status"] == "error":
        merged.setdefault("error.type", span["error_type"] or "_OTHER")
    out = {}
    for key, value in merged.items():
        converted = _attr(value)
        if converted is not None:
            out[key] = converted
    return out


def _error(span: Mapping[str, Any]) -> str:
    kind, message = span["error_type"], span["error_message"]
    text = f"{kind}: {message}" if kind and message else (kind or message or span["name"] or f"{span['kind']} failed")
    return text[:1000]


def run_failure(run: RunState) -> str | None:
    """What a run's failed calls say, in one line: ``1 call dead-lettered: BadRequestError: ... (chat o3-mini)``."""
    if not run.failed_calls:
        return None
    n = run.failed_calls
    calls = f"{n} call{'s' if n != 1 else ''}"
    if run.dead_lettered == n:
        head = f"{calls} dead-lettered"
    elif run.dead_lettered:
        head = f"{calls} failed ({run.dead_lettered} dead-lettered)"
    else:
        head = f"{calls} failed"
    return (f"{head}: {'; '.join(run.failures)}" if run.failures else head)[:1000]


def otel_span(span: Mapping[str, Any], *, trace_id: int, parent_id: int | None, mode: Mode = "finished",
              run: RunState | None = None, content: Mapping[str, AttrValue] | None = None) -> OtelSpan:
    """The OpenTelemetry span for a row of the traces view's ``spans`` table. Pure.

    ``mode``: ``finished`` (its outcome as recorded), ``unfinished`` (ended at its run's last
    sign of life, with status ERROR), or ``late`` (the child that completes an unfinished one).
    ``content``: the span's captured content attributes (see :func:`content_attributes`).
    """
    attributes = _attributes(span)
    if run is not None and run.session_id:
        attributes["session.id"] = run.session_id  # OpenInference, Langfuse
        attributes["gen_ai.conversation.id"] = run.session_id  # the GenAI conventions
    if run is not None and run.user_id:
        attributes["user.id"] = run.user_id
    if content:
        attributes |= content
    start = span["started_at"] if span["started_at"] is not None else (span["ended_at"] or 0.0)
    end = span["ended_at"]
    error: str | None = _error(span) if span["status"] == "error" and not handled(span) else None
    if span["kind"] == "run" and run is not None and mode != "unfinished":
        said = run_failure(run)
        if span["status"] is None:  # a run without lifecycle events
            ends = [t for t in (run.last_end, run.last_at) if t is not None]
            end = max(ends) if ends else start
            if said:
                error = said
                attributes["error.type"] = run.first_error_type or "_OTHER"
        elif span["status"] == "error" and not (span["error_type"] or span["error_message"]):
            error = said or "the run reported status error and said no more"  # nothing of its own: say what failed
            attributes["error.type"] = run.first_error_type or "_OTHER"
    span_id = span_id_of(span["span_id"])
    name = span["name"] or {"llm": "chat", "tool": "execute_tool"}.get(span["kind"], span["kind"])
    if mode == "unfinished":
        last = _last_activity(span, run)
        end = max(start, last if last is not None else start)
        error = (f"never finished: nothing was heard of its run after "
                 f"{datetime.fromtimestamp(end, UTC).isoformat(timespec='milliseconds')} (a crash looks like this)")
        attributes |= {"error.type": "unfinished", "tether.unfinished": True}
    elif mode == "late":
        parent_id, span_id = span_id, span_id_of(f"{span['span_id']}#late")
        attributes["tether.late"] = True
    end = start if end is None else max(start, end)
    return OtelSpan(trace_id=trace_id, span_id=span_id, parent_id=parent_id, name=name, start_ns=_ns(start),
                    end_ns=_ns(end), attributes=attributes, error=error, client=span["kind"] == "llm",
                    source=span["span_id"])
