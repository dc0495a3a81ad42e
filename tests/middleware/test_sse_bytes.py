"""The stream parser and accumulator give what they gave before session 12's cut (``_old_sse``, frozen):
the bytes the caller gets, the events kept for replay, the rebuilt answer, usage, finish reason and
errors, for the fake provider's OpenAI chat, Responses, Anthropic and Gemini streams, however the
bytes are cut into chunks, and for the odd events a provider (or a broken proxy) may send."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tether._redact import DEFAULT as REDACT
from tether.middleware import _sse
from tether.middleware._sse import SSEParser, StreamAccumulator
from tether.schemas import plain_json
from tether.testing._fake_wire import Turn, anthropic_message, chat_completion, gemini_content, responses

from . import _old_sse

TURN = Turn(seed=7, number=3, model="m-1", created=1_700_000_000)
TOOL = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                              "required": ["city"]}}
ASK = "What is the weather in Paris, and why? Answer at length with ünïcödé and \"quotes\"."


def _chat(tools: bool, usage: bool) -> list[bytes]:
    payload: dict[str, Any] = {"model": "m-1", "stream": True, "messages": [{"role": "user", "content": ASK}]}
    if tools:
        payload["tools"] = [{"type": "function", "function": TOOL}]
    if usage:
        payload["stream_options"] = {"include_usage": True}
    events = chat_completion(payload, TURN)[1]
    assert events is not None
    return events


def _responses(tools: bool) -> list[bytes]:
    payload: dict[str, Any] = {"model": "m-1", "stream": True, "input": ASK}
    if tools:
        payload["tools"] = [{"type": "function", **TOOL}]
    events = responses(payload, TURN)[1]
    assert events is not None
    return events


def _anthropic(tools: bool) -> list[bytes]:
    payload: dict[str, Any] = {"model": "m-1", "stream": True, "max_tokens": 500,
                               "messages": [{"role": "user", "content": ASK}]}
    if tools:
        payload["tools"] = [{"name": TOOL["name"], "input_schema": TOOL["parameters"]}]
    events = anthropic_message(payload, TURN)[1]
    assert events is not None
    return events


def _gemini() -> list[bytes]:
    events = gemini_content({"contents": [{"role": "user", "parts": [{"text": ASK}]}]}, TURN, stream=True)[1]
    assert events is not None
    return events


STREAMS: dict[str, tuple[str, str, Callable[[], list[bytes]]]] = {
    "chat": ("openai", "chat", lambda: _chat(False, False)),
    "chat-usage": ("openai", "chat", lambda: _chat(False, True)),
    "chat-tool": ("openai", "chat", lambda: _chat(True, True)),
    "responses": ("openai", "responses", lambda: _responses(False)),
    "responses-tool": ("openai", "responses", lambda: _responses(True)),
    "anthropic": ("anthropic", "messages", lambda: _anthropic(False)),
    "anthropic-tool": ("anthropic", "messages", lambda: _anthropic(True)),
    "gemini": ("gemini", "generate_content", _gemini),
}

# Events a provider or a proxy may send besides the usual ones: all parsed as before.
ODD = [
    b": keep-alive comment\n\n", b"data:{\"choices\":[]}\n\n", b"event: ping\ndata: {}\n\n",
    b"data: {\"a\":\n", b"data: 1}\n\n", b"data:  {\"choices\": []}  \n\n", b"data: {\"x\": NaN}\n\n",
    b"data: {\"x\": 1e999}\n\n", b"data: {\"choices\": [1, {\"delta\": {\"content\": \"hi\"}}]}\n\n",
    b"data: not json\n\n", b"data: {\"a\": 1} trailing\n\n", b"data: \xef\xbb\xbf{}\n\n", b"data: [1, 2]\n\n",
    b"data: {\"bad\": \"\xff\xfe\"}\n\n", b"id: 4\nretry: 10\n\n", b"data: \n\n", b"data\n\n", b"event: x\n\n",
    b"data: {\"type\": \"error\", \"error\": {\"message\": \"overloaded\", \"type\": \"overloaded_error\"}}\n\n",
    b"data: [DONE]\n\n",
]


def _cuts(events: list[bytes], how: str) -> list[bytes]:
    if how == "events":
        return events
    whole = b"".join(events)
    if how == "crlf":
        return [e.replace(b"\n", b"\r\n") for e in events]
    if how == "cr":
        return [e.replace(b"\n", b"\r") for e in events]
    if how == "whole":
        return [whole]
    size = int(how)
    return [whole[i:i + size] for i in range(0, len(whole), size)]


def _read(module: Any, kind: str, operation: str, chunks: list[bytes], **options: Any) -> dict[str, Any]:
    acc = module.StreamAccumulator(kind, operation, clock=lambda: 5.0, **options)
    passed = [acc.feed(chunk) for chunk in chunks]
    state = {name: getattr(acc, name) for name in ("bytes", "events", "malformed", "error", "finish_reason", "done",
                                                   "first_token_at", "usage", "usage_seen")}
    return {"passed": passed, "pending": acc.parser.pending, "chunks": acc.chunks, "response": acc.response(),
            "as_json": json.dumps([acc.chunks, acc.response()]), **state}  # NaN: equal as JSON only


CUTS = ["events", "whole", "1", "7", "100", "crlf", "cr"]
OPTIONS = [{"capture": True}, {"capture": False}, {"capture": True, "whole_events": True},
           {"capture": True, "drop_usage_chunk": True}]


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_a_providers_stream_reads_as_before(name: str, cut: str) -> None:
    kind, operation, make = STREAMS[name]
    chunks = _cuts(make(), cut)
    for options in OPTIONS:
        new, old = _read(_sse, kind, operation, chunks, **options), _read(_old_sse, kind, operation,
                                                                                 chunks, **options)
        assert new == old
        if options["capture"]:  # what the completion event records: the same JSON
            assert new["chunks"], name
            assert json.dumps(REDACT(new["chunks"])) == json.dumps(REDACT(old["chunks"]))


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("kind,operation", [("openai", "chat"), ("openai", "responses"), ("anthropic", "messages")])
def test_odd_events_read_as_before(kind: str, operation: str, cut: str) -> None:
    chunks = _cuts(ODD, cut)
    for options in OPTIONS:
        new, old = _read(_sse, kind, operation, chunks, **options), _read(_old_sse, kind, operation,
                                                                                 chunks, **options)
        assert json.dumps(new["chunks"]) == json.dumps(old["chunks"])
        new["chunks"] = old["chunks"] = None
        assert new == old
    assert old["malformed"] is not None and old["error"] is not None  # all read


def test_the_parser_gives_each_events_raw_bytes_as_before() -> None:
    for cut in CUTS:
        chunks = _cuts([*ODD, *_anthropic(True)], cut)
        new, old = SSEParser(), _old_sse.SSEParser()
        assert [new.feed(c) for c in chunks] == [old.feed(c) for c in chunks]
        assert new.pending == old.pending


def test_a_line_separator_inside_an_events_json_is_not_a_line_break() -> None:
    """SSE ends lines at CR and LF only; ``str.splitlines`` also split at U+2028 (raw in an
    Anthropic answer's text), which cut the event's JSON short: the stream was called malformed."""
    text = "one\u2028two\u2029three\x85four\x0cfive"
    event = ("data: " + json.dumps({"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": text}}, ensure_ascii=False)
             + "\n\n").encode()
    start = b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    acc = StreamAccumulator("anthropic", "messages", capture=True)
    for chunk in (start, event):
        acc.feed(chunk)
    assert acc.malformed is None
    response = acc.response()
    assert response is not None and response["content"][0]["text"] == text


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_a_providers_stream_is_known_plain_json(name: str, cut: str) -> None:
    """``plain`` spares the completion event a walk of the chunks: true of every provider's stream,
    and only when ``plain_json`` says so of the chunks and of their redacted copy."""
    kind, operation, make = STREAMS[name]
    acc = StreamAccumulator(kind, operation, capture=True)
    for chunk in _cuts(make(), cut):
        acc.feed(chunk)
    assert acc.plain
    assert plain_json(acc.chunks) and plain_json(REDACT(acc.chunks))
    assert not StreamAccumulator(kind, operation, capture=False).plain  # nothing kept: nothing known


@pytest.mark.parametrize("data", [b'{"x": NaN}', b'{"x": [Infinity]}', b'{"x": -Infinity}', b'{"x": 1e999}',
                                  b'{"x": -1.5e400}', b'{"x": 1' + b"0" * 400 + b'.5}'])
def test_a_number_json_has_no_word_for_makes_the_chunks_not_plain(data: bytes) -> None:
    acc = StreamAccumulator("openai", "chat", capture=True)
    acc.feed(b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": {"p": -0.25}}]}\n\n')
    assert acc.plain
    acc.feed(b"data: " + data + b"\n\n")
    assert not acc.plain and not plain_json(acc.chunks)


def test_an_event_read_the_long_way_makes_the_chunks_not_plain() -> None:
    """Whitespace around an event's JSON: ``json.loads`` reads it, without the watch on its numbers."""
    acc = StreamAccumulator("openai", "chat", capture=True)
    acc.feed(b'data:  {"choices": []} \n\n')
    assert acc.chunks == [{"event": None, "data": {"choices": []}}]
    assert not acc.plain


@pytest.mark.parametrize("cut", CUTS)
def test_odd_events_are_plain_only_when_plain_json_says_so(cut: str) -> None:
    acc = StreamAccumulator("openai", "chat", capture=True)
    for chunk in _cuts(ODD, cut):
        acc.feed(chunk)
        assert not acc.plain or plain_json(acc.chunks)
    assert not acc.plain and not plain_json(acc.chunks)
