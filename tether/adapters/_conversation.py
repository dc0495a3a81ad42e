"""A run's conversation, message by message, read back from its events.

Every LLM call's ``llm.call.requested`` holds the request (the messages sent, when
capturing; Gemini's ``contents``) and its ``llm.call.completed`` the answer (streamed answers are rebuilt into
one message by the tee). Agents resend the whole conversation on every call, so the
conversation is: each call's messages that are new since the previous call (by role,
text and tool-call ids), then its answer; tool calls recorded by ``@tether.tool`` come in
between as ``role: "tool"`` entries. Pure: events in, messages out, in log order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tether.schemas import (
    Event,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
)

__all__ = ["conversation"]


def conversation(events: Iterable[Event]) -> list[dict[str, Any]]:
    """The messages of a run, from its events in log order (use ``collect`` or a replay).

    Each entry is the message as its API writes it (``role``, ``content``, ``tool_calls``...)
    plus ``call_id`` (the call that sent or answered it) and ``source``: ``"request"``,
    ``"response"`` or ``"tool"``.
    """
    requests: dict[str, LlmCallRequested] = {}
    tools: dict[str, ToolCallRequested] = {}
    seen: list[tuple[Any, ...]] = []
    out: list[dict[str, Any]] = []
    for event in events:
        data = event.data
        if isinstance(data, LlmCallRequested):
            requests[data.call_id] = data
        elif isinstance(data, ToolCallRequested):
            tools[data.call_id] = data
        elif isinstance(data, LlmCallCompleted | LlmCallFailed):
            asked = requests.pop(data.call_id, None)
            if asked is None or asked.operation == "embeddings":
                continue
            sent = _request_messages(asked.operation, asked.request)
            keys = [_key(m) for m in sent]
            common = 0
            while common < min(len(keys), len(seen)) and keys[common] == seen[common]:
                common += 1
            for message in sent[common:]:
                out.append({**message, "call_id": data.call_id, "source": "request"})
            answer = _answer_messages(asked.operation, data.response) if isinstance(data, LlmCallCompleted) else []
            for message in answer:
                out.append({**message, "call_id": data.call_id, "source": "response"})
            seen = keys + [_key(m) for m in answer]
        elif isinstance(data, ToolCallCompleted | ToolCallFailed):
            tool = tools.pop(data.call_id, None)
            entry: dict[str, Any] = {"role": "tool", "name": data.tool, "call_id": data.call_id, "source": "tool",
                                     "arguments": tool.arguments if tool else None}
            if isinstance(data, ToolCallCompleted):
                entry["content"] = data.result
            else:
                entry["error"] = data.error.model_dump(mode="json")
            out.append(entry)
    return out


def _request_messages(operation: str, request: Any) -> list[dict[str, Any]]:
    if not isinstance(request, dict):
        return []
    messages: list[dict[str, Any]] = []
    if operation == "generate_content":  # Gemini: contents, and the system instruction beside them
        system = request.get("systemInstruction") or request.get("system_instruction")
        if isinstance(system, dict) and system.get("parts"):
            messages.append({"role": "system", "parts": system["parts"]})
        return messages + [m for m in request.get("contents") or () if isinstance(m, dict)]
    if operation == "messages":
        system = request.get("system")
        if system:
            messages.append({"role": "system", "content": system})
    if operation == "responses":
        if request.get("instructions"):
            messages.append({"role": "system", "content": request["instructions"]})
        given = request.get("input")
        if isinstance(given, str):
            messages.append({"role": "user", "content": given})
        elif isinstance(given, list):
            messages += [m if isinstance(m, dict) else {"role": "user", "content": m} for m in given]
        return messages
    for message in request.get("messages") or ():
        if isinstance(message, dict):
            messages.append(message)
    return messages


def _answer_messages(operation: str, response: Any) -> list[dict[str, Any]]:
    if not isinstance(response, dict):
        return []
    if operation == "responses":
        return [{"role": "assistant", **item} if item.get("type") == "message" else dict(item)
                for item in response.get("output") or () if isinstance(item, dict)]
    if operation == "messages":
        return [{"role": response.get("role", "assistant"), "content": response.get("content")}]
    if operation == "generate_content":
        candidates = response.get("candidates") or ()
        content = candidates[0].get("content") if candidates and isinstance(candidates[0], dict) else None
        return [dict(content)] if isinstance(content, dict) else []
    choices = response.get("choices") or ()
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    return [dict(message)] if isinstance(message, dict) else []


def _key(message: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two renderings of one message the same message."""
    calls = tuple(sorted(str(c.get("id")) for c in message.get("tool_calls") or () if isinstance(c, dict)))
    return (message.get("role") or message.get("type"), _text(message.get("content", message.get("parts"))), calls,
            message.get("tool_call_id") or message.get("call_id"))


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                text = block.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif block.get("type") in ("tool_use", "tool_result", "function_call"):
                    parts.append(json.dumps({k: block.get(k) for k in ("id", "tool_use_id", "call_id")},
                                            sort_keys=True))
                elif "functionCall" in block or "functionResponse" in block:  # Gemini's parts
                    parts.append(json.dumps(block, sort_keys=True, default=str))
            elif isinstance(block, str):
                parts.append(block)
        return "".join(parts)
    return json.dumps(content, sort_keys=True, default=str)
