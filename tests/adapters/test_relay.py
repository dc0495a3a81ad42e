"""The cores of ``tether.adapters._relay`` without I/O: one attempt as scripted steps, the inline
stream's tee, the durable stream's relay. The async and sync shells around them are run by the
SDK tests over HTTP (test_openai, test_anthropic, test_gateway, test_durable_streams)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tether.adapters._flow import Final, Send, Sent
from tether.adapters._relay import Attempt, RelayCore, Step, TeeCore, send_sync
from tether.middleware import RelayBroken, StreamAccumulator, Target

pytestmark = pytest.mark.anyio

CHUNK = b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


class Resp:
    def __init__(self, status: int = 200, stream: bool = True) -> None:
        self.status = status
        self.headers = [("content-type", "text/event-stream" if stream else "application/json")]
        self.extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}


def run(script: list[Any]) -> tuple[Sent | BaseException, list[Step]]:
    """Drive one attempt: each step gets the script's next answer (an exception is raised into it)."""
    attempt, steps = Attempt(), []
    answers = iter(script)
    try:
        while (step := attempt.step) is not None:
            steps.append(step)
            answer = next(answers)
            if isinstance(answer, BaseException):
                attempt.failed(answer)
            else:
                attempt.done(answer)
    except BaseException as exc:  # raised again by the core
        return exc, steps
    assert attempt.sent is not None
    return attempt.sent, steps


def test_a_complete_answer_is_read_whole_then_closed() -> None:
    resp = Resp(stream=False)
    sent, steps = run([resp, b'{"a"', b":1}", None, None])
    assert isinstance(sent, Sent)
    assert sent.body == b'{"a":1}' and sent.status == 200 and sent.stream is None
    assert sent.extensions == resp.extensions and sent.failure is None and sent.latency_ms >= 0
    assert [s.do for s in steps] == ["open", "read", "read", "read", "close"]


def test_a_stream_is_read_to_its_first_byte_and_kept_open() -> None:
    resp = Resp()
    sent, steps = run([resp, b"", b"", CHUNK])
    assert isinstance(sent, Sent)
    assert sent.stream is resp and sent.first == [CHUNK] and sent.body is None
    assert [s.do for s in steps] == ["open", "read", "read", "read"], "empty chunks are skipped, nothing closed"


def test_a_stream_that_ends_before_its_first_byte_is_malformed() -> None:
    sent, steps = run([Resp(), None, None])
    assert isinstance(sent, Sent) and sent.failure is not None
    assert sent.failure.kind == "malformed" and "before its first byte" in sent.failure.message
    assert steps[-1].do == "close"


def test_failures_to_send_and_to_read_are_the_attempts_failure() -> None:
    sent, steps = run([ConnectionResetError("reset")])
    assert isinstance(sent, Sent) and sent.failure is not None and sent.failure.kind == "connection"
    assert sent.status == 0 and [s.do for s in steps] == ["open"]

    sent, steps = run([Resp(), TimeoutError(), RuntimeError("close failed too")])
    assert isinstance(sent, Sent) and sent.failure is not None and sent.failure.kind == "timeout"
    assert sent.status == 200 and [s.do for s in steps] == ["open", "read", "close"], "closed, its error ignored"


def test_a_cancellation_closes_the_answer_and_is_raised_again() -> None:
    cancelled = asyncio.CancelledError()
    raised, steps = run([Resp(), cancelled, None])
    assert raised is cancelled and [s.do for s in steps] == ["open", "read", "close"]
    raised, steps = run([cancelled])
    assert raised is cancelled and [s.do for s in steps] == ["open"], "nothing to close before an answer"


def test_the_sync_shell_does_the_steps() -> None:
    class Body(Resp):
        def __init__(self) -> None:
            super().__init__(stream=False)
            self.chunks: list[bytes | None] = [b"ok", None]
            self.closed = False

        def next_chunk(self) -> bytes | None:
            return self.chunks.pop(0)

        def close(self) -> None:
            self.closed = True

    body = Body()

    seen: list[tuple[Any, ...]] = []

    class Upstream:
        def send(self, headers: list[tuple[str, str]], data: bytes, timeout_s: float | None) -> Body:
            seen.append((headers, data, timeout_s))
            return body

    sent = send_sync(Upstream(), Send(target=Target("p", "m"), attempt=1, headers=[("x-a", "1")], body=b"{}",
                                        timeout_s=5.0))
    assert sent.body == b"ok" and body.closed and seen == [([("x-a", "1")], b"{}", 5.0)]


# -- the inline stream's tee -----------------------------------------------------------------------


def tee(first: bytes = CHUNK, *, drop_usage: bool = False) -> TeeCore:
    acc = StreamAccumulator("openai", "chat", capture=True, drop_usage_chunk=drop_usage)
    final = Final(200, [], sent=Sent(1.0, 200, [], stream="the upstream", first=[first]))
    return TeeCore(object(), final, acc)  # type: ignore[arg-type]  # the call only reaches the end flow


def test_the_tee_hands_on_the_first_chunk_then_what_it_reads() -> None:
    core = tee()
    assert core.stream == "the upstream" and core.readable()
    first = core.buffered()
    assert first == CHUNK and core.take(first) == CHUNK
    assert core.buffered() is None, "then the upstream is read"
    assert core.stopped() == "closed", "stopped before the last event: closed by the caller"
    assert core.take(DONE) == DONE
    assert core.stopped() == "end", "after the last event the call is whole however the caller leaves"
    assert core.take(None) is None and core.tail == b""


def test_the_tee_ends_once() -> None:
    core = tee()
    assert core.end("closed") is not None
    assert not core.open and core.end("end") is None and core.end("error") is None


def test_a_stream_read_after_its_close_still_gives_the_chunk_already_read() -> None:
    core = tee()
    assert core.end("closed") is not None
    assert core.readable(), "the first chunk was read: handed on, as before the close"
    assert core.buffered() == CHUNK and not core.readable()


# -- the durable stream's relay --------------------------------------------------------------------


class Listener:
    def __init__(self) -> None:
        self.did: list[tuple[str, ...]] = []

    async def close(self) -> None:
        self.did.append(("close",))

    async def cancel(self, code: str, message: str) -> None:
        self.did.append(("cancel", code, message))


class Call:
    kind = "openai"


async def test_a_broken_relay_tells_the_worker_unless_the_worker_said_it() -> None:
    listener = Listener()
    core = RelayCore(Call(), listener)  # type: ignore[arg-type]
    step, event = core.broken(RelayBroken("chunk_lost", "a chunk was lost"))
    await step()
    assert listener.did == [("cancel", "chunk_lost", "a chunk was lost")] and not core.open
    assert b"a chunk was lost" in event and event.startswith(b"event: error\n")

    listener = Listener()
    core = RelayCore(Call(), listener)  # type: ignore[arg-type]
    step, _ = core.broken(RelayBroken("upstream_failed", "it broke at the worker", from_worker=True))
    await step()
    assert listener.did == [("close",)]


async def test_a_relay_is_stopped_once() -> None:
    listener = Listener()
    core = RelayCore(Call(), listener)  # type: ignore[arg-type]
    step = core.stop("the caller closed the stream")
    assert step is not None
    await step()
    assert core.stop("again") is None and listener.did == [("cancel", "client_closed",
                                                            "the caller closed the stream")]
    listener = Listener()
    core = RelayCore(Call(), listener)  # type: ignore[arg-type]
    await core.ended()()
    assert listener.did == [("close",)] and core.stop("too late") is None
