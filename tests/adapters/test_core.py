"""The interception core on its own, as the gateway will use it: raw request in, response out.

The upstream is scripted here (no HTTP), so the tests can hold a stream between chunks.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

import tether
from tether.adapters import Interceptor, ProxyResponse
from tether.bus import Bus
from tether.middleware import PolicySet
from tether.schemas import Event

from .conftest import data, kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

Headers = list[tuple[str, str]]
WHEN = datetime(2026, 1, 1, tzinfo=UTC)
BODY = json.dumps({"model": "gpt-4o-mini", "stream": True,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


def chunk(content: str) -> bytes:
    doc = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
           "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    return f"data: {json.dumps(doc)}\n\n".encode()


USAGE = (b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],'
         b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n')


@dataclass
class Scripted:
    """An upstream response: status, headers, then chunks, with pauses (a float: seconds) between."""

    status: int
    chunks: list[bytes | float]
    headers: Headers = field(default_factory=lambda: [("content-type", "text/event-stream")])
    extensions: dict[str, Any] = field(default_factory=dict)
    closed: bool = False

    async def next_chunk(self) -> bytes | None:
        while self.chunks:
            item = self.chunks.pop(0)
            if isinstance(item, float):
                await asyncio.sleep(item)
                continue
            return item
        return None

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Upstream:
    responses: list[Scripted]
    sent: list[tuple[Headers, bytes, float | None]] = field(default_factory=list)

    async def send(self, headers: Headers, body: bytes, timeout_s: float | None) -> Scripted:
        self.sent.append((headers, body, timeout_s))
        return self.responses.pop(0)


async def read_all(response: ProxyResponse) -> bytes:
    assert response.stream is not None
    return b"".join([piece async for piece in response.stream])


async def test_raw_request_through_the_policy(bus: Bus, policies: PolicySet) -> None:
    upstream = Upstream([
        Scripted(503, [b'{"error":{"message":"busy"}}'], [("content-type", "application/json")]),
        Scripted(200, [chunk("Hel"), chunk("lo"), USAGE, b"data: [DONE]\n\n"]),
    ])
    core = Interceptor(bus=bus, policies=policies, provider="upstream-a")
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with tether.run(bus=bus) as run:
        response = await core.handle("POST", "/v1/chat/completions",
                                     [("content-type", "application/json"), ("traceparent", incoming)],
                                     BODY, upstream)
        body = await read_all(response)
    assert response.status == 200 and response.call_id
    assert b"Hello" not in body and b'"Hel"' in body and body.endswith(b"[DONE]\n\n")
    assert b'"choices":[]' not in body, "the usage chunk tether asked for is not passed on"
    headers, sent, timeout = upstream.sent[1]
    assert json.loads(sent)["stream_options"] == {"include_usage": True}
    assert dict(headers)["accept-encoding"] == "identity" and timeout == 5.0
    trace = dict(headers)["traceparent"]
    assert trace.split("-")[1] == incoming.split("-")[1], "the incoming trace continues, with a new span"
    assert trace.split("-")[2] != incoming.split("-")[2]
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]
    completed = data(events, "completed")[0]
    assert (completed.provider, completed.usage.input_tokens, completed.usage.output_tokens) == ("upstream-a", 3, 2)
    assert completed.response["choices"][0]["message"]["content"] == "Hello"
    assert all(e.traceparent and e.traceparent.split("-")[1] == incoming.split("-")[1] for e in events[1:-1])


async def test_cancelled_while_waiting_for_the_next_chunk(bus: Bus, policies: PolicySet) -> None:
    slow = Scripted(200, [chunk("a"), 30.0, chunk("b")])
    core = Interceptor(bus=bus, policies=policies)
    got = asyncio.Event()
    run_id = ""

    async def consume() -> None:
        nonlocal run_id
        async with tether.run(bus=bus) as run:
            run_id = run.run_id
            response = await core.handle("POST", "/v1/chat/completions", [], BODY, Upstream([slow]))
            assert response.stream is not None
            async for _ in response.stream:
                got.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got.wait(), 5)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.closed, "the upstream connection is released"
    events = await run_events(bus, run_id)
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.failed", "run.finished"]
    assert data(events, "llm.call.failed")[0].error.code == "client_closed"


async def test_cancelled_after_the_last_event_is_a_whole_call(bus: Bus, policies: PolicySet) -> None:
    """The caller read the stream to [DONE] and went away while the upstream kept it open."""
    lingering = Scripted(200, [chunk("Hel"), chunk("lo"), USAGE, b"data: [DONE]\n\n", 30.0])
    core = Interceptor(bus=bus, policies=policies)
    done = asyncio.Event()
    run_id = ""

    async def consume() -> None:
        nonlocal run_id
        async with tether.run(bus=bus) as run:
            run_id = run.run_id
            response = await core.handle("POST", "/v1/chat/completions", [], BODY, Upstream([lingering]))
            assert response.stream is not None
            async for piece in response.stream:
                if piece.endswith(b"[DONE]\n\n"):
                    done.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lingering.closed
    events = await run_events(bus, run_id)
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.completed", "run.finished"]
    completed = data(events, "llm.call.completed")[0]
    assert completed.usage.output_tokens == 2 and completed.response["choices"][0]["message"]["content"] == "Hello"


class Interrupted(BaseException):
    """What a sync caller's thread may get while it waits (as KeyboardInterrupt, without stopping pytest)."""


@dataclass
class SyncScripted:
    status: int
    chunks: list[bytes | BaseException]
    headers: Headers = field(default_factory=lambda: [("content-type", "text/event-stream")])
    extensions: dict[str, Any] = field(default_factory=dict)
    closed: bool = False

    def next_chunk(self) -> bytes | None:
        if not self.chunks:
            return None
        item = self.chunks.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


@dataclass
class SyncUpstream:
    responses: list[SyncScripted]

    def send(self, headers: Headers, body: bytes, timeout_s: float | None) -> SyncScripted:
        return self.responses.pop(0)


@pytest.mark.parametrize(("chunks", "end"), [
    ([chunk("Hel"), chunk("lo"), USAGE, b"data: [DONE]\n\n", Interrupted()], "llm.call.completed"),
    ([chunk("Hel"), Interrupted()], "llm.call.failed"),
], ids=["after-the-last-event", "mid-stream"])
async def test_sync_stream_interrupted(bus: Bus, policies: PolicySet, chunks: list[bytes | BaseException],
                                       end: str) -> None:
    core = Interceptor(bus=bus, policies=policies)
    response = SyncScripted(200, chunks)

    def consume() -> None:
        with tether.run(bus=bus, run_id=run_id):
            proxied = core.handle_sync("POST", "/v1/chat/completions", [], BODY, SyncUpstream([response]))
            assert proxied.stream is not None
            with pytest.raises(Interrupted):
                for _ in proxied.stream:
                    pass

    run_id = f"sync-interrupted-{end}"
    await asyncio.to_thread(consume)
    assert response.closed
    events = await run_events(bus, run_id)
    assert kinds(events)[1:3] == ["llm.call.requested", end]


async def test_error_event_inside_a_stream(bus: Bus, policies: PolicySet) -> None:
    broken = Scripted(200, [b'event: message_start\ndata: {"type":"message_start","message":{"id":"m",'
                            b'"model":"claude-haiku-4-5","role":"assistant","usage":{"input_tokens":4}}}\n\n',
                            b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                            b'"message":"Overloaded"}}\n\n'])
    core = Interceptor(bus=bus, policies=policies)
    body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    async with tether.run(bus=bus) as run:
        await read_all(await core.handle("POST", "/v1/messages", [], body, Upstream([broken])))
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.failed",
                                   "call.dead_lettered"]
    assert data(events, "attempt_failed")[0].error.type == "overloaded_error"


async def test_non_llm_requests_pass_through(bus: Bus, policies: PolicySet) -> None:
    upstream = Upstream([Scripted(200, [b'{"data":[]}'], [("content-type", "application/json")])])
    response = await Interceptor(bus=bus, policies=policies).handle("GET", "/v1/models", [("a", "b")], b"",
                                                                   upstream)
    assert await read_all(response) == b'{"data":[]}'
    assert upstream.sent == [([("a", "b")], b"", None)]


async def test_no_bus_fails_open(policies: PolicySet, monkeypatch: pytest.MonkeyPatch) -> None:
    """tether never blocks the agent: without a bus the call passes through, unrecorded."""
    import tether.adapters._core as core_module

    def unavailable(timeout: float = 60.0) -> Any:
        raise ConnectionError("no NATS here")

    monkeypatch.setattr(core_module, "background_hub", unavailable)
    monkeypatch.setattr(core_module, "background_hub_nowait", lambda: None)
    upstream = Upstream([Scripted(200, [b'{"choices":[]}'], [("content-type", "application/json")])])
    response = await Interceptor(policies=policies).handle("POST", "/v1/chat/completions", [], BODY, upstream)
    assert await read_all(response) == b'{"choices":[]}'


@pytest.mark.parametrize("package", ["httpx", "httpx2"])
def test_an_attempts_request_is_the_one_content_would_build(package: str) -> None:
    """Each attempt is built from a ready byte stream (``content=`` looks every header up again by
    name, decoding them all each time): the same headers in the same order, the same body, readable
    again by a transport that reads ``request.content``; without a Host header, the package adds it."""
    import importlib

    from tether.adapters._httpio import SyncUpstreamOf

    module = importlib.import_module(package)
    original = module.Request("POST", "http://127.0.0.1:9/v1/chat/completions", content=b'{"model":"m"}',
                              headers={"authorization": "Bearer x", "content-type": "application/json"},
                              extensions={"timeout": {"connect": 5.0, "read": None, "write": 5.0, "pool": 5.0}})
    upstream = SyncUpstreamOf(module, None, original)
    headers = [(k.decode(), v.decode()) for k, v in original.headers.raw if k.lower() != b"content-length"]
    headers += [("accept-encoding", "identity"), ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01")]
    body = b'{"model":"m","messages":[]}'
    for given, timeout in ((headers, 30.0), ([h for h in headers if h[0].lower() != "host"], None)):
        built = upstream.attempt(given, body, timeout)
        expected = module.Request("POST", original.url, headers=given, content=body,
                                  extensions=dict(original.extensions))
        assert built.headers.raw == expected.headers.raw
        assert built.content == body and built.read() == body
        assert built.method == "POST" and built.url == original.url
        assert built.extensions["timeout"] == ({"connect": 5.0, "read": 30.0, "write": 5.0, "pool": 5.0}
                                               if timeout else original.extensions["timeout"])


class _Counted:
    """A payload class's validator, counting the payloads validated through it."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    def validate_python(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.real.validate_python(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_a_calls_events_are_built_without_validating_what_tether_parsed_again(
        bus: Bus, policies: PolicySet, monkeypatch: pytest.MonkeyPatch) -> None:
    """``llm.call.requested`` and ``completed`` of an ordinary call are built from the request and the
    answer tether parsed, without pydantic walking them again: the same payloads (and the same JSON)
    as validated ones. An answer that is not plain JSON (a NaN: JSON has none) is validated as before."""
    from tether.adapters import Hub
    from tether.schemas import LlmCallCompleted, LlmCallRequested

    answer = {"id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    json_headers = [("content-type", "application/json")]
    upstream = Upstream([Scripted(200, [json.dumps(answer).encode()], json_headers),
                         Scripted(200, [json.dumps(answer).replace('"hi"', "NaN").encode()], json_headers)])
    counted = {cls: _Counted(cls.__pydantic_validator__) for cls in (LlmCallRequested, LlmCallCompleted)}
    for cls, validator in counted.items():
        monkeypatch.setattr(cls, "__pydantic_validator__", validator)
    seen: list[Any] = []
    Hub.of(bus).observers.append(lambda event: seen.append(event.data))
    core = Interceptor(bus=bus, policies=policies, provider="upstream-a")
    plain = json.dumps({"model": "gpt-4o-mini", "temperature": 0.5,
                        "messages": [{"role": "user", "content": "hi"}]}).encode()
    async with tether.run(bus=bus):
        for _ in range(2):
            response = await core.handle("POST", "/v1/chat/completions", json_headers, plain, upstream)
            assert response.status == 200 and (response.stream is None or await read_all(response))
    requested = [p for p in seen if isinstance(p, LlmCallRequested)]
    completed = [p for p in seen if isinstance(p, LlmCallCompleted)]
    assert len(requested) == 2 and len(completed) == 2
    assert counted[LlmCallRequested].calls == 0
    assert counted[LlmCallCompleted].calls == 1, "only the answer with a NaN was validated"
    assert completed[1].response["choices"][0]["message"]["content"] == "NaN", "spelled as validation spells it"
    for payload in (*requested, completed[0]):
        validated = type(payload)(**{name: getattr(payload, name) for name in payload.model_fields_set})
        assert payload == validated and payload.model_fields_set == validated.model_fields_set
        assert Event.of(payload, id="e1", time=WHEN).data_json() == Event.of(validated, id="e1", time=WHEN).data_json()
    assert requested[0].parameters == {"temperature": 0.5} and requested[0].request["messages"][0]["content"] == "hi"


async def test_the_headers_sent_upstream_in_one_pass(bus: Bus, policies: PolicySet) -> None:
    """What goes upstream: the caller's headers in their order but those tether writes (length, encoding,
    connection, the trace), then ``accept-encoding: identity``, the call's traceparent (continuing the
    caller's first one) and an idempotency key unless the caller gave one (in any case)."""
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    answer = [b'{"id":"c1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}']
    core = Interceptor(bus=bus, policies=policies)
    caller: Headers = [("Content-Type", "application/json"), ("Content-Length", "99"), ("TraceParent", incoming),
                       ("X-Custom", "1"), ("traceparent", other), ("Accept-Encoding", "gzip"), ("Connection", "x")]
    for keyed in (False, True):
        upstream = Upstream([Scripted(200, list(answer), [("content-type", "application/json")])])
        given = [*caller, ("Idempotency-Key", "mine")] if keyed else caller
        response = await core.handle("POST", "/v1/chat/completions", given, body, upstream)
        assert response.status == 200
        sent = upstream.sent[0][0]
        names = [k for k, _ in sent]
        assert names[:2] == ["Content-Type", "X-Custom"]
        assert names[2:] == (["Idempotency-Key", "accept-encoding", "traceparent"] if keyed else
                             ["accept-encoding", "traceparent", "idempotency-key"])
        assert dict(sent)["traceparent"].split("-")[1] == incoming.split("-")[1]
        assert dict(sent).get("Idempotency-Key", dict(sent).get("idempotency-key")) == (
            "mine" if keyed else response.call_id)
