"""The wire formats without I/O: SSE parsing at any chunk boundary, usage and answers from streams."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tether.adapters._wire import StreamAccumulator, error_body, operation_of, parse_request
from tether.middleware import SSEParser
from tether.testing._fake_wire import Turn, anthropic_message, chat_completion, responses

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def stream_of(events: list[bytes], size: int) -> list[bytes]:
    """The same bytes, cut into chunks of ``size`` (splitting events, lines and UTF-8 anywhere)."""
    raw = b"".join(events)
    return [raw[i:i + size] for i in range(0, len(raw), size)]


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_sse_parser_finds_every_event_whatever_the_chunks(size: int) -> None:
    raw = [b"event: a\ndata: {\"x\": \"\xc3\xa9\"}\n\n", b": comment\n\n", b"data: line1\ndata: line2\r\n\r\n",
           b"data: [DONE]\n\n"]
    parser = SSEParser()
    events = [event for piece in stream_of(raw, size) for event in parser.feed(piece)]
    named = [(name, data) for _, name, data in events if name or data]
    assert named == [("a", '{"x": "é"}'), (None, "line1\nline2"), (None, "[DONE]")]
    assert b"".join(r for r, _, _ in events) == b"".join(raw) and parser.pending == b""


def feed(acc: StreamAccumulator, events: list[bytes], size: int = 13) -> bytes:
    return b"".join(acc.feed(piece) for piece in stream_of(events, size))


def turn(n: int = 1, model: str = "m") -> Turn:
    return Turn(7, n, model, 1_700_000_000)


@pytest.mark.parametrize("tools", [False, True])
def test_chat_stream_usage_answer_and_first_token(tools: bool) -> None:
    payload: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "stream": True,
                               "stream_options": {"include_usage": True}}
    if tools:
        payload["tools"] = [TOOL]
    whole, _ = chat_completion({**payload, "stream": False}, turn())
    _, events = chat_completion(payload, turn())
    assert events is not None and whole is not None
    clock = iter(range(1000))
    acc = StreamAccumulator("openai", "chat", capture=True, clock=lambda: next(clock))
    assert feed(acc, events) == b"".join(events), "a plain tee passes every byte"
    expected = json.loads(whole)
    assert acc.usage.input_tokens == expected["usage"]["prompt_tokens"]
    assert acc.usage.output_tokens == expected["usage"]["completion_tokens"]
    assert acc.done and acc.first_token_at is not None
    answer = acc.response()
    assert answer is not None
    got, want = answer["choices"][0], expected["choices"][0]
    assert got["finish_reason"] == want["finish_reason"] == acc.finish_reason
    if tools:
        assert got["message"]["tool_calls"] == want["message"]["tool_calls"]
    else:
        assert got["message"]["content"] == want["message"]["content"]


def test_chat_stream_drops_only_the_usage_chunk_tether_asked_for() -> None:
    payload = {"messages": [{"role": "user", "content": "hi"}], "stream": True,
               "stream_options": {"include_usage": True}}
    _, events = chat_completion(payload, turn())
    assert events is not None
    acc = StreamAccumulator("openai", "chat", capture=False, drop_usage_chunk=True)
    passed = feed(acc, events, size=5)
    assert passed == b"".join(e for e in events if b'"choices":[]' not in e)
    assert acc.usage.output_tokens > 0 and acc.response() is None


def test_anthropic_stream_usage_from_start_and_delta() -> None:
    payload = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "stream": True, "tools": [
        {"name": "lookup", "input_schema": TOOL["function"]["parameters"]}]}  # type: ignore[index]
    whole, _ = anthropic_message({**payload, "stream": False}, turn())
    _, events = anthropic_message(payload, turn())
    assert events is not None and whole is not None
    acc = StreamAccumulator("anthropic", "messages", capture=True)
    feed(acc, events, size=11)
    expected = json.loads(whole)
    assert (acc.usage.input_tokens, acc.usage.output_tokens) == (expected["usage"]["input_tokens"],
                                                                 expected["usage"]["output_tokens"])
    answer = acc.response()
    assert answer is not None and acc.done and acc.finish_reason == "tool_use"
    assert answer["content"][0]["input"] == expected["content"][0]["input"]
    assert answer["stop_reason"] == "tool_use" and answer["model"] == "m"


def test_responses_stream_keeps_the_final_response() -> None:
    _, events = responses({"input": "hello", "stream": True}, turn())
    assert events is not None
    acc = StreamAccumulator("openai", "responses", capture=True)
    feed(acc, events, size=17)
    answer = acc.response()
    assert answer is not None and answer["status"] == "completed" and acc.finish_reason == "completed"
    assert acc.usage.input_tokens == answer["usage"]["input_tokens"] > 0
    assert acc.first_token_at is not None and acc.done


def test_malformed_event_is_noticed() -> None:
    acc = StreamAccumulator("openai", "chat", capture=False)
    acc.feed(b'data: {"choices": [\n\n')
    assert acc.malformed is not None and "not JSON" in acc.malformed


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("POST", "/v1/chat/completions", ("openai", "chat")),
    ("POST", "/openai/deployments/d/chat/completions", ("openai", "chat")),
    ("POST", "/v1/responses", ("openai", "responses")),
    ("POST", "/v1/embeddings", ("openai", "embeddings")),
    ("POST", "/v1/messages", ("anthropic", "messages")),
    ("POST", "/v1/threads/t1/messages", None),
    ("GET", "/v1/chat/completions", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/messages/count_tokens", None),
])
def test_operations_by_path(method: str, path: str, expected: tuple[str, str] | None) -> None:
    assert operation_of(method, path) == expected


def test_requests_tether_cannot_read() -> None:
    assert parse_request("openai", "chat", b"{nope").problem is not None
    assert parse_request("openai", "chat", b"[1]").body is None
    ok = parse_request("openai", "chat", b'{"model": "m", "stream": true, "temperature": 0.2, "messages": []}')
    assert (ok.model, ok.stream, ok.parameters) == ("m", True, {"stream": True, "temperature": 0.2})


def test_error_bodies_in_each_providers_format() -> None:
    openai_body = json.loads(error_body("openai", 429, "slow down", code="budget_exceeded"))
    assert openai_body["error"]["code"] == "budget_exceeded" and openai_body["error"]["type"] == "requests"
    claude = json.loads(error_body("anthropic", 503, "open circuit", code="circuit_open"))
    assert claude == {"type": "error", "error": {"type": "overloaded_error", "message": "open circuit"}}
