"""Opt-in content capture: prompts, completions, tool arguments and results, read back from the log
by sequence (:class:`LogContent`) and made GenAI (``gen_ai.input.messages``...) and OpenInference
(``input.value``...) attributes within a size limit (:func:`content_attributes`, pure)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from tether.schemas import (
    Event,
    LlmCallCompleted,
    LlmCallRequested,
    RunFinished,
    RunStarted,
    ToolCallCompleted,
    ToolCallRequested,
)

__all__ = [
    "CONTENT_ENV",
    "DEFAULT_CONTENT_LIMIT",
    "ContentSource",
    "LogContent",
    "MemoryContent",
    "capture_from_env",
    "content_attributes",
    "content_events",
]

DEFAULT_CONTENT_LIMIT = 16_384
"""Characters per content attribute (the OTel SDK's own attribute limit is unset by default)."""
CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""The environment variable OpenTelemetry's GenAI instrumentations read for the same opt-in."""


def capture_from_env(env: Mapping[str, str]) -> bool:
    """True when ``$OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` says so (``true``/``1``)."""
    return env.get(CONTENT_ENV, "").strip().lower() in ("true", "1", "yes")


class ContentSource(Protocol):
    """Where the events carrying a span's content are read from, by log sequence."""

    def events(self, seqs: Sequence[int]) -> Mapping[int, Event]:
        """The events at ``seqs`` that could be read (a missing one is left out). Blocking."""
        ...


class MemoryContent:
    """Events by sequence, in memory (tests)."""

    def __init__(self, events: Mapping[int, Event]) -> None:
        self._events = dict(events)
        self.reads = 0

    def events(self, seqs: Sequence[int]) -> Mapping[int, Event]:
        self.reads += 1
        return {s: self._events[s] for s in seqs if s in self._events}


class LogContent:
    """Reads events from the EVENTS stream by sequence, on ``loop`` (the bus's), from the exporter's thread."""

    def __init__(self, bus: Any, loop: asyncio.AbstractEventLoop, *, timeout: float = 10.0) -> None:
        self._bus = bus
        self._loop = loop
        self._timeout = timeout

    def events(self, seqs: Sequence[int]) -> Mapping[int, Event]:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: the exporter's worker thread, as meant
            running = None
        if running is self._loop:
            raise RuntimeError("LogContent.events() blocks: call it from another thread (OtelExporter.aexport)")
        return asyncio.run_coroutine_threadsafe(self._read(seqs), self._loop).result(self._timeout)

    async def _read(self, seqs: Sequence[int]) -> dict[int, Event]:
        from nats.js.errors import NotFoundError

        from tether.bus import EVENTS_STREAM
        from tether.schemas import EventError

        out: dict[int, Event] = {}
        for seq in sorted(set(seqs)):
            try:
                msg = await self._bus.js.get_msg(EVENTS_STREAM, seq)
                out[seq] = await self._bus.reader.read(msg.headers, msg.data or b"")
            except (NotFoundError, EventError):  # purged, or not a tether event: that span goes without content
                continue  # anything else (NATS away) fails the pass, which is tried again
        return out


def content_events(span: Mapping[str, Any], events: Mapping[int, Event]) -> tuple[Event | None, Event | None]:
    """The span's opening and closing events among ``events``: its first and last log sequence,
    if they are the events that carry its content (a request, an outcome; a run's start and end)."""
    kind = span["kind"]
    first, last = events.get(span.get("first_seq") or -1), events.get(span.get("last_seq") or -1)
    wanted: dict[str, tuple[type[Any], type[Any]]] = {
        "llm": (LlmCallRequested, LlmCallCompleted), "tool": (ToolCallRequested, ToolCallCompleted),
        "run": (RunStarted, RunFinished)}
    if kind not in wanted:
        return None, None
    opens, closes = wanted[kind]

    def own(event: Event | None, cls: type[Any]) -> Event | None:
        if event is None or not isinstance(event.data, cls):
            return None
        if kind == "run":
            return event if event.runid == span["span_id"] else None
        return event if getattr(event.data, "call_id", None) == span["span_id"] else None

    return own(first, opens), own(last, closes)


def _dump(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                                                           default=str)


def _text_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    if isinstance(content, list):
        for item in content:
            if isinstance(item, str):
                parts.append({"type": "text", "content": item})
            elif isinstance(item, dict) and item.get("type") in ("text", "input_text", "output_text"):
                parts.append({"type": "text", "content": str(item.get("text", ""))})
            elif isinstance(item, dict) and item.get("type") == "tool_use":  # Anthropic
                parts.append({"type": "tool_call", "id": item.get("id"), "name": item.get("name"),
                              "arguments": item.get("input")})
            elif isinstance(item, dict) and item.get("type") == "tool_result":
                parts.append({"type": "tool_call_response", "id": item.get("tool_use_id"),
                              "response": item.get("content")})
    return parts


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI or Anthropic chat message in the GenAI conventions' message shape."""
    role = str(message.get("role") or "user")
    parts = _text_parts(message.get("content"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            with contextlib.suppress(ValueError):
                arguments = json.loads(arguments)
        parts.append({"type": "tool_call", "id": call.get("id"), "name": function.get("name"),
                      "arguments": arguments})
    if role == "tool":
        parts = [{"type": "tool_call_response", "id": message.get("tool_call_id"),
                  "response": message.get("content")}]
    if role == "developer":
        role = "system"
    return {"role": role, "parts": parts}


def input_messages(request: Any) -> list[dict[str, Any]] | None:
    """``gen_ai.input.messages`` for a chat request body (OpenAI or Anthropic); None for other shapes."""
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        return None
    out = []
    system = request.get("system")  # Anthropic: the system prompt beside the messages
    if system:
        out.append({"role": "system", "parts": _text_parts(system)})
    out += [_message(m) for m in request["messages"] if isinstance(m, dict)]
    return out


def output_messages(response: Any, finish_reason: str | None) -> list[dict[str, Any]] | None:
    """``gen_ai.output.messages`` for a chat response body (OpenAI or Anthropic); None for other shapes."""
    if not isinstance(response, dict):
        return None
    if isinstance(response.get("choices"), list):
        out = []
        for choice in response["choices"]:
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                message = _message(choice["message"])
                out.append({**message, "finish_reason": choice.get("finish_reason") or finish_reason or "stop"})
        return out or None
    if response.get("type") == "message" and isinstance(response.get("content"), list):
        return [{"role": "assistant", "parts": _text_parts(response["content"]),
                 "finish_reason": response.get("stop_reason") or finish_reason or "stop"}]
    return None


def content_attributes(kind: str, opened: Event | None, closed: Event | None, *,
                       limit: int = DEFAULT_CONTENT_LIMIT) -> dict[str, str | list[str]]:
    """The content attributes of a span of ``kind`` from its opening and closing events. Pure.

    A value longer than ``limit`` characters is cut (and named in ``tether.content.truncated``);
    structured ones (``gen_ai.*.messages``) are left out instead, as a cut JSON document is none.
    """
    raw: dict[str, tuple[Any, bool]] = {}  # attribute -> (value, structured)
    if kind == "llm":
        request = opened.data.request if opened is not None and isinstance(opened.data, LlmCallRequested) else None
        done = closed.data if closed is not None and isinstance(closed.data, LlmCallCompleted) else None
        response = done.response if done is not None else None
        if request is not None:
            raw["input.value"] = (request, False)
            raw["gen_ai.input.messages"] = (input_messages(request), True)
        if response is not None:
            raw["output.value"] = (response, False)
            raw["gen_ai.output.messages"] = (output_messages(response, done.finish_reason if done else None), True)
    elif kind == "tool":
        arguments = opened.data.arguments if opened is not None and isinstance(opened.data, ToolCallRequested) \
            else None
        result = closed.data.result if closed is not None and isinstance(closed.data, ToolCallCompleted) else None
        if arguments is not None:
            raw["gen_ai.tool.call.arguments"] = (arguments, False)
            raw["input.value"] = (arguments, False)
        if result is not None:
            raw["gen_ai.tool.call.result"] = (result, False)
            raw["output.value"] = (result, False)
    elif kind == "run":
        given = opened.data.input if opened is not None and isinstance(opened.data, RunStarted) else None
        output = closed.data.output if closed is not None and isinstance(closed.data, RunFinished) else None
        if given is not None:
            raw["input.value"] = (given, False)
        if output is not None:
            raw["output.value"] = (output, False)
    out: dict[str, str | list[str]] = {}
    cut: list[str] = []
    for name, (value, structured) in raw.items():
        if value is None:
            continue
        text = _dump(value)
        if len(text) > limit:
            cut.append(name)
            if structured:
                continue
            text = text[:limit]
        out[name] = text
        if name in ("input.value", "output.value"):
            out[name.replace("value", "mime_type")] = "text/plain" if isinstance(value, str) or len(
                _dump(value)) > limit else "application/json"
    if cut:
        out["tether.content.truncated"] = cut
    return out
