"""Server-sent events, and what a streamed answer adds up to, without I/O.

:class:`SSEParser` parses events incrementally from the bytes passed through: only the
tail of an event not yet complete is kept between chunks, the stream itself is never
buffered. :class:`StreamAccumulator` reads the events of one streamed LLM answer (OpenAI
chat completions and Responses, Anthropic messages, Gemini's ``streamGenerateContent?alt=sse``)
and keeps usage, the finish reason, the moment of the first token and, when capturing, the
answer rebuilt as one message.

Both ends of a stream use them: the adapters' tee (inline calls) and the executor's relay
(durable streamed calls).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tether.schemas import Usage

from ._providers import usage_of

__all__ = ["SSEParser", "StreamAccumulator"]

Kind = Literal["openai", "anthropic", "gemini"]
Operation = Literal["chat", "responses", "messages", "embeddings", "generate_content"]

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(r"\r\n|\r|\n")  # an event's lines end there only (``str.splitlines`` also splits at U+2028)
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set by __init__, not typed


def _loads(text: str, scan: Any = _scan_once) -> tuple[Any, bool]:
    """``json.loads(text)``, without its three layers of Python for the usual event (a document
    with nothing around it: then also True); anything else, an error too, is left to ``json.loads``."""
    try:
        doc, end = scan(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text), False
    return (doc, True) if end == len(text) else (json.loads(text), False)


class SSEParser:
    """Feed chunks; get the events they complete, with the raw bytes of each."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[tuple[bytes, str | None, str]]:
        """Events completed by ``chunk``: ``(raw bytes incl. the blank line, event name, data)``."""
        buf = self._tail + chunk if self._tail else chunk
        end = buf.find(b"\n\n")
        if end >= 0 and end == len(buf) - 2 and b"\r" not in buf:  # one whole event: what a chunk usually is
            self._tail = b""
            parsed = _parse(buf[:end])
            return [(buf, *parsed) if parsed is not None else (buf, None, "")]
        out: list[tuple[bytes, str | None, str]] = []
        start = 0
        for match in _BOUNDARY.finditer(buf):
            parsed = _parse(buf[start:match.start()])
            raw = buf[start:match.end()]
            start = match.end()
            out.append((raw, *parsed) if parsed is not None else (raw, None, ""))
        self._tail = buf[start:]
        return out

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return self._tail


def _parse(block: bytes) -> tuple[str | None, str] | None:
    if block.startswith(b"data: ") and b"\n" not in block and b"\r" not in block:  # one data line: most events
        return None, block[6:].decode("utf-8", errors="replace")
    name: str | None = None
    data: list[str] = []
    for line in _LINE.split(block.decode("utf-8", errors="replace")):
        if not line or line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if key == "data":
            data.append(value)
        elif key == "event":
            name = value
    if name is None and not data:
        return None
    return name, "\n".join(data)


# -- streamed answers -------------------------------------------------------------------


class _Finite:
    """A decoder's numbers watched (its ``parse_float`` and ``parse_constant``): :attr:`ok` until
    one is NaN or infinite (``NaN``, ``Infinity``, ``1e999``), which JSON itself has no word for."""

    __slots__ = ("ok",)

    def __init__(self) -> None:
        self.ok = True

    def number(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            self.ok = False
        return value

    def constant(self, text: str) -> float:
        self.ok = False
        return float(text)


@dataclass
class _Block:
    kind: str
    start: dict[str, Any]
    parts: list[str] = field(default_factory=list)


class StreamAccumulator:
    """What a stream has said so far. ``feed(chunk)`` returns the bytes to pass on.

    ``drop_usage_chunk``: tether added ``stream_options.include_usage`` to a chat request
    that did not ask for it, so the usage-only final chunk is removed from what the caller
    sees (then the tee passes whole events, never a partial one). ``whole_events``: pass
    whole events only, also without dropping any (the tail of an unfinished event waits
    for its end), so that an error event appended later is always well formed. When
    capturing, :attr:`chunks` keeps the events passed on (``{"event", "data"}``, the data
    as JSON when it is), which a resumed run replays.
    """

    def __init__(self, kind: Kind, operation: Operation, *, capture: bool, drop_usage_chunk: bool = False,
                 whole_events: bool = False, clock: Any = time.perf_counter) -> None:
        self.kind = kind
        self.operation = operation
        self.capture = capture
        self.drop_usage_chunk = drop_usage_chunk
        self.whole_events = whole_events or drop_usage_chunk
        self.clock = clock
        self.parser = SSEParser()
        self.started_at: float | None = None
        """When the caller got the stream (its first chunk already read)."""
        self.first_token_at: float | None = None
        self.bytes = 0
        self.events = 0
        self.malformed: str | None = None
        self.error: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self._usage: dict[str, Any] = {}
        self._final: dict[str, Any] | None = None  # Responses: the whole response object
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._blocks: dict[int, _Block] = {}
        self.chunks: list[dict[str, Any]] = []
        self._watched = True
        self._finite = _Finite()
        self._scan = _scan_once
        if capture:
            decoder = json.JSONDecoder(parse_float=self._finite.number, parse_constant=self._finite.constant)
            self._scan = decoder.scan_once  # type: ignore[attr-defined]
        self._doc: Any = None
        self.done = False
        """The stream said it is complete ([DONE], ``message_stop``, ``response.completed``)."""

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        self.bytes += len(chunk)
        events = self.parser.feed(chunk)
        if not self.whole_events:
            for _, name, data in events:
                if self._event(name, data) and self.capture:
                    self._keep(name, data)
            return chunk
        kept: list[bytes] = []
        for raw, name, data in events:
            if self._event(name, data):
                kept.append(raw)
                if self.capture:
                    self._keep(name, data)
        return b"".join(kept)

    def _keep(self, name: str | None, data: str) -> None:
        if data or name:
            self.chunks.append({"event": name, "data": self._doc if self._doc is not None else data})
        self._doc = None

    def _event(self, name: str | None, data: str) -> bool:
        """Take one event in; False to leave it out of what the caller sees."""
        self._doc = None
        if not data:
            return True
        if data == "[DONE]":
            self.done = True
            return True
        self.events += 1
        try:
            doc, watched = _loads(data, self._scan)
            self._doc = doc
            if not watched:
                self._watched = False
        except ValueError as exc:
            self.malformed = self.malformed or f"event {self.events} is not JSON: {exc}"
            return True
        if not isinstance(doc, dict):
            return True
        if self.kind == "anthropic":
            self._anthropic(doc)
            return True
        if self.kind == "gemini":
            self._gemini(doc)
            return True
        if self.operation == "responses":
            self._responses(name or str(doc.get("type", "")), doc)
            return True
        return self._chat(doc)

    def _token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = self.clock()

    def _chat(self, doc: dict[str, Any]) -> bool:
        error = doc.get("error")
        if isinstance(error, dict):
            self.error = error
            return True
        choices = doc.get("choices")
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
            if self.drop_usage_chunk and not choices:
                return False
        if not self._head:
            self._head = {k: doc.get(k) for k in ("id", "created", "model", "system_fingerprint", "service_tier")}
        for choice in choices or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            finish = choice.get("finish_reason")
            if finish:
                self.finish_reason = finish
            if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
                self._token()
            if self.capture:
                self._chat_delta(int(choice.get("index") or 0), delta, finish)
        return True

    def _chat_delta(self, index: int, delta: dict[str, Any], finish: str | None) -> None:
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = {"role": "assistant", "content": [], "refusal": [], "tools": {},
                                            "finish_reason": None}
        role = delta.get("role")
        if role:
            state["role"] = role
        content = delta.get("content")
        if isinstance(content, str):
            state["content"].append(content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            state["refusal"].append(refusal)
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            slot = state["tools"].setdefault(int(call.get("index") or 0), {"id": None, "type": "function",
                                                                          "name": "", "arguments": []})
            if call.get("id"):
                slot["id"] = call["id"]
            function = call.get("function") or {}
            if function.get("name"):
                slot["name"] += function["name"]
            if isinstance(function.get("arguments"), str):
                slot["arguments"].append(function["arguments"])
        if finish:
            state["finish_reason"] = finish

    def _responses(self, name: str, doc: dict[str, Any]) -> None:
        if name.endswith(".delta") and ("output_text" in name or "arguments" in name or "refusal" in name):
            self._token()
        elif name in ("response.completed", "response.incomplete", "response.failed"):
            self.done = True
            response = doc.get("response")
            if isinstance(response, dict):
                self._final = response
                self._usage = response.get("usage") or {}
                self.finish_reason = response.get("status")
                if name == "response.failed":
                    self.error = response.get("error") or {"message": "response.failed"}
        elif name == "error":
            self.error = doc

    def _anthropic(self, doc: dict[str, Any]) -> None:
        kind = doc.get("type")
        if kind == "message_start":
            message = doc.get("message") or {}
            self._head = {k: v for k, v in message.items() if k not in ("content", "usage")}
            self._usage = dict(message.get("usage") or {})
        elif kind == "content_block_start":
            block = doc.get("content_block") or {}
            if self.capture:
                self._blocks[int(doc.get("index") or 0)] = _Block(str(block.get("type")), dict(block))
        elif kind == "content_block_delta":
            self._token()
            if self.capture:
                delta = doc.get("delta") or {}
                block = self._blocks.get(int(doc.get("index") or 0))
                if block is not None:
                    for key in ("text", "partial_json", "thinking"):
                        if isinstance(delta.get(key), str):
                            block.parts.append(delta[key])
                    if isinstance(delta.get("signature"), str):
                        block.start["signature"] = delta["signature"]
        elif kind == "message_delta":
            delta = doc.get("delta") or {}
            if delta.get("stop_reason"):
                self.finish_reason = delta["stop_reason"]
                self._head["stop_reason"] = delta["stop_reason"]
                self._head["stop_sequence"] = delta.get("stop_sequence")
            self._usage.update({k: v for k, v in (doc.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.error = doc.get("error") or doc

    def _gemini(self, doc: dict[str, Any]) -> None:
        """One ``GenerateContentResponse`` chunk: parts of the answer, usage so far (the last wins)."""
        if isinstance(doc.get("error"), dict):
            self.error = doc["error"]
            return
        if isinstance(doc.get("usageMetadata"), dict):
            self._usage = doc["usageMetadata"]
        if not self._head:
            self._head = {k: doc[k] for k in ("modelVersion", "responseId") if k in doc}
        for candidate in doc.get("candidates") or ():
            if not isinstance(candidate, dict):
                continue
            parts = (candidate.get("content") or {}).get("parts") or []
            if parts:
                self._token()
            if candidate.get("finishReason"):
                self.finish_reason = candidate["finishReason"]
                self.done = True
            if self.capture:
                state = self._choices.setdefault(int(candidate.get("index") or 0), {"parts": [], "rest": {}})
                state["parts"].extend(p for p in parts if isinstance(p, dict))
                state["rest"].update({k: v for k, v in candidate.items() if k not in ("content", "index")})

    # -- results -----------------------------------------------------------------------------

    @property
    def plain(self) -> bool:
        """:attr:`chunks` are plain JSON (what ``tether.schemas.plain_json`` says of them), known
        without walking them: every event's JSON was read by the decoder that watches its numbers."""
        return self.capture and self._watched and self._finite.ok

    @property
    def usage(self) -> Usage:
        key = "usageMetadata" if self.kind == "gemini" else "usage"
        return usage_of(self.kind, self.operation, {key: self._usage})[0]

    @property
    def usage_seen(self) -> bool:
        return bool(self._usage)

    def recorded_chunks(self, redact: Callable[[Any], Any], answer: Any,
                        redacted_answer: Any) -> list[dict[str, Any]] | None:
        """:attr:`chunks` as they are recorded for replay: each event redacted by ``redact`` (a
        :class:`~tether.Redactor`), or ``None`` when they would still spell out a secret the provider split
        across events (``"sk-proj-AAAA"`` in one, the rest of the key in the next: neither matches alone).
        ``answer`` is :meth:`response`, ``redacted_answer`` the same redacted: only when redacting it changed
        something are the pieces of each field, joined in order, looked at again (the usual answer costs one
        comparison). A streamed call recorded without its events is not replayed: a resumed run asks again."""
        chunks: list[dict[str, Any]] = redact(self.chunks)
        if redacted_answer == answer:
            return chunks
        text = getattr(redact, "text", None)
        if text is None or not spells_out(chunks, text):
            return chunks
        return None

    def response(self) -> dict[str, Any] | None:
        """The answer as the non-streaming API would have returned it (capture only)."""
        if not self.capture:
            return None
        if self.operation == "responses":
            return self._final
        if self.kind == "gemini":
            candidates = [{"content": {"role": "model", "parts": _merged(state["parts"])}, **state["rest"], "index": i}
                          for i, state in sorted(self._choices.items())]
            return {"candidates": candidates, **({"usageMetadata": self._usage} if self._usage else {}), **self._head}
        if self.kind == "anthropic":
            content = []
            for _, block in sorted(self._blocks.items()):
                item = dict(block.start)
                text = "".join(block.parts)
                if block.kind == "tool_use":
                    try:
                        item["input"] = json.loads(text) if text else item.get("input", {})
                    except ValueError:
                        item["input"] = {"_partial_json": text}
                elif block.kind == "thinking":
                    item["thinking"] = item.get("thinking", "") + text
                elif block.kind == "text":
                    item["text"] = item.get("text", "") + text
                content.append(item)
            return {**self._head, "content": content, "usage": self._usage}
        choices = []
        for index, state in sorted(self._choices.items()):
            message: dict[str, Any] = {"role": state["role"],
                                       "content": "".join(state["content"]) if state["content"] else None}
            if state["refusal"]:
                message["refusal"] = "".join(state["refusal"])
            if state["tools"]:
                message["tool_calls"] = [
                    {"id": slot["id"], "type": slot["type"],
                     "function": {"name": slot["name"], "arguments": "".join(slot["arguments"])}}
                    for _, slot in sorted(state["tools"].items())]
            choices.append({"index": index, "message": message, "finish_reason": state["finish_reason"]})
        out = {**self._head, "object": "chat.completion", "choices": choices}
        if self._usage:
            out["usage"] = self._usage
        return out


def _merged(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streamed Gemini parts as one answer's: runs of text (or of thought text) joined."""
    out: list[dict[str, Any]] = []
    for part in parts:
        last = out[-1] if out else None
        if (last is not None and set(part) <= {"text", "thought"} and set(last) <= {"text", "thought"}
                and isinstance(part.get("text"), str) and isinstance(last.get("text"), str)
                and part.get("thought") == last.get("thought")):
            out[-1] = {**last, "text": last["text"] + part["text"]}
        else:
            out.append(dict(part))
    return out


def spells_out(chunks: list[dict[str, Any]], text: Callable[[str], str]) -> bool:
    """Whether a stream's events (redacted one by one) spell out something ``text`` redacts once the
    pieces of each field (the same event name and path: a chat choice's ``delta.content``, a
    Responses ``delta``, an Anthropic block's ``delta.text``) are joined in the order they came."""
    fields: dict[tuple[Any, ...], list[str]] = {}

    def walk(value: Any, path: tuple[Any, ...]) -> None:
        if isinstance(value, str):
            fields.setdefault(path, []).append(value)
        elif isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, (*path, key))
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                walk(inner, (*path, index))

    for chunk in chunks:
        walk(chunk.get("data"), (chunk.get("event"),))
    for parts in fields.values():
        if len(parts) > 1:
            joined = "".join(parts)
            if text(joined) != joined:
                return True
    return False
