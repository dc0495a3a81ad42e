"""Durable streaming: the worker relays a streamed answer to its caller over core NATS.

The caller subscribes to its relay subject (``tether.stream.<call>``) *before* it submits
the work item, whose ``relay`` names that subject, so nothing the worker says is missed.
The worker streams from the provider. Failures before the first chunk are ordinary
attempts (retried, fallen back, dead-lettered under the policy: the caller only sees its
stream start later); from the first chunk on, the answer is relayed as it comes, whole
SSE events at a time (a chunk that ends mid-event waits for the event's end, which an SSE
reader needs anyway), so an error can always be appended as a well-formed event.

On the relay subject (worker → caller), header ``Tether-Relay``:

``chunk``
    SSE bytes; ``Tether-Seq`` 1, 2, ...; the first one also carries ``Tether-Status`` and
    ``Tether-Content-Type``.
``end``
    the provider's stream ended well.
``error``
    the stream broke after its first byte (JSON ``{type, code, message}``): it is not
    retried, since the caller already has part of the answer.
``heartbeat``
    a *request*, every ``heartbeat_s`` while the attempt runs, which the caller answers;
    ``Tether-Seq`` is the last chunk sent, so a lost chunk shows. No responders means the
    caller is gone.
(no header)
    the call's final reply, as for any durable call (the work item's ``reply_to``): how a
    call that ended before its first chunk (gave up, refused) reaches the caller.

Every relay message carries ``Tether-Attempt``: a caller takes the chunks of one attempt
only, so two attempts can never be spliced into one answer.

The caller stops a stream by publishing JSON ``{code, message}`` on ``<subject>.cancel``
(the worker listens while it streams); a caller that died is noticed by its unanswered
heartbeat (no responders). Either way the worker closes the upstream response and records
the call ``failed`` with ``Cancelled`` (not dead-lettered), as an inline stream closed
early is, unless the answer was already complete. A caller that hears nothing (no chunk,
no heartbeat) for its idle timeout ends the stream with a clear error: its worker is gone;
the work item's redelivery then records the cut attempt (``WorkerLost``, not retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from tether._redact import DEFAULT as REDACT
from tether.bus import encode_token
from tether.schemas import ErrorInfo, Event, LlmCallFailed, Usage

from ._engine import CallEngine, Outcome, terminal_id
from ._failures import Failure, classify_exception, classify_http
from ._http import ProviderHttp, ProviderStream
from ._policy import Policy, Target
from ._providers import ProviderConfig, usage_of
from ._sse import StreamAccumulator
from ._work import CallRecord, RelaySpec, WorkItem

__all__ = [
    "RELAY_PREFIX",
    "RelayBroken",
    "RelayListener",
    "Streamed",
    "record_cancelled",
    "relay_attempt",
    "relay_subject",
]

RELAY_PREFIX = "tether.stream"
KIND = "Tether-Relay"
SEQ = "Tether-Seq"
ATTEMPT = "Tether-Attempt"
STATUS = "Tether-Status"
CONTENT_TYPE = "Tether-Content-Type"
NOT_RETRIED = " (after the first byte reached the caller: not retried)"


def relay_subject(call_id: str) -> str:
    """The relay subject of a call: ``tether.stream.<call id, encoded>``."""
    return f"{RELAY_PREFIX}.{encode_token(call_id)}"


# -- the worker's end ------------------------------------------------------------------------


@dataclass(frozen=True)
class Streamed:
    """How a streamed attempt went.

    ``outcome.ok``: the answer was relayed whole. Not ok and not ``relayed``: it failed
    before its first chunk, an attempt like any other. Not ok and ``relayed``: it broke
    after its first byte (the caller was told), or was ``cancelled`` (``(code, message)``).
    """

    outcome: Outcome
    relayed: bool = False
    cancelled: tuple[str, str] | None = None
    usage_seen: bool = False


class _Relay:
    """The worker's side of one attempt's relay: chunks out, heartbeats, cancel in."""

    def __init__(self, nc: NATS, spec: RelaySpec, attempt: int) -> None:
        self.nc = nc
        self.spec = spec
        self.attempt = str(attempt)
        self.seq = 0
        self.cancelled: tuple[str, str] | None = None
        self.on_cancel: Callable[[], object] | None = None
        self._sub: Any = None
        self._beat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.spec.subject + ".cancel", cb=self._on_cancel)
        self._beat = asyncio.create_task(self._heartbeats(), name="tether-relay-heartbeat")

    def _headers(self, kind: str) -> dict[str, str]:
        return {KIND: kind, SEQ: str(self.seq), ATTEMPT: self.attempt}

    async def chunk(self, data: bytes, *, status: int | None = None, content_type: str | None = None) -> None:
        self.seq += 1
        headers = self._headers("chunk")
        if status is not None:
            headers[STATUS] = str(status)
            headers[CONTENT_TYPE] = content_type or "text/event-stream"
        await self.nc.publish(self.spec.subject, data, headers=headers)

    async def end(self) -> None:
        self.seq += 1
        await self.nc.publish(self.spec.subject, b"", headers=self._headers("end"))

    async def error(self, failure: Failure) -> None:
        self.seq += 1
        doc = {"type": failure.error_type, "code": "stream_broken", "message": failure.message}
        with contextlib.suppress(Exception):
            await self.nc.publish(self.spec.subject, json.dumps(doc).encode(), headers=self._headers("error"))

    async def _on_cancel(self, msg: Msg) -> None:
        code, message = "client_closed", "the caller closed the stream"
        with contextlib.suppress(ValueError, AttributeError):
            doc = json.loads(msg.data)
            code = str(doc.get("code") or code)
            message = str(doc.get("message") or message)
        self._cancel(code, message)

    def _cancel(self, code: str, message: str) -> None:
        if self.cancelled is None:
            self.cancelled = (code, message)
            if self.on_cancel is not None:
                self.on_cancel()

    async def _heartbeats(self) -> None:
        interval = self.spec.heartbeat_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.nc.request(self.spec.subject, b"", timeout=max(interval, 0.5),
                                      headers=self._headers("heartbeat"))
            except NoRespondersError:
                self._cancel("client_gone", "the caller stopped listening (nobody answered the relay's heartbeat)")
                return
            except Exception:  # a slow answer (timeout) is not a missing caller
                continue

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(BaseException):
                await self._beat
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class _Attempt:
    """One streamed attempt: the request, the first chunk, then relaying to the end."""

    def __init__(self, http: ProviderHttp, provider: ProviderConfig, item: WorkItem,
                 target: Target, policy: Policy, relay: _Relay, on_relayed: Callable[[], Awaitable[None]]) -> None:
        self.http = http
        self.provider = provider
        self.item = item
        self.target = target
        self.policy = policy
        self.relay = relay
        self.on_relayed = on_relayed
        self.started = time.perf_counter()
        self.relayed = False
        self.acc: StreamAccumulator | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    async def run(self) -> Streamed:
        item, provider = self.item, self.provider
        payload = dict(item.body)
        payload["model"] = self.target.model
        payload["stream"] = True
        headers = provider.auth_headers()
        headers["Idempotency-Key"] = item.call_id
        headers["Accept-Encoding"] = "identity"
        if item.traceparent:
            headers["traceparent"] = item.traceparent
        self.started = time.perf_counter()
        try:
            response = await self.http.post_stream(provider.url(item.operation), body=payload, headers=headers,
                                                   timeout_s=self.policy.timeout_s)
        except Exception as exc:
            return Streamed(Outcome(False, self.elapsed_ms(), failure=classify_exception(exc)))
        try:
            return await self._read(response)
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()

    async def _read(self, response: ProviderStream) -> Streamed:
        relay, provider, item = self.relay, self.provider, self.item
        if response.status_code >= 300:
            try:
                body = await response.aread()
            except Exception as exc:
                return Streamed(Outcome(False, self.elapsed_ms(), failure=classify_exception(exc)))
            return Streamed(Outcome(False, self.elapsed_ms(), failure=classify_http(
                response.status_code, response.headers, body, now=time.time())))
        content_type = response.headers.get("content-type", "")
        if not content_type.lower().startswith("text/event-stream"):
            return await self._whole(response, content_type)
        acc = self.acc = StreamAccumulator(provider.kind, item.operation, capture=True, whole_events=True,
                                           drop_usage_chunk=relay.spec.drop_usage_chunk)
        acc.started_at = self.started
        chunks = response.aiter_bytes()
        first = b""
        try:
            while not first:  # failures up to here are the attempt's, under the policy
                raw = await anext(chunks, None)
                if raw is None:
                    break
                first = acc.feed(raw)
        except Exception as exc:
            return Streamed(Outcome(False, self.elapsed_ms(), failure=classify_exception(exc)))
        if not first:
            return Streamed(Outcome(False, self.elapsed_ms(), failure=Failure(
                kind="malformed", error_type="MalformedResponseError",
                message="the stream ended before its first event")))
        recording = asyncio.ensure_future(self.on_relayed())  # its round trip overlaps the first chunk's
        self.relayed = True
        try:
            await relay.chunk(first, status=response.status_code, content_type=content_type)
        finally:
            await recording
        try:
            async for raw in chunks:
                out = acc.feed(raw)
                if out:
                    await relay.chunk(out)
        except Exception as exc:
            if not acc.done:  # after [DONE] / message_stop, the end is only the connection's
                return await self._broken(classify_exception(exc))
        tail = acc.parser.pending
        if tail:
            await relay.chunk(tail)
        if acc.error is not None:
            return await self._broken(Failure(kind="http", error_type=str(acc.error.get("type") or "StreamError"),
                                              message=str(acc.error.get("message") or acc.error)))
        if acc.malformed is not None:
            return await self._broken(Failure(kind="malformed", error_type="MalformedResponseError",
                                              message=acc.malformed))
        await relay.end()
        return Streamed(self._completed(acc), relayed=True, usage_seen=acc.usage_seen)

    async def _whole(self, response: ProviderStream, content_type: str) -> Streamed:
        """A complete answer where a stream was asked for: relayed whole, in one chunk."""
        try:
            body = await response.aread()
            data = json.loads(body)
        except Exception as exc:
            return Streamed(Outcome(False, self.elapsed_ms(), failure=classify_exception(exc)))
        usage, finish = usage_of(self.provider.kind, self.item.operation, data)
        await self.relay.chunk(body, status=response.status_code, content_type=content_type)
        self.relayed = True
        await self.relay.end()
        return Streamed(Outcome(True, self.elapsed_ms(), data, usage, finish), relayed=True, usage_seen=True)

    def _completed(self, acc: StreamAccumulator) -> Outcome:
        ttft = (acc.first_token_at - self.started) * 1000 if acc.first_token_at is not None else None
        answer = acc.response()
        # redacted by the engine's rule set when the event is made; None: a secret split across events
        chunks = acc.recorded_chunks(REDACT, answer, REDACT(answer))
        return Outcome(True, self.elapsed_ms(), answer, acc.usage, acc.finish_reason, ttft_ms=ttft, chunks=chunks)

    async def _broken(self, failure: Failure) -> Streamed:
        failure = dataclasses.replace(failure, message=failure.message + NOT_RETRIED)
        await self.relay.error(failure)
        acc = self.acc
        usage = acc.usage if acc is not None else Usage()
        return Streamed(Outcome(False, self.elapsed_ms(), usage=usage, failure=failure), relayed=True,
                        usage_seen=acc is not None and acc.usage_seen)

    def cancelled(self, reason: tuple[str, str]) -> Streamed:
        acc = self.acc
        if acc is not None and acc.done and acc.error is None and acc.malformed is None:
            # The caller closed after the answer's last event ([DONE], message_stop): complete.
            return Streamed(self._completed(acc), relayed=True, usage_seen=acc.usage_seen)
        code, message = reason
        if self.relayed and acc is not None:
            message = f"{message} after {acc.bytes} bytes ({acc.events} events), before it ended"
        elif not self.relayed:
            message = f"{message} before the stream started"
        failure = Failure(kind="cancelled", error_type="Cancelled", message=message)
        return Streamed(Outcome(False, self.elapsed_ms(), usage=acc.usage if acc is not None else Usage(),
                                failure=failure), relayed=self.relayed, cancelled=(code, message),
                        usage_seen=acc is not None and acc.usage_seen)


async def relay_attempt(engine: CallEngine, nc: NATS, item: WorkItem, rec: CallRecord, policy: Policy,
                        attempt: int, *, on_relayed: Callable[[], Awaitable[None]]) -> Streamed:
    """One streamed attempt of ``item`` (which has a ``relay``), its answer relayed as it comes.

    ``on_relayed`` runs once the first chunk is on its way to the caller (the executor
    records it, so a worker lost from then on is not retried into a second answer)."""
    spec = item.relay
    target = rec.target
    assert spec is not None and target is not None
    provider = engine.providers.get(target.provider)
    if provider is None:
        return Streamed(Outcome(False, 0.0, failure=Failure(
            kind="http", status_code=404, error_type="UnknownProvider",
            message=f"no provider {target.provider!r} configured in this worker "
                    f"(configured: {', '.join(sorted(engine.providers)) or 'none'})")))
    if engine.http is None:
        raise RuntimeError("this CallEngine has no HTTP client to make LLM attempts with")
    relay = _Relay(nc, spec, attempt)
    await relay.start()
    run = _Attempt(engine.http, provider, item, target, policy, relay, on_relayed)
    pump = asyncio.ensure_future(run.run())
    relay.on_cancel = pump.cancel
    try:
        return await pump
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if relay.cancelled is None or (task is not None and task.cancelling()):
            raise  # the worker itself is stopping
        return run.cancelled(relay.cancelled)
    finally:
        await relay.close()


async def record_cancelled(engine: CallEngine, item: WorkItem, rec: CallRecord, attempt: int, started_at: float,
                           cancelled: tuple[str, str], outcome: Outcome, usage_seen: bool) -> Event:
    """Publish ``failed`` (``Cancelled``, not dead-lettered) for a stream its caller stopped
    (``cancelled``: its code and message), and mark the record terminal; partial usage is
    charged to budgets when known, else the call's reservation is given back."""
    assert outcome.failure is not None
    code, message = cancelled
    engine.record_outcome(rec, attempt, outcome.failure, started_at)
    error = ErrorInfo(type="Cancelled", message=message, code=code, retryable=False)
    target = rec.target or Target(item.provider or "?", item.model or "?")
    event = Event.of(LlmCallFailed(call_id=item.call_id, provider=target.provider, model=target.model,
                                   attempts=len(rec.attempts), error=error),
                     id=terminal_id(item.call_id, "failed"), runid=item.runid, agentid=item.agentid,
                     traceparent=item.traceparent, source=engine.source,
                     extensions={"tenant": item.tenant} if item.tenant else None)
    receipt = await engine.bus.publish(event)
    rec.state = "failed"
    rec.error = error.model_dump(mode="json")
    rec.reason = "cancelled"
    rec.terminal_seq = receipt.stream_seq
    rec.terminal_event_id = event.id
    if usage_seen and engine.policies.budgets:
        await engine.account(item, outcome.usage, rec.target)
    else:
        await engine.release(item)
    return event


# -- the caller's end ------------------------------------------------------------------------


class RelayBroken(Exception):
    """A relayed stream ended without its end: the worker's error, a lost chunk, or silence.

    ``from_worker``: the worker said so (it knows; no need to cancel it)."""

    def __init__(self, code: str, message: str, *, error_type: str = "StreamError", from_worker: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error_type = error_type
        self.from_worker = from_worker


class RelayListener:
    """The caller's end of a relayed stream. :meth:`open` it before submitting the call,
    then :meth:`started`, then :meth:`next` until ``None``; :meth:`cancel` or :meth:`close`."""

    def __init__(self, nc: NATS, spec: RelaySpec, *, idle_timeout_s: float) -> None:
        self.nc = nc
        self.spec = spec
        self.idle_timeout_s = idle_timeout_s
        self.status = 200
        self.content_type = "text/event-stream"
        self.attempt: str | None = None
        self.bytes = 0
        self.ended = False
        self._seq = 0
        self._first: bytes | None = None
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._sub: Any = None

    @classmethod
    async def open(cls, nc: NATS, spec: RelaySpec, *, idle_timeout_s: float) -> RelayListener:
        listener = cls(nc, spec, idle_timeout_s=idle_timeout_s)
        listener._sub = await nc.subscribe(spec.subject, cb=listener._on_msg)
        return listener

    async def _on_msg(self, msg: Msg) -> None:
        if msg.reply and msg.headers and msg.headers.get(KIND) == "heartbeat":
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, b"")  # "still listening"
        self._queue.put_nowait(msg)

    async def started(self, timeout: float | None) -> dict[str, Any] | None:
        """Wait for the first chunk (``None``), or the call's final reply if it ended before
        one (its JSON). ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            msg = await asyncio.wait_for(self._queue.get(), left)
            headers = msg.headers or {}
            kind = headers.get(KIND)
            if kind is None:
                doc = json.loads(msg.data)
                return doc if isinstance(doc, dict) else {"state": "failed"}
            if kind != "chunk":
                continue  # heartbeats of an attempt still waiting for its first byte
            if headers.get(SEQ) != "1":
                raise RelayBroken("relay_gap", "the start of the relayed stream was lost")
            self.attempt = headers.get(ATTEMPT)
            self.status = int(headers.get(STATUS) or 200)
            self.content_type = headers.get(CONTENT_TYPE) or self.content_type
            self._seq = 1
            self._first = msg.data
            self.bytes = len(msg.data)
            return None

    async def next(self) -> bytes | None:
        """The next chunk, ``None`` at the end; :class:`RelayBroken` if the stream cannot go on."""
        if self._first is not None:
            chunk, self._first = self._first, None
            return chunk
        if self.ended:
            return None
        while True:
            try:
                msg = await asyncio.wait_for(self._queue.get(), self.idle_timeout_s)
            except TimeoutError:
                raise RelayBroken("relay_timeout", (
                    f"tether: no word from the worker relaying this stream for {self.idle_timeout_s:g} s, after "
                    f"{self.bytes} bytes (the worker is gone?); the stream is cut")) from None
            headers = msg.headers or {}
            kind = headers.get(KIND)
            if kind is None:  # the call's final reply, before its stream's end
                doc: Any = None
                with contextlib.suppress(ValueError):
                    doc = json.loads(msg.data)
                error = doc.get("error") if isinstance(doc, dict) else None
                if isinstance(error, dict):
                    raise RelayBroken("stream_broken", str(error.get("message") or error),
                                      error_type=str(error.get("type") or "StreamError"), from_worker=True)
                raise RelayBroken("relay_gap", "tether: the end of the relayed stream was lost", from_worker=True)
            seq = int(headers.get(SEQ) or 0)
            if headers.get(ATTEMPT) != self.attempt:
                if kind == "heartbeat":
                    continue
                raise RelayBroken("relay_restarted", (
                    "tether: the worker relaying this stream was lost and another attempt started; its answer "
                    "cannot be spliced into this one, so the stream is cut"))
            if kind == "heartbeat":
                if seq > self._seq:
                    raise RelayBroken("relay_gap", f"tether: chunk {self._seq + 1} of the relayed stream was lost")
                continue
            if seq <= self._seq:
                continue  # a duplicate
            if seq != self._seq + 1:
                raise RelayBroken("relay_gap", f"tether: chunk {self._seq + 1} of the relayed stream was lost")
            self._seq = seq
            if kind == "chunk":
                self.bytes += len(msg.data)
                return msg.data
            if kind == "end":
                self.ended = True
                return None
            if kind == "error":
                doc = {}
                with contextlib.suppress(ValueError):
                    doc = json.loads(msg.data)
                raise RelayBroken(str(doc.get("code") or "stream_broken"),
                                  str(doc.get("message") or "the stream broke"),
                                  error_type=str(doc.get("type") or "StreamError"), from_worker=True)

    async def cancel(self, code: str, message: str) -> None:
        """Tell the worker to stop relaying (it records why), and stop listening."""
        with contextlib.suppress(Exception):
            await self.nc.publish(self.spec.subject + ".cancel",
                                  json.dumps({"code": code, "message": message}).encode())
        await self.close()

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
