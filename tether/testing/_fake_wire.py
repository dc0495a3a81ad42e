"""What the fake provider says, byte for byte: OpenAI chat completions, Responses, embeddings and
models, Anthropic messages, Gemini's generateContent, and each API's error bodies and rate-limit headers.

Pure functions from a parsed request to a JSON body or a list of server-sent events. Replies are
deterministic: they depend on the seed, the model and the request, never on a clock or a global
RNG (ids and timestamps come in through ``Turn``); two models answer the same prompt differently.

Usage is estimated as providers count it, roughly: input tokens are the request's text length
/ 4 plus 4 per message and 3 per request; output tokens are the pieces of the reply (a word, or
four characters of tool-call arguments), one per streamed delta.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._fake_agents import agent_text

__all__ = [
    "Invalid",
    "Reply",
    "Turn",
    "anthropic_error",
    "anthropic_message",
    "anthropic_models",
    "chat_completion",
    "embeddings",
    "gemini_content",
    "gemini_error",
    "openai_error",
    "openai_model",
    "openai_models",
    "reply_text",
    "responses",
    "retry_headers",
]

DEFAULT_DIMENSIONS = 256
_MODEL_CREATED = 1_700_000_000
_FILLER = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "fake",
           "model", "writes", "plausible", "words", "so", "that", "streams", "have", "a", "realistic",
           "number", "of", "chunks", "and", "usage", "is", "worth", "counting")
_SKIP_KEYS = frozenset({"type", "role", "id", "call_id", "tool_call_id", "tool_use_id", "cache_control",
                        "status", "signature"})
_BLOB_KEYS = frozenset({"url", "data", "image_url", "file_data"})


class Invalid(Exception):
    """The request is wrong; answer ``status`` with the API's error body."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


@dataclass(frozen=True, slots=True)
class Turn:
    """Per-request facts the reply depends on, supplied by the server."""

    seed: int
    number: int  # the request's arrival number, for ids
    model: str
    created: int  # unix time
    repeated: bool = False  # the same body was seen before: report cached prompt tokens


@dataclass(frozen=True, slots=True)
class Reply:
    """A generated answer: text pieces, or one tool call whose arguments come in pieces."""

    pieces: tuple[str, ...]
    tool_name: str | None
    input_tokens: int
    cached_tokens: int
    truncated: bool  # stopped by the max-tokens cap

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        return max(1, len(self.pieces))


# --- request reading -----------------------------------------------------------------------

def _chars(value: Any) -> int:
    """Characters of text in a JSON value (strings and object keys), blobs counted flat."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    if isinstance(value, dict):
        total = 0
        for key, item in value.items():
            if key in _SKIP_KEYS:
                continue
            blob = key in _BLOB_KEYS and isinstance(item, str) and len(item) > 4000
            total += 4000 if blob else _chars(item)
        return total
    return 0


def _first_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                return str(part["text"])
    return ""


def _input_tokens(chars: int, messages: int) -> int:
    return (chars + 3) // 4 + 4 * messages + 3


def _cached(turn: Turn, input_tokens: int) -> int:
    # OpenAI caches prompts of 1,024 tokens and more, in steps of 128
    return input_tokens // 128 * 128 if turn.repeated and input_tokens >= 1024 else 0


def _max_tokens(payload: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = payload.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise Invalid(400, f"Invalid '{name}': expected an integer >= 1.", param=name)
            return value
    return None


def reply_text(prompt: str, *, model: str, seed: int) -> str:
    """What the fake answers ``prompt`` (the last user message's text) on ``model`` with
    ``seed``, uncapped: each model answers differently, the same model always the same."""
    return "".join(_text_reply(seed, model, prompt, None)[0])


def _text_reply(seed: int, model: str, prompt: str, cap: int | None) -> tuple[tuple[str, ...], bool]:
    digest = zlib.crc32(f"{model}\x00{prompt}".encode(), seed & 0xFFFFFFFF)
    about = prompt[:200].split()[:8] or ["(nothing)"]
    words = ["This", "is", "fake", "reply", str(digest % 1000), "to:", *about]
    start = digest >> 10
    words += [_FILLER[(start + i) % len(_FILLER)] for i in range(4 + digest % 29)]
    pieces = (words[0], *(" " + w for w in words[1:]))
    if cap is not None and len(pieces) > cap:
        return pieces[:cap], True
    return pieces, False


def _tool_reply(schema: Any, cap: int | None) -> tuple[tuple[str, ...], bool]:
    arguments = json.dumps(_plausible(schema if isinstance(schema, dict) else {}, "value", 0))
    pieces = tuple(arguments[i:i + 4] for i in range(0, len(arguments), 4))
    if cap is not None and len(pieces) > cap:
        return pieces[:cap], True
    return pieces, False


def _plausible(schema: Mapping[str, Any], name: str, depth: int) -> Any:
    """A value that satisfies a JSON schema in the usual simple cases."""
    if "const" in schema:
        return schema["const"]
    if "default" in schema:
        return schema["default"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and isinstance(options[0], dict):
            return _plausible(options[0], name, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        if depth > 4:
            return {}
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        required = schema.get("required")
        keys = properties if not isinstance(required, list) or not required else [
            k for k in required if k in properties]
        return {key: _plausible(properties[key] if isinstance(properties[key], dict) else {}, key, depth + 1)
                for key in keys}
    if kind == "array":
        items = schema.get("items")
        return [_plausible(items, name, depth + 1)] if isinstance(items, dict) and depth <= 4 else []
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, f"fake {name}")


def _choose_tool(tools: list[tuple[str, Any]], choice: Any, wanted: bool, prompt: str = "") -> tuple[str, Any] | None:
    """The tool to call: the named one, else when the user spoke last (and no tool ran since the
    last answer in words: one tool call per user turn) the one the user's words name (the longest
    tool name found in them as a whole word), else the first."""
    if not tools or choice in ("none", {"type": "none"}):
        return None
    named = None
    if isinstance(choice, dict):
        function = choice.get("function")
        named = function.get("name") if isinstance(function, dict) else choice.get("name")
    if isinstance(named, str):
        return next((tool for tool in tools if tool[0] == named), None)
    forced = choice in ("required", "any") or (isinstance(choice, dict) and choice.get("type") == "any")
    if not (wanted or forced):
        return None
    mentioned = [t for t in tools if re.search(rf"(?<![\w-]){re.escape(t[0])}(?![\w-])", prompt)]
    return max(mentioned, key=lambda t: len(t[0])) if mentioned else tools[0]


def _tool_ran(conversation: Sequence[Any], result: Any, words: Any) -> bool:
    """A tool result since the model last answered in words: this user turn had its tool call.
    (OpenClaw adds a user message after each tool result: the fake must not call tools forever.)"""
    for item in reversed(conversation):
        if isinstance(item, dict):
            if result(item):
                return True
            if words(item):
                return False
    return False


def _chat_tool_result(message: dict[str, Any]) -> bool:
    return message.get("role") == "tool"


def _chat_words(message: dict[str, Any]) -> bool:
    return message.get("role") == "assistant" and not message.get("tool_calls")


def _responses_tool_result(item: dict[str, Any]) -> bool:
    return item.get("type") == "function_call_output"


def _responses_words(item: dict[str, Any]) -> bool:
    return item.get("role") == "assistant" and item.get("type", "message") == "message"


def _anthropic_tool_result(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return message.get("role") == "user" and isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def _anthropic_words(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return message.get("role") == "assistant" and not (isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_use" for b in content))


def _reply(turn: Turn, tool: tuple[str, Any] | None, prompt: str, input_tokens: int,
           cap: int | None) -> Reply:
    if tool is not None:
        pieces, truncated = _tool_reply(tool[1], cap)
    else:
        pieces, truncated = _text_reply(turn.seed, turn.model, prompt, cap)
    return Reply(pieces, tool[0] if tool else None, input_tokens, _cached(turn, input_tokens), truncated)


def _said(turn: Turn, text: str, input_tokens: int, cap: int | None) -> Reply:
    """A reply of ``text`` (what an agent that calls tools in words is told: ``_fake_agents``), a piece a word."""
    pieces = tuple(re.findall(r"\s*\S+", text)) or ("",)
    truncated = cap is not None and len(pieces) > cap
    return Reply(pieces[:cap] if truncated else pieces, None, input_tokens, _cached(turn, input_tokens), truncated)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _data(document: str) -> bytes:
    return f"data: {document}\n\n".encode()


def _event(name: str, document: str) -> bytes:
    return f"event: {name}\ndata: {document}\n\n".encode()


# --- OpenAI: chat completions --------------------------------------------------------------

def chat_completion(payload: Mapping[str, Any], turn: Turn) -> tuple[bytes | None, list[bytes] | None]:
    """A chat completion: the JSON body, or the SSE events when ``stream`` is true."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise Invalid(400, "'messages' must be a non-empty array of message objects.", param="messages")
    cap = _max_tokens(payload, "max_completion_tokens", "max_tokens")
    tools = [(t["function"].get("name", "tool"), t["function"].get("parameters"))
             for t in payload.get("tools") or ()
             if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    last = messages[-1]
    user_last = last.get("role") == "user" and not _tool_ran(messages, _chat_tool_result, _chat_words)
    prompt = next((_first_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    tool = _choose_tool(tools, payload.get("tool_choice"), user_last, prompt)
    tokens = _input_tokens(_chars(messages) + _chars(payload.get("tools")), len(messages))
    said = None if tools else agent_text(messages, lambda: reply_text(prompt, model=turn.model, seed=turn.seed),
                                         lambda schema: _plausible(schema, "value", 0))
    reply = _reply(turn, tool, prompt, tokens, cap) if said is None else _said(turn, said, tokens, cap)
    rid = f"chatcmpl-fake{turn.seed}x{turn.number}"
    call_id = f"call_fake{turn.seed}x{turn.number}"
    finish = "length" if reply.truncated else "tool_calls" if reply.tool_name else "stop"
    usage = {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }
    if payload.get("stream") is not True:
        message: dict[str, Any] = {"role": "assistant", "content": None if reply.tool_name else reply.text,
                                   "refusal": None, "annotations": []}
        if reply.tool_name:
            message["tool_calls"] = [{"id": call_id, "type": "function",
                                      "function": {"name": reply.tool_name, "arguments": reply.text}}]
        return _dumps({
            "id": rid, "object": "chat.completion", "created": turn.created, "model": turn.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake",
        }).encode(), None

    options = payload.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    head = (f'{{"id":"{rid}","object":"chat.completion.chunk","created":{turn.created},'
            f'"model":{_dumps(turn.model)},"system_fingerprint":"fp_fake","choices":[{{"index":0,"delta":')
    tail = ',"logprobs":null,"finish_reason":null}]' + (',"usage":null}' if include_usage else "}")
    if reply.tool_name:
        call = {"index": 0, "id": call_id, "type": "function",
                "function": {"name": reply.tool_name, "arguments": ""}}
        opening = {"role": "assistant", "content": None, "tool_calls": [call]}
        deltas = [f'{{"tool_calls":[{{"index":0,"function":{{"arguments":{_dumps(p)}}}}}]}}'
                  for p in reply.pieces]
    else:
        opening = {"role": "assistant", "content": "", "refusal": None}
        deltas = [f'{{"content":{_dumps(p)}}}' for p in reply.pieces]
    events = [_data(head + _dumps(opening) + tail)]
    events += [_data(head + delta + tail) for delta in deltas]
    events.append(_data(head + "{}" + tail.replace('"finish_reason":null', f'"finish_reason":"{finish}"')))
    if include_usage:
        events.append(_data(_dumps({
            "id": rid, "object": "chat.completion.chunk", "created": turn.created, "model": turn.model,
            "system_fingerprint": "fp_fake", "choices": [], "usage": usage})))
    events.append(b"data: [DONE]\n\n")
    return None, events


# --- OpenAI: Responses ---------------------------------------------------------------------

def responses(payload: Mapping[str, Any], turn: Turn) -> tuple[bytes | None, list[bytes] | None]:
    """A Responses API response, or its SSE events when ``stream`` is true."""
    given = payload.get("input")
    if isinstance(given, str):
        items: list[Any] = [{"role": "user", "content": given}]
    elif isinstance(given, list) and given:
        items = given
    else:
        raise Invalid(400, "'input' must be a string or a non-empty array.", param="input")
    cap = _max_tokens(payload, "max_output_tokens")
    tools = [(t.get("name", "tool"), t.get("parameters")) for t in payload.get("tools") or ()
             if isinstance(t, dict) and t.get("type") == "function"]
    last = items[-1] if isinstance(items[-1], dict) else {}
    user_last = (last.get("role") == "user" and last.get("type", "message") == "message"
                 and not _tool_ran(items, _responses_tool_result, _responses_words))
    prompt = next((_first_text(i.get("content")) for i in reversed(items)
                   if isinstance(i, dict) and i.get("role") == "user"), "")
    tool = _choose_tool(tools, payload.get("tool_choice"), user_last, prompt)
    messages = sum(1 for i in items if isinstance(i, dict)) + (1 if payload.get("instructions") else 0)
    tokens = _input_tokens(_chars(items) + _chars(payload.get("instructions")) + _chars(payload.get("tools")),
                           messages)
    reply = _reply(turn, tool, prompt, tokens, cap)
    rid = f"resp_fake{turn.seed}x{turn.number}"
    item_id = f"{'fc' if reply.tool_name else 'msg'}_fake{turn.seed}x{turn.number}"
    status = "incomplete" if reply.truncated else "completed"

    def item(done: bool) -> dict[str, Any]:
        state = "completed" if done else "in_progress"
        if reply.tool_name:
            return {"type": "function_call", "id": item_id, "call_id": f"call_fake{turn.seed}x{turn.number}",
                    "name": reply.tool_name, "arguments": reply.text if done else "", "status": state}
        return {"type": "message", "id": item_id, "status": state, "role": "assistant",
                "content": [_output_text(reply.text)] if done else []}

    def response(done: bool) -> dict[str, Any]:
        return {
            "id": rid, "object": "response", "created_at": turn.created,
            "status": status if done else "in_progress", "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if done and reply.truncated else None,
            "instructions": payload.get("instructions"), "max_output_tokens": cap, "model": turn.model,
            "output": [item(True)] if done else [], "parallel_tool_calls": True,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
            "store": False, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": payload.get("tool_choice", "auto"), "tools": payload.get("tools") or [],
            "top_p": 1.0, "truncation": "disabled", "metadata": {},
            "usage": {
                "input_tokens": reply.input_tokens,
                "input_tokens_details": {"cached_tokens": reply.cached_tokens},
                "output_tokens": reply.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": reply.input_tokens + reply.output_tokens,
            } if done else None,
        }

    if payload.get("stream") is not True:
        return _dumps(response(True)).encode(), None

    events: list[bytes] = []

    def emit(name: str, body: dict[str, Any]) -> None:
        events.append(_event(name, _dumps({"type": name, "sequence_number": len(events), **body})))

    emit("response.created", {"response": response(False)})
    emit("response.in_progress", {"response": response(False)})
    emit("response.output_item.added", {"output_index": 0, "item": item(False)})
    where = f'"item_id":"{item_id}","output_index":0'
    if reply.tool_name:
        for piece in reply.pieces:
            events.append(_event("response.function_call_arguments.delta", (
                f'{{"type":"response.function_call_arguments.delta","sequence_number":{len(events)},'
                f'{where},"delta":{_dumps(piece)}}}')))
        emit("response.function_call_arguments.done",
             {"item_id": item_id, "output_index": 0, "name": reply.tool_name, "arguments": reply.text})
    else:
        part = {"item_id": item_id, "output_index": 0, "content_index": 0}
        emit("response.content_part.added", {**part, "part": _output_text("")})
        for piece in reply.pieces:
            events.append(_event("response.output_text.delta", (
                f'{{"type":"response.output_text.delta","sequence_number":{len(events)},'
                f'{where},"content_index":0,"delta":{_dumps(piece)},"logprobs":[]}}')))
        emit("response.output_text.done", {**part, "text": reply.text, "logprobs": []})
        emit("response.content_part.done", {**part, "part": _output_text(reply.text)})
    emit("response.output_item.done", {"output_index": 0, "item": item(True)})
    emit("response.incomplete" if reply.truncated else "response.completed", {"response": response(True)})
    return None, events


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


# --- OpenAI: embeddings and models ---------------------------------------------------------

def embeddings(payload: Mapping[str, Any], turn: Turn) -> bytes:
    """Unit-length vectors seeded from the seed, the model and the text.

    A vector of N dimensions is the renormalised prefix of a longer one, as with OpenAI's
    shortened ``text-embedding-3`` vectors.
    """
    given = payload.get("input")
    if isinstance(given, str):
        texts = [given]
    elif isinstance(given, list) and given and all(isinstance(i, int) for i in given):
        texts = [" ".join(map(str, given))]
    elif isinstance(given, list) and given:
        texts = [i if isinstance(i, str) else " ".join(map(str, i)) if isinstance(i, list) else ""
                 for i in given]
    else:
        raise Invalid(400, "'input' must be a non-empty string or array.", param="input")
    if any(not text for text in texts):
        raise Invalid(400, "'input' cannot contain empty strings.", param="input")
    dimensions = payload.get("dimensions", DEFAULT_DIMENSIONS)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= 16384:
        raise Invalid(400, "'dimensions' must be an integer from 1 to 16384.", param="dimensions")
    as_base64 = payload.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(texts):
        vector = _vector(f"{turn.seed}\x00{turn.model}\x00{text}", dimensions)
        encoded: Any = (base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
                        if as_base64 else vector)
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum((len(text) + 3) // 4 for text in texts)
    return _dumps({"object": "list", "data": data, "model": turn.model,
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).encode()


def _vector(key: str, dimensions: int) -> list[float]:
    raw = struct.unpack(f"<{dimensions}H", hashlib.shake_256(key.encode()).digest(2 * dimensions))
    centred = [x - 32767.5 for x in raw]
    norm = math.sqrt(math.fsum(x * x for x in centred)) or 1.0
    return [x / norm for x in centred]


def openai_model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _MODEL_CREATED, "owned_by": "tether-fake"}


def openai_models(names: Sequence[str]) -> bytes:
    return _dumps({"object": "list", "data": [openai_model(n) for n in names]}).encode()


def anthropic_models(names: Sequence[str]) -> bytes:
    data = [{"type": "model", "id": n, "display_name": n, "created_at": "2023-11-14T22:13:20Z"}
            for n in names]
    return _dumps({"data": data, "has_more": False, "first_id": names[0] if names else None,
                   "last_id": names[-1] if names else None}).encode()


# --- Anthropic: messages -------------------------------------------------------------------

def anthropic_message(payload: Mapping[str, Any], turn: Turn) -> tuple[bytes | None, list[bytes] | None]:
    """An Anthropic message, or its SSE events when ``stream`` is true."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise Invalid(400, "messages: Field required" if messages is None else "messages: Input should be a "
                      "non-empty list of messages")
    if payload.get("max_tokens") is None:
        raise Invalid(400, "max_tokens: Field required")
    cap = _max_tokens(payload, "max_tokens")
    tools = [(t.get("name", "tool"), t.get("input_schema")) for t in payload.get("tools") or ()
             if isinstance(t, dict) and "input_schema" in t]
    last = messages[-1]
    content = last.get("content")
    answered = isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result"
                                                 for b in content)
    wanted = last.get("role") == "user" and not answered and not _tool_ran(messages, _anthropic_tool_result,
                                                                         _anthropic_words)
    prompt = next((_first_text(m.get("content")) for m in reversed(messages)
                   if m.get("role") == "user" and _first_text(m.get("content"))), "")
    tool = _choose_tool(tools, payload.get("tool_choice"), wanted, prompt)
    tokens = _input_tokens(_chars(messages) + _chars(payload.get("system")) + _chars(payload.get("tools")),
                           len(messages))
    reply = _reply(turn, tool, prompt, tokens, cap)
    mid = f"msg_fake{turn.seed}x{turn.number}"
    tool_id = f"toolu_fake{turn.seed}x{turn.number}"
    stop = "max_tokens" if reply.truncated else "tool_use" if reply.tool_name else "end_turn"
    usage = {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    if payload.get("stream") is not True:
        block: dict[str, Any] = {"type": "text", "text": reply.text}
        if reply.tool_name:
            try:
                arguments = json.loads(reply.text)
            except ValueError:  # cut short by max_tokens
                arguments = {}
            block = {"type": "tool_use", "id": tool_id, "name": reply.tool_name, "input": arguments}
        return _dumps({"id": mid, "type": "message", "role": "assistant", "model": turn.model,
                       "content": [block], "stop_reason": stop, "stop_sequence": None,
                       "usage": usage}).encode(), None

    start: dict[str, Any] = {"id": mid, "type": "message", "role": "assistant", "model": turn.model,
                             "content": [], "stop_reason": None, "stop_sequence": None,
                             "usage": {**usage, "output_tokens": 1}}
    if reply.tool_name:
        opening: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": reply.tool_name, "input": {}}
        deltas = [f'{{"type":"input_json_delta","partial_json":{_dumps(p)}}}' for p in reply.pieces]
    else:
        opening = {"type": "text", "text": ""}
        deltas = [f'{{"type":"text_delta","text":{_dumps(p)}}}' for p in reply.pieces]
    events = [
        _event("message_start", _dumps({"type": "message_start", "message": start})),
        _event("content_block_start",
               _dumps({"type": "content_block_start", "index": 0, "content_block": opening})),
        _event("ping", '{"type":"ping"}'),
    ]
    events += [_event("content_block_delta", f'{{"type":"content_block_delta","index":0,"delta":{d}}}')
               for d in deltas]
    events += [
        _event("content_block_stop", '{"type":"content_block_stop","index":0}'),
        _event("message_delta", _dumps({"type": "message_delta",
                                        "delta": {"stop_reason": stop, "stop_sequence": None},
                                        "usage": {"output_tokens": reply.output_tokens}})),
        _event("message_stop", '{"type":"message_stop"}'),
    ]
    return None, events


# --- errors --------------------------------------------------------------------------------

_OPENAI_MESSAGES = {
    400: "Invalid request (injected by the fake provider).",
    401: "Incorrect API key provided.",
    403: "You are not allowed to use this model.",
    404: "The requested resource does not exist.",
    408: "Request timed out.",
    409: "The request conflicted with another request.",
    422: "The request could not be processed.",
    429: "Rate limit reached for requests. Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
    504: "Gateway timeout.",
}

_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}


def openai_error(status: int, message: str | None = None, *, code: str | None = None,
                 param: str | None = None) -> bytes:
    kind = ("requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error")
    if status == 429 and code is None:
        code = "rate_limit_exceeded"
    text = message or _OPENAI_MESSAGES.get(status, f"Error {status} (injected by the fake provider).")
    return _dumps({"error": {"message": text, "type": kind, "param": param, "code": code}}).encode()


def anthropic_error(status: int, message: str | None = None, *, request_id: str = "") -> bytes:
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    text = message or {"rate_limit_error": "Number of requests has exceeded your rate limit.",
                       "overloaded_error": "Overloaded", "api_error": "Internal server error"}.get(
        kind, f"Error {status} (injected by the fake provider).")
    error = {"type": kind, "message": text}
    return _dumps({"type": "error", "error": error, "request_id": request_id}).encode()


def retry_headers(dialect: str, retry_after: float, now: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds, rounded up), ``retry-after-ms`` and rate-limit headers."""
    headers = {"retry-after": str(max(0, math.ceil(retry_after))),
               "retry-after-ms": str(round(retry_after * 1000))}
    if dialect == "anthropic":
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + retry_after))
        limits = (("requests", 50), ("tokens", 40000), ("input-tokens", 30000), ("output-tokens", 8000))
        for kind, limit in limits:
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = "0" if kind == "requests" else str(limit // 2)
            headers[f"anthropic-ratelimit-{kind}-reset"] = reset
    else:
        wait = f"{retry_after * 1000:g}ms" if retry_after < 1 else f"{retry_after:g}s"
        headers |= {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": wait, "x-ratelimit-limit-tokens": "30000",
                    "x-ratelimit-remaining-tokens": "15000", "x-ratelimit-reset-tokens": wait}
    return headers


# --- Gemini: generateContent ---------------------------------------------------------------

_GEMINI_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                    408: "DEADLINE_EXCEEDED", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                    501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_GEMINI_MESSAGES = {429: "Resource has been exhausted (e.g. check quota).",
                    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                    503: "The model is overloaded. Please try again later."}


def _lower_types(schema: Any) -> Any:
    """A Gemini ``Schema`` (``"type": "OBJECT"``) as the JSON schema ``_plausible`` reads."""
    if isinstance(schema, dict):
        return {k: (v.lower() if k == "type" and isinstance(v, str) else _lower_types(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_lower_types(v) for v in schema]
    return schema


def _gemini_tool_result(content: dict[str, Any]) -> bool:
    return content.get("role", "user") == "user" and any(
        isinstance(p, dict) and "functionResponse" in p for p in content.get("parts") or ())


def _gemini_words(content: dict[str, Any]) -> bool:
    return content.get("role") == "model" and not any(
        isinstance(p, dict) and "functionCall" in p for p in content.get("parts") or ())


def gemini_content(payload: Mapping[str, Any], turn: Turn, *, stream: bool) -> tuple[bytes | None, list[bytes] | None]:
    """A Gemini ``GenerateContentResponse``, or its SSE chunks (``streamGenerateContent?alt=sse``)."""
    contents = payload.get("contents")
    if not isinstance(contents, list) or not contents or not all(isinstance(c, dict) for c in contents):
        raise Invalid(400, "* GenerateContentRequest.contents: contents is not specified", param="contents")
    config = payload.get("generationConfig")
    cap = _max_tokens(config if isinstance(config, dict) else {}, "maxOutputTokens")
    tools = [(d.get("name", "tool"), _lower_types(d.get("parametersJsonSchema") or d.get("parameters_json_schema")
                                                  or d.get("parameters")))  # google-genai sends it snake_case
             for t in payload.get("tools") or () if isinstance(t, dict)
             for d in t.get("functionDeclarations") or () if isinstance(d, dict)]
    calling = ((payload.get("toolConfig") or {}).get("functionCallingConfig") or {})
    mode = str(calling.get("mode") or "AUTO").upper()
    allowed = calling.get("allowedFunctionNames")
    choice: Any = "none" if mode == "NONE" else None
    if mode == "ANY":
        choice = {"name": allowed[0]} if isinstance(allowed, list) and len(allowed) == 1 else "any"
    wanted = contents[-1].get("role", "user") == "user" and not _tool_ran(contents, _gemini_tool_result,
                                                                           _gemini_words)
    prompt = next((str(p["text"]) for c in reversed(contents) if c.get("role", "user") == "user"
                   for p in c.get("parts") or () if isinstance(p, dict) and isinstance(p.get("text"), str)), "")
    tool = _choose_tool(tools, choice, wanted, prompt)
    tokens = _input_tokens(_chars(contents) + _chars(payload.get("systemInstruction")) + _chars(payload.get("tools")),
                           len(contents))
    reply = _reply(turn, tool, prompt, tokens, cap)
    finish = "MAX_TOKENS" if reply.truncated else "STOP"
    rid = f"fake{turn.seed}x{turn.number}"

    def usage(output: int) -> dict[str, Any]:
        out = {"promptTokenCount": reply.input_tokens, "candidatesTokenCount": output,
               "totalTokenCount": reply.input_tokens + output}
        if reply.cached_tokens:
            out["cachedContentTokenCount"] = reply.cached_tokens
        return out

    def chunk(parts: list[dict[str, Any]], output: int, done: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if done:
            candidate["finishReason"] = finish
        return {"candidates": [candidate], "usageMetadata": usage(output), "modelVersion": turn.model,
                "responseId": rid}

    if reply.tool_name:
        try:
            arguments = json.loads(reply.text)
        except ValueError:  # cut short by maxOutputTokens
            arguments = {}
        call = {"functionCall": {"name": reply.tool_name, "args": arguments}}
        if not stream:
            return _dumps(chunk([call], reply.output_tokens, True)).encode(), None
        return None, [_data(_dumps(chunk([call], reply.output_tokens, True)))]
    if not stream:
        return _dumps(chunk([{"text": reply.text}], reply.output_tokens, True)).encode(), None
    last = len(reply.pieces) - 1
    return None, [_data(_dumps(chunk([{"text": piece}], n + 1, n == last))) for n, piece in enumerate(reply.pieces)]


def gemini_error(status: int, message: str | None = None, *, retry_after: float | None = None) -> bytes:
    """Google's error body; a ``RetryInfo`` detail when the fault advertises a wait (Gemini sends
    no ``Retry-After`` header, only this)."""
    error: dict[str, Any] = {"code": status,
                             "message": message or _GEMINI_MESSAGES.get(status, f"Error {status} (injected by the "
                                                                                "fake provider)."),
                             "status": _GEMINI_STATUSES.get(status, "INTERNAL" if status >= 500 else "UNKNOWN")}
    if retry_after is not None:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after:g}s"}]
    return _dumps({"error": error}).encode()
