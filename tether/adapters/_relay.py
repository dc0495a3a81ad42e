"""An upstream's answer on its way to the caller: one attempt's send, and the streams the caller reads.

Each piece is a core without I/O that holds all the logic (what one attempt got back, when
a stream ended or was closed, what the caller gets and what is recorded) and two thin shells,
async and sync, that only read, close and wait, as h11 and httpcore split it:

* :func:`attempt` (a generator of :class:`Step`) reads one
  attempt into a :class:`~._flow.Sent`; :func:`send_async` and :func:`send_sync` do its steps;
* :class:`TeeCore` is the caller's stream of an inline call (usage, time to first token and,
  when capturing, the answer read on the way through; its end runs ``stream_end_flow``):
  :class:`AsyncTee` and :class:`SyncTee`;
* :class:`RelayCore` is the caller's stream of a durable call, relayed by its worker:
  :class:`AsyncRelayStream` and :class:`SyncRelayStream`;
* :class:`AsyncPassThrough` and :class:`SyncPassThrough` pass on what is not an LLM call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol

from tether.middleware import Failure, RelayBroken, RelayListener, classify_exception

from ._flow import Effect, Final, LlmCall, Send, Sent, stream_end_flow
from ._wire import StreamAccumulator, stream_error_event

__all__ = [
    "AsyncBody",
    "AsyncPassThrough",
    "AsyncRelayStream",
    "AsyncTee",
    "Attempt",
    "RelayCore",
    "Sender",
    "Step",
    "SyncBody",
    "SyncPassThrough",
    "SyncRelayStream",
    "SyncTee",
    "TeeCore",
    "attempt",
    "failure_of",
    "send_async",
    "send_sync",
]

How = Literal["end", "error", "closed"]
EndFlow = Generator[Effect, Any, None]


class AsyncBody(Protocol):
    """What the async shells use of an answer (``_core.AsyncUpstreamResponse`` has it)."""

    async def next_chunk(self) -> bytes | None: ...

    async def aclose(self) -> None: ...


class SyncBody(Protocol):
    def next_chunk(self) -> bytes | None: ...

    def close(self) -> None: ...


class Sender(Protocol):
    """What the shells use of an upstream (``_core.AsyncUpstream`` or ``SyncUpstream``)."""

    def send(self, headers: list[tuple[str, str]], body: bytes, timeout_s: float | None) -> Any: ...


def failure_of(exc: BaseException) -> Failure:
    """:func:`classify_exception`, also for ``httpx2`` (same class names, another package)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if "TimeoutException" in names:
        return Failure(kind="timeout", error_type="APITimeoutError", message=detail[:2000])
    if names & {"NetworkError", "ProtocolError", "TransportError"}:
        return Failure(kind="connection", error_type="APIConnectionError", message=detail[:2000])
    return classify_exception(exc)


def is_stream(status: int, headers: list[tuple[str, str]]) -> bool:
    if status >= 300:
        return False
    return any(k.lower() == "content-type" and v.lower().startswith("text/event-stream") for k, v in headers)


# -- one attempt ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """What :func:`attempt` needs done: ``open`` (send the attempt; the answer's head comes
    back), ``read`` (the next chunk of ``resp``'s body, ``None`` at its end) or ``close``."""

    do: Literal["open", "read", "close"]
    resp: Any = None


_OPEN = Step("open")


def attempt() -> Generator[Step, Any, Sent]:
    """One attempt as steps: a complete answer read whole, a stream read to its first byte.

    A failing step is thrown back in: a failure to send or to read is the attempt's
    failure (the response closed); anything else (a cancellation) closes it and goes on.
    """
    started = time.perf_counter()

    def elapsed() -> float:
        return (time.perf_counter() - started) * 1000

    try:
        resp = yield _OPEN
    except Exception as exc:
        return Sent(elapsed(), failure=failure_of(exc))
    read, close = Step("read", resp), Step("close", resp)
    try:
        if not is_stream(resp.status, resp.headers):
            parts = []
            while (chunk := (yield read)) is not None:
                parts.append(chunk)
            yield close
            return Sent(elapsed(), resp.status, resp.headers, b"".join(parts), extensions=resp.extensions)
        first = yield read
        while first == b"":
            first = yield read
    except Exception as exc:
        with contextlib.suppress(Exception):
            yield close
        return Sent(elapsed(), resp.status, resp.headers, failure=failure_of(exc))
    except BaseException:
        with contextlib.suppress(Exception):
            yield close
        raise
    latency = elapsed()
    if first is None:
        yield close
        return Sent(latency, resp.status, resp.headers, failure=Failure(
            kind="malformed", error_type="MalformedResponseError", message="the stream ended before its first byte"))
    return Sent(latency, resp.status, resp.headers, stream=resp, first=[first], extensions=resp.extensions)


class Attempt:
    """:func:`attempt` driven from outside: do :attr:`step` and report it with :meth:`done` or
    :meth:`failed` until :attr:`sent` is set (then :attr:`step` is ``None``)."""

    __slots__ = ("_steps", "sent", "step")

    def __init__(self) -> None:
        self._steps = attempt()
        self.sent: Sent | None = None
        self.step: Step | None = next(self._steps)

    def done(self, result: Any) -> None:
        try:
            self.step = self._steps.send(result)
        except StopIteration as stop:
            self.step, self.sent = None, stop.value

    def failed(self, exc: BaseException) -> None:
        try:
            self.step = self._steps.throw(exc)
        except StopIteration as stop:
            self.step, self.sent = None, stop.value


async def send_async(upstream: Sender, effect: Send) -> Sent:
    """One attempt with ``await``; a :class:`~._core.RoutedUpstream` sends to the effect's target."""
    run = Attempt()
    send_to = getattr(upstream, "send_to", None)
    while (step := run.step) is not None:
        try:
            if step.do == "read":
                run.done(await step.resp.next_chunk())
            elif step.do == "close":
                run.done(await step.resp.aclose())
            elif send_to is not None:
                run.done(await send_to(effect.target, effect.headers, effect.body, effect.timeout_s))
            else:
                run.done(await upstream.send(effect.headers, effect.body, effect.timeout_s))
        except BaseException as exc:  # the core decides: the attempt's failure, or raised again
            run.failed(exc)
    assert run.sent is not None
    return run.sent


def send_sync(upstream: Sender, effect: Send) -> Sent:
    """One attempt for sync clients."""
    run = Attempt()
    while (step := run.step) is not None:
        try:
            result = (step.resp.next_chunk() if step.do == "read" else step.resp.close() if step.do == "close"
                      else upstream.send(effect.headers, effect.body, effect.timeout_s))
        except BaseException as exc:
            run.failed(exc)
        else:
            run.done(result)
    assert run.sent is not None
    return run.sent


# -- the caller's stream of an inline call -------------------------------------------------------


class TeeCore:
    """The caller's stream without I/O: the upstream's chunks read on the way through.

    :meth:`take` turns what was read into what the caller gets; :meth:`end` says once how
    the stream ended and returns the flow that records it.
    """

    __slots__ = ("_first", "acc", "call", "final", "open", "stream", "tail")

    def __init__(self, call: LlmCall, final: Final, acc: StreamAccumulator) -> None:
        assert final.sent is not None
        self.call = call
        self.final = final
        self.acc = acc
        self.stream: Any = final.sent.stream  # the upstream's response, shell-specific
        self._first = deque(final.sent.first)
        self.open = True
        self.tail = b""
        acc.started_at = acc.clock()

    def readable(self) -> bool:
        return self.open or bool(self._first)

    def buffered(self) -> bytes | None:
        """A chunk read before the caller came (the first one), else ``None``: read the upstream."""
        return self._first.popleft() if self._first else None

    def take(self, chunk: bytes | None) -> bytes | None:
        """What the caller gets for ``chunk`` (``b""``: nothing yet, read on); ``None`` when the
        upstream's body ended: end the stream (``"end"``), then hand on :attr:`tail`."""
        if chunk is None:
            self.tail = self.acc.parser.pending if self.acc.drop_usage_chunk else b""
            return None
        return self.acc.feed(chunk)

    def stopped(self) -> How:
        """How a stream the caller stopped reading ends: whole once its last event came (the
        upstream may keep the connection open a while after it), else closed by the caller."""
        return "end" if self.acc.done else "closed"

    def end(self, how: How, failure: Failure | None = None) -> EndFlow | None:
        """The flow that records the stream's end, the first time only."""
        if not self.open:
            return None
        self.open = False
        return stream_end_flow(self.call, self.final, self.acc, how, failure)


class AsyncTee:
    """The caller's stream: the upstream's chunks as they come, read on the way through.

    ``record`` drives the flow that records its end (``drive_async`` on the call's hub).
    """

    def __init__(self, call: LlmCall, final: Final, acc: StreamAccumulator,
                 record: Callable[[EndFlow], Awaitable[Any]]) -> None:
        self.core = TeeCore(call, final, acc)
        self._resp: AsyncBody = self.core.stream
        self._record = record

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        core = self.core
        while core.readable():
            chunk = core.buffered()
            if chunk is None:
                try:
                    chunk = await self._resp.next_chunk()
                except asyncio.CancelledError:  # the caller went away: after the last event, the call is whole
                    await self._end(core.stopped())
                    raise
                except Exception as exc:
                    await self._end("error", failure_of(exc))
                    raise
            out = core.take(chunk)
            if out is None:
                await self._end("end")
                out = core.tail
            if out:
                return out
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """The caller is done: before the end, the call is recorded as closed by the caller."""
        await self._end(self.core.stopped())

    async def _end(self, how: How, failure: Failure | None = None) -> None:
        flow = self.core.end(how, failure)
        if flow is not None:
            try:
                with contextlib.suppress(Exception):
                    await self._resp.aclose()
            finally:
                await self._record(flow)


class SyncTee:
    """:class:`AsyncTee` for sync clients (``record``: ``drive_sync`` on the call's hub)."""

    def __init__(self, call: LlmCall, final: Final, acc: StreamAccumulator,
                 record: Callable[[EndFlow], Any]) -> None:
        self.core = TeeCore(call, final, acc)
        self._resp: SyncBody = self.core.stream
        self._record = record

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        core = self.core
        while core.readable():
            chunk = core.buffered()
            out = core.take(chunk if chunk is not None else self._read())
            if out is None:
                self._end("end")
                out = core.tail
            if out:
                return out
        raise StopIteration

    def _read(self) -> bytes | None:
        try:
            return self._resp.next_chunk()
        except Exception as exc:
            self._end("error", failure_of(exc))
            raise
        except BaseException:
            self._end(self.core.stopped())
            raise

    def close(self) -> None:
        self._end(self.core.stopped())

    def _end(self, how: How, failure: Failure | None = None) -> None:
        flow = self.core.end(how, failure)
        if flow is not None:
            try:
                with contextlib.suppress(Exception):
                    self._resp.close()
            finally:
                self._record(flow)


# -- the caller's stream of a durable call -------------------------------------------------------


class RelayCore:
    """A durable call's stream without I/O: what to ask the listener next, what the caller gets.

    Each method returns the listener step to run on the bus's loop (``None``: nothing, the
    stream is already over).
    """

    __slots__ = ("call", "listener", "open")

    def __init__(self, call: LlmCall, listener: RelayListener) -> None:
        self.call = call
        self.listener = listener
        self.open = True

    def broken(self, exc: RelayBroken) -> tuple[Callable[[], Awaitable[Any]], bytes]:
        """The stream cannot go on: the step that says so to the worker (or, when the worker
        said it, closes the listener), and the SSE error event the caller's SDK raises."""
        self.open = False
        listener = self.listener
        step = listener.close if exc.from_worker else partial(listener.cancel, exc.code, exc.message)
        return step, stream_error_event(self.call.kind, exc.message, code=exc.code)

    def ended(self) -> Callable[[], Awaitable[Any]]:
        self.open = False
        return self.listener.close

    def stop(self, why: str) -> Callable[[], Awaitable[Any]] | None:
        """The caller stopped early: tell the worker, which records the call as closed by the caller."""
        if not self.open:
            return None
        self.open = False
        return partial(self.listener.cancel, "client_closed", why)


class AsyncRelayStream:
    """The caller's stream of a durable call: the chunks its worker relays, passed on as they
    come. A stream that cannot go on (it broke at the worker, a chunk was lost, the worker
    fell silent) ends with an SSE error event in the provider's format, which the SDK raises;
    closing it early tells the worker to stop (it records the call as closed by the caller)."""

    def __init__(self, call: LlmCall, listener: RelayListener) -> None:
        self.core = RelayCore(call, listener)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        core = self.core
        if not core.open:
            raise StopAsyncIteration
        hub = core.call.hub
        try:
            chunk = await hub.call(core.listener.next)
        except RelayBroken as exc:
            step, event = core.broken(exc)
            await hub.call(step)
            return event
        except asyncio.CancelledError:
            await self._stop("the caller's task was cancelled")
            raise
        if chunk is None:
            await hub.call(core.ended())
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        await self._stop("the caller closed the stream")

    async def _stop(self, why: str) -> None:
        step = self.core.stop(why)
        if step is not None:
            await self.core.call.hub.call(step)


class SyncRelayStream:
    """:class:`AsyncRelayStream` for sync clients (each step is awaited on the bus's loop)."""

    def __init__(self, call: LlmCall, listener: RelayListener) -> None:
        self.core = RelayCore(call, listener)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        core = self.core
        if not core.open:
            raise StopIteration
        call_sync = core.call.hub.call_sync
        try:
            chunk = call_sync(core.listener.next, timeout=core.listener.idle_timeout_s + 30.0)
        except RelayBroken as exc:
            step, event = core.broken(exc)
            call_sync(step, timeout=10.0)
            return event
        except BaseException:
            self._stop("the caller stopped reading (an exception in its thread)")
            raise
        if chunk is None:
            call_sync(core.ended(), timeout=10.0)
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._stop("the caller closed the stream")

    def _stop(self, why: str) -> None:
        step = self.core.stop(why)
        if step is not None:
            with contextlib.suppress(Exception):
                self.core.call.hub.call_sync(step, timeout=10.0)


# -- what is not an LLM call -----------------------------------------------------------------------


class AsyncPassThrough:
    """A response tether does not read (not an LLM call)."""

    def __init__(self, resp: AsyncBody) -> None:
        self._resp = resp

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._resp.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        await self._resp.aclose()


class SyncPassThrough:
    def __init__(self, resp: SyncBody) -> None:
        self._resp = resp

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = self._resp.next_chunk()
        if chunk is None:
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._resp.close()
