"""Tool calls as the conversation shows them: asked for in an answer, answered in a later request.

The wire formats the gateway serves, as bodies (a streamed answer is read in its rebuilt,
non-streaming form): chat completions (``tool_calls`` / ``role: "tool"``), the Responses API
(``function_call`` / ``function_call_output``), Anthropic messages (``tool_use`` /
``tool_result``) and Gemini (``functionCall`` / ``functionResponse`` parts). Gemini's calls often
have no id: such a call is named by its function and its place among the conversation's calls of
that function (:func:`positional`), and a result without an id answers the call of its function
in the model turn before it, in order. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .._wire import Kind

__all__ = ["ToolResult", "ToolUse", "calls_before", "positional", "says_error", "tool_results", "tool_uses"]

_PLACE = "#"


@dataclass(frozen=True, slots=True)
class ToolUse:
    """A tool call the model asked for."""

    id: str
    name: str
    arguments: Any


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The agent's answer to one tool call, as its next request carries it."""

    id: str
    result: Any
    error: bool


def positional(call_id: str) -> bool:
    """Whether ``call_id`` was made by the gateway (``#<n>:<function>``), the model having given none."""
    return call_id.startswith(_PLACE)


def calls_before(kind: Kind, request: Any) -> dict[str, int]:
    """How many calls of each function a Gemini request's conversation holds (the places of the
    answer's calls follow them); empty for the other formats, whose calls have ids."""
    counts: dict[str, int] = {}
    if kind == "gemini" and isinstance(request, dict):
        for content in _dicts(request.get("contents")):
            for call in _gemini_calls(content):
                name = _name(call)
                counts[name] = counts.get(name, 0) + 1
    return counts


def tool_uses(kind: Kind, operation: str, response: Any, before: dict[str, int] | None = None) -> list[ToolUse]:
    """The tool calls an answer asks for (parallel calls in their order); ``before``: Gemini's
    :func:`calls_before` of the request it answers."""
    if kind == "gemini":
        return _gemini_uses(response, before or {})
    if not isinstance(response, dict):
        return []
    out: list[ToolUse] = []
    if kind == "anthropic":
        for block in _dicts(response.get("content")):
            if block.get("type") == "tool_use" and _id(block.get("id")):
                out.append(ToolUse(block["id"], str(block.get("name") or "tool"), block.get("input")))
    elif operation == "responses":
        for item in _dicts(response.get("output")):
            if item.get("type") == "function_call" and _id(item.get("call_id")):
                out.append(ToolUse(item["call_id"], str(item.get("name") or "tool"), _json(item.get("arguments"))))
    elif operation == "chat":
        for choice in _dicts(response.get("choices")):
            message = choice.get("message")
            for call in _dicts(message.get("tool_calls") if isinstance(message, dict) else None):
                function = call["function"] if isinstance(call.get("function"), dict) else {}
                if _id(call.get("id")):
                    out.append(ToolUse(call["id"], str(function.get("name") or "tool"),
                                       _json(function.get("arguments"))))
    return out


def tool_results(kind: Kind, operation: str, request: Any) -> list[ToolResult]:
    """The tool results a request carries (every one of its history: stateless agents resend them)."""
    if not isinstance(request, dict):
        return []
    if kind == "gemini":
        return _gemini_results(request)
    out: list[ToolResult] = []
    if kind == "anthropic":
        for message in _dicts(request.get("messages")):
            for block in _dicts(message.get("content")):
                if block.get("type") == "tool_result" and _id(block.get("tool_use_id")):
                    content = block.get("content")
                    out.append(ToolResult(block["tool_use_id"], content,
                                          block.get("is_error") is True or says_error(content)))
    elif operation == "responses":
        for item in _dicts(request.get("input")):
            if item.get("type") == "function_call_output" and _id(item.get("call_id")):
                output = item.get("output")
                out.append(ToolResult(item["call_id"], output, says_error(output)))
    elif operation == "chat":
        for message in _dicts(request.get("messages")):
            if message.get("role") == "tool" and _id(message.get("tool_call_id")):
                content = message.get("content")
                out.append(ToolResult(message["tool_call_id"], content, says_error(content)))
    return out


def says_error(result: Any) -> bool:
    """Whether a tool's result reads as an error: a JSON object with a set ``error``, ``status``
    ``"error"``/``"failed"`` or ``isError``/``is_error`` true (MCP's), or text that starts with
    ``Error``. A result with no such mark is a success: the gateway cannot know better."""
    if isinstance(result, list):  # content parts: text blocks
        texts = [p["text"] for p in result if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return bool(texts) and says_error("".join(texts))
    if isinstance(result, str):
        text = result.strip()
        if text[:1] in ("{", "["):
            try:
                return says_error(json.loads(text)) if text[:1] == "{" else False
            except ValueError:
                return False
        return text[:5].lower() == "error" and (len(text) == 5 or not text[5].isalpha())
    if isinstance(result, dict):
        if result.get("isError") is True or result.get("is_error") is True:
            return True
        status = result.get("status")
        if isinstance(status, str) and status.lower() in ("error", "failed", "failure"):
            return True
        return result.get("error") not in (None, False, "", {}, [])
    return False


def _gemini_uses(response: Any, before: dict[str, int]) -> list[ToolUse]:
    """The calls of the first candidate (the answer SDKs act on); a JSON array of chunks
    (``streamGenerateContent`` without ``alt=sse``) adds up its chunks' parts."""
    chunks = response if isinstance(response, list) else [response]
    seen = dict(before)
    out: list[ToolUse] = []
    for chunk in _dicts(chunks):
        candidates = _dicts(chunk.get("candidates"))
        first = next((c for c in candidates if c.get("index") in (None, 0)), None)
        content = first.get("content") if first is not None else None
        for call in _gemini_calls(content if isinstance(content, dict) else {}):
            name = _name(call)
            seen[name] = seen.get(name, 0) + 1
            out.append(ToolUse(_gemini_id(call, name, seen[name]), name, call.get("args")))
    return out


def _gemini_results(request: dict[str, Any]) -> list[ToolResult]:
    """Every ``functionResponse`` of the conversation, each with the id of the call it answers: its
    own, else the next unanswered call of its function in the model turn before it."""
    counts: dict[str, int] = {}
    turn: dict[str, list[str]] = {}
    out: list[ToolResult] = []
    for content in _dicts(request.get("contents")):
        calls = _gemini_calls(content)
        if calls:
            turn = {}
            for call in calls:
                name = _name(call)
                counts[name] = counts.get(name, 0) + 1
                turn.setdefault(name, []).append(_gemini_id(call, name, counts[name]))
        for part in _dicts(content.get("parts")):
            answer = part.get("functionResponse")
            if not isinstance(answer, dict):
                continue
            waiting = turn.get(_name(answer), [])
            if _id(answer.get("id")):
                call_id = answer["id"]
                if call_id in waiting:
                    waiting.remove(call_id)
            elif waiting:
                call_id = waiting.pop(0)
            else:
                continue  # no call of its function to answer: nothing to pair it with
            result = answer.get("response")
            out.append(ToolResult(call_id, result, says_error(result)))
    return out


def _gemini_calls(content: dict[str, Any]) -> list[dict[str, Any]]:
    return [p["functionCall"] for p in _dicts(content.get("parts")) if isinstance(p.get("functionCall"), dict)]


def _gemini_id(call: dict[str, Any], name: str, place: int) -> str:
    return call["id"] if _id(call.get("id")) else f"{_PLACE}{place}:{name}"


def _name(part: dict[str, Any]) -> str:
    return str(part.get("name") or "tool")


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 1024


def _json(arguments: Any) -> Any:
    """Arguments as the model wrote them: JSON text is read, anything else kept as it is."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments
