"""The publisher: validated events onto JetStream, acked, deduped, never lost.

Two ways in:

* ``await publisher.publish(event)`` returns once the event is acked by the stream or
  safely in the outbox, never later than ``ack_timeout_s``;
* ``await publisher.emit(event)`` returns as soon as the event is handed to NATS
  (batched, many in flight); ``await publisher.flush()`` then guarantees every
  emitted event is acked or in the outbox.

The event id is the ``Nats-Msg-Id``, so JetStream drops a repeat within its dedupe
window. When NATS is unreachable, an ack does not come in time, or too many events
are in flight for too long, the publisher *degrades*: every unacked event, in order,
and every later one goes to the local outbox, which a background task flushes in
order once NATS answers again. Order per publisher (and so per run) is kept. A message
NATS can never accept (``_deliverable``) is no outage: it is refused at once
(``Undeliverable``), and such a row in an outbox is set aside with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from tether.schemas import Event, EventError

from ._acked import DUPLICATE_IN_PROCESS
from ._batch import Batch
from ._binding import percent_encode
from ._client import Client
from ._deliverable import CLAIM_CHECK_HEADER_BYTES, oversized, undeliverable
from ._headers import HeaderBlock, message_headers
from ._natspriv import HookedClient, forget_unflushed, subscription_id
from ._outbox import Outbox, OutboxFull, OutboxRow, PendingMessage, orphaned_outboxes
from ._streams import OBJECT_BUCKET
from ._wireform import encode_message

__all__ = ["PayloadTooLarge", "PublishRejected", "Publisher", "PublisherStats", "Receipt", "Undeliverable"]

log = logging.getLogger("tether.bus")

MSG_ID = "Nats-Msg-Id"
DATAREF_SCHEME = "nats-obj://"


class PayloadTooLarge(EventError):
    """The event's data is above ``max_event_bytes``, even for the object store."""


class PublishRejected(RuntimeError):
    """The stream refused the event for good (not a transient failure)."""

    def __init__(self, event_id: str, error: str, *, message: str | None = None) -> None:
        super().__init__(message or f"event {event_id} refused by NATS: {error}")
        self.event_id = event_id
        self.error = error


class Undeliverable(PublishRejected):
    """NATS can never accept the message (malformed subject or header, above the server's
    ``max_payload``): refused before it is sent, and never put in the outbox."""

    def __init__(self, event_id: str, error: str) -> None:
        super().__init__(event_id, error, message=f"event {event_id} can never be delivered, so it "
                                                  f"was not published: {error}")


_PERMANENT = (nats.errors.BadSubjectError, nats.errors.MaxPayloadError)
"""nats-py's errors for a message no server will take: not an outage."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """What happened to one published event."""

    id: str
    stream_seq: int | None = None
    duplicate: bool = False
    outboxed: bool = False


@dataclass
class PublisherStats:
    sent: int = 0
    acked: int = 0
    duplicates: int = 0
    outboxed: int = 0
    flushed: int = 0
    rejected: int = 0
    dropped: int = 0
    claim_checks: int = 0
    degraded_since: float | None = None
    last_error: str | None = None


@dataclass(slots=True)
class _Inflight:
    message: PendingMessage
    sent_at: float
    waiter: asyncio.Future[Receipt] | None = None
    batch: Batch | None = None
    index: int = 0


class _Transient(Exception):
    pass


class Publisher:
    """Publishes events on one NATS connection. Create it with :func:`tether.bus.connect`."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        outbox_dir: Path,
        *,
        ack_timeout_s: float = 5.0,
        max_pending: int = 8192,
        max_block_s: float = 1.0,
        large_payload_bytes: int = 256 * 1024,
        max_event_bytes: int = 64 * 1024 * 1024,
        outbox_max_bytes: int = 512 * 1024 * 1024,
        on_reject: Callable[[PendingMessage, str], None] | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._outbox_dir = outbox_dir
        self.ack_timeout_s = ack_timeout_s
        self.max_pending = max_pending
        self.max_block_s = max_block_s
        self.large_payload_bytes = large_payload_bytes
        self.max_event_bytes = max_event_bytes
        self.outbox_max_bytes = outbox_max_bytes
        self._on_reject = on_reject
        self.stats = PublisherStats()
        self._prefix = ""
        self._prefix_bytes = b""
        self._sub: Any = None
        self._raw_sid: int | None = None
        self._inflight: dict[int, _Inflight] = {}
        self._flushing: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._flushing_subjects: dict[int, str] = {}
        self._seq = 0
        self._degraded = False
        self._outbox: Outbox | None = None
        self._orphans: list[Outbox] = []
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._kick = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._objects: ObjectStore | None = None
        self._closed = False
        self._full_error: OutboxFull | None = None
        # emit() does not wait, so nothing reaches the socket until the loop turns. nats-py
        # writes its buffer once it holds pending_size bytes (2 MiB by default), but tether
        # connects with pending_size=0 (no buffering while disconnected), which turns that
        # off too: emit() yields to nats-py's flusher at the same point instead.
        self.write_at_bytes = 2 * 1024 * 1024

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        self._prefix_bytes = self._prefix.encode()
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        if isinstance(self._nc, Client):  # each ack read as the parser hands it over: no Msg, queue entry or task
            self._raw_sid = subscription_id(self._sub)
            self._nc.add_raw_sink(self._raw_sid, self._on_raw_reply)
        self._orphans = list(orphaned_outboxes(self._outbox_dir))
        for box in self._orphans:
            box.max_bytes = self.outbox_max_bytes
            if box.depth():
                log.warning("adopting outbox %s with %d event(s) left by an earlier process",
                            box.path.name, box.depth())
                self._drained.clear()
        self._tasks = [
            asyncio.create_task(self._sweep(), name="tether-publisher-sweep"),
            asyncio.create_task(self._flush_loop(), name="tether-outbox-flush"),
        ]
        self._kick.set()

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is in flight, try to drain the outbox, keep the rest for next start."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            await self.flush(timeout)
        if self._nc.is_connected:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.drain(), timeout)
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._raw_sid is not None and isinstance(self._nc, Client):
            self._nc.remove_raw_sink(self._raw_sid)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for box in [*self._orphans, *([self._outbox] if self._outbox else [])]:
            if box.depth():
                log.warning("%d event(s) stay in outbox %s until the next start",
                            box.depth(), box.path.name)
            box.close()

    # -- publishing --------------------------------------------------------------------

    def prepare(self, event: Event) -> PendingMessage:
        """Encode an event into the message tether publishes (binary content mode)."""
        if not isinstance(event, Event):
            raise EventError(f"publish takes a tether.schemas.Event, got {type(event).__name__}; "
                             "wrap payloads with Event.of(payload, runid=..., agentid=...)")
        return self._checked(event, *encode_message(event))

    def prepare_many(self, events: Sequence[Event]) -> list[PendingMessage]:
        """:meth:`prepare` for a batch: the same messages, their header blocks written from one
        template where the events share every attribute but id and time. One event that can
        never be delivered refuses the whole batch, naming it (its index in ``events``)."""
        for i, event in enumerate(events):
            if not isinstance(event, Event):
                raise EventError(f"event {i} of the batch is a {type(event).__name__}, not a tether.schemas.Event; "
                                 "wrap payloads with Event.of(payload, runid=..., agentid=...)")
        out = []
        for i, event in enumerate(events):
            try:
                out.append(self._checked(event, *encode_message(event)))
            except Undeliverable as exc:
                raise Undeliverable(event.id, f"event {i} of the batch of {len(events):,}: {exc.error}; "
                                              "none of the batch was published") from None
            except PayloadTooLarge as exc:
                raise PayloadTooLarge(f"event {i} of the batch of {len(events):,}: {exc.args[0]}; none of the "
                                      "batch was published", event_type=event.type) from None
        return out

    def _checked(self, event: Event, subject: str, headers: dict[str, str], payload: bytes) -> PendingMessage:
        size = len(payload)
        if size > self.max_event_bytes:
            raise PayloadTooLarge(
                f"{event.type} data is {size:,} bytes; the limit is "
                f"{self.max_event_bytes:,} (max_event_bytes). Store large blobs elsewhere and "
                "reference them", event_type=event.type)
        message = PendingMessage(event.id, subject, headers, payload)
        # Well formed by construction (see _deliverable.malformed): only the size can be wrong. A block
        # written beforehand is the header's exact size: most messages are let through on that sum.
        max_payload = self._nc.max_payload or 0
        if max_payload and (type(headers) is not HeaderBlock or len(headers.block) + (
                size if size <= self.large_payload_bytes else CLAIM_CHECK_HEADER_BYTES) > max_payload):
            problem = oversized(message, max_payload=max_payload, claim_check_above=self.large_payload_bytes)
            if problem is not None:
                raise Undeliverable(event.id, problem)
        return message

    async def publish(self, event: Event) -> Receipt:
        """Publish and wait for the ack (or the outbox); at most ``ack_timeout_s``."""
        return await (await self.publish_nowait(event))

    async def publish_nowait(self, event: Event) -> asyncio.Future[Receipt]:
        """:meth:`publish`, returning once the event is handed to NATS: the future gets its receipt
        at the ack (or the outbox's), or the error :meth:`publish` would raise. Events published
        after it are not held back while it waits (an adapter's caller waits for it off this loop)."""
        waiter: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        message = self.prepare(event)
        if self._degraded or not self._nc.is_connected:
            self._divert(message, "NATS not connected", waiter)
            return waiter
        await self._wait_for_room()
        if self._degraded:
            self._divert(message, "backpressure", waiter)
            return waiter
        await self._send(message, waiter)
        return waiter

    async def emit(self, event: Event) -> None:
        """Hand an event to NATS without waiting for its ack. See :meth:`flush`."""
        message = self.prepare(event)
        if self._degraded or not self._nc.is_connected:
            self._divert(message, "NATS not connected")
            return
        if len(self._inflight) >= self.max_pending:
            await self._wait_for_room()
            if self._degraded:
                self._divert(message, "backpressure")
                return
        await self._send(message, None)

    def send_now(self, event: Event, waiter: asyncio.Future[Receipt] | None = None, *, write: bool = True) -> bool:
        """:meth:`emit` (or, with ``waiter``, :meth:`publish_nowait`) done at once, from a callback on
        the publisher's loop: the event handed to NATS in this iteration of the loop, not the next.
        ``False``, and nothing sent, when that cannot be done without waiting (degraded or not
        connected, ``max_pending`` events in flight, a payload for the object store, nats-py's
        buffer or flusher busy): the caller then goes the awaited way, behind nothing. Raises what
        :meth:`prepare` raises, and ``Undeliverable`` for what nats-py refuses for good. ``write=False``:
        the message waits in nats-py's buffer for :meth:`write_now` (one write for several events)."""
        nc = self._nc
        if (self._degraded or not isinstance(nc, HookedClient) or not nc.is_connected
                or len(self._inflight) >= self.max_pending or nc.pending_data_size > self.write_at_bytes):
            return False
        message = self.prepare(event)
        headers = message.headers
        block = headers if type(headers) is HeaderBlock else HeaderBlock.of(headers)
        if len(message.payload) > self.large_payload_bytes or type(block) is not HeaderBlock:
            return False
        self._seq += 1
        seq = self._seq
        self._inflight[seq] = _Inflight(message, time.monotonic(), waiter)
        self._idle.clear()
        try:
            sent = nc.publish_now(message.subject, self._prefix + str(seq), message.payload, block, kick=write)
        except _PERMANENT as exc:  # no server will take it: refused, not an outage
            self._inflight.pop(seq, None)
            self._after_change()
            raise Undeliverable(message.id, str(exc)) from None
        except (nats.errors.Error, OSError) as exc:
            self._degrade(f"publish failed: {exc!r}")  # the event, in flight, goes to the outbox first
            return True
        if not sent:
            self._inflight.pop(seq, None)
            self._after_change()
            return False
        self.stats.sent += 1
        return True

    def write_now(self) -> None:
        """Write what :meth:`send_now` left in nats-py's buffer (``write=False``): now, as nats-py's
        flusher would, when nothing else waits to be written; else the flusher writes it."""
        if isinstance(self._nc, HookedClient):
            self._nc.write_now()

    async def emit_batch(self, events: Sequence[Event]) -> Batch:
        """Emit a batch of events (:meth:`emit` for each, prepared together first) and return its
        :class:`Batch`, which tells, once settled (``await batch.wait()``), which events the stream
        acked, which wait in the outbox and which NATS refused for good.

        Every event is prepared before any is sent: one that can never be delivered (too large)
        raises ``Undeliverable`` or ``PayloadTooLarge`` and nothing of the batch is published.
        :meth:`flush` waits for the batch's events too.
        """
        return await self.emit_prepared(self.prepare_many(events))

    async def emit_prepared(self, messages: Sequence[PendingMessage]) -> Batch:
        """:meth:`emit_batch` for messages :meth:`prepare_many` made already (a producer that checks a
        whole batch before it sends any, then sends it in parts as it builds them)."""
        batch = Batch(len(messages))
        for index, message in enumerate(messages):
            if self._degraded or not self._nc.is_connected:
                self._divert_batched(message, "NATS not connected", batch, index)
                continue
            if len(self._inflight) >= self.max_pending:
                await self._wait_for_room()
                if self._degraded:
                    self._divert_batched(message, "backpressure", batch, index)
                    continue
            await self._send(message, None, batch, index)
        return batch

    def _divert_batched(self, message: PendingMessage, reason: str, batch: Batch, index: int) -> None:
        try:
            self._divert(message, reason)
        except OutboxFull as exc:
            batch.refuse(index, str(exc))
        else:
            batch.keep(index)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every emitted event is acked or in the outbox.

        Raises ``OutboxFull`` if events had to be dropped because the outbox was full.
        """
        await self.when_flushed(timeout)

    def when_flushed(self, timeout: float | None = None) -> asyncio.Future[None]:
        """:meth:`flush` as a future, for a callback on the publisher's loop: done once every event
        emitted so far is acked or in the outbox; ``TimeoutError`` after ``timeout`` (default: twice
        the ack timeout and a second), ``OutboxFull`` as :meth:`flush` raises it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._idle.is_set():
            self._flushed(done)
            return done
        wait = timeout if timeout is not None else self.ack_timeout_s * 2 + 1
        self._flush_waiters.append(done)
        timer = loop.call_later(wait, _time_out, done, wait)
        done.add_done_callback(lambda _: timer.cancel())
        return done

    def _flushed(self, done: asyncio.Future[None]) -> None:
        if done.done():  # its waiter gave up (a timeout, a cancelled caller)
            return
        if self._full_error is not None:
            err, self._full_error = self._full_error, None
            done.set_exception(err)
        else:
            done.set_result(None)

    async def drain(self) -> None:
        """Wait until the outbox is empty too (NATS must be reachable for that)."""
        await self.flush()
        self._kick.set()
        await self._drained.wait()

    @property
    def degraded(self) -> bool:
        """True while events are going to the outbox instead of straight to NATS."""
        return self._degraded

    def in_flight(self) -> int:
        return len(self._inflight)

    def outbox_depth(self) -> int:
        own = self._outbox.depth() if self._outbox else 0
        return own + sum(b.depth() for b in self._orphans)

    # -- internals ---------------------------------------------------------------------

    def _undeliverable(self, message: PendingMessage) -> str | None:
        return undeliverable(message, max_payload=self._nc.max_payload or 0,
                             claim_check_above=self.large_payload_bytes)

    async def _wait_for_room(self) -> None:
        if len(self._inflight) < self.max_pending:
            return
        self._room.clear()
        try:
            await asyncio.wait_for(self._room.wait(), self.max_block_s)
        except TimeoutError:
            self._degrade(f"{len(self._inflight)} events unacked for {self.max_block_s}s (backpressure)")

    async def _claim_check(self, message: PendingMessage) -> PendingMessage:
        if self._objects is None:
            self._objects = await self._js.object_store(OBJECT_BUCKET)
        await self._objects.put(message.id, message.payload)
        self.stats.claim_checks += 1
        headers = dict(message.headers)
        headers["ce-dataref"] = percent_encode(f"{DATAREF_SCHEME}{OBJECT_BUCKET}/{message.id}")
        return PendingMessage(message.id, message.subject, headers, b"")

    async def _send(self, message: PendingMessage, waiter: asyncio.Future[Receipt] | None,
                    batch: Batch | None = None, index: int = 0) -> None:
        wire = message
        if len(message.payload) > self.large_payload_bytes:
            try:
                wire = await self._claim_check(message)
            except Exception as exc:  # NATS trouble while storing the object
                if batch is not None:
                    self._divert_batched(message, f"object store: {exc}", batch, index)
                else:
                    self._divert(message, f"object store: {exc}", waiter)
                return
            if self._degraded:
                if batch is not None:
                    self._divert_batched(message, "NATS not connected", batch, index)
                else:
                    self._divert(message, "NATS not connected", waiter)
                return
        self._seq += 1
        seq = self._seq
        # The outbox keeps the original message (claim check redone on flush).
        self._inflight[seq] = _Inflight(message, time.monotonic(), waiter, batch, index)
        self._idle.clear()
        headers = wire.headers
        try:
            await self._nc.publish(wire.subject, wire.payload, reply=self._prefix + str(seq),
                                   headers=headers if type(headers) is HeaderBlock else HeaderBlock.of(headers))
        except _PERMANENT as exc:  # no server will take it: refused, not an outage
            self._inflight.pop(seq, None)
            self._after_change()
            if batch is not None:
                batch.refuse(index, str(exc))
                return
            raise Undeliverable(message.id, str(exc)) from None
        except (nats.errors.Error, OSError) as exc:
            self._degrade(f"publish failed: {exc!r}")
            return
        self.stats.sent += 1
        if self._nc.pending_data_size > self.write_at_bytes:
            await asyncio.sleep(0)  # let nats-py's flusher write what emit() buffered (see __init__)

    def _on_raw_reply(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """An ack as nats-py's parser hands it to tether's client (its header block as bytes, if any)."""
        self._reply(subject[len(self._prefix_bytes):], data, message_headers(headers) if headers else None)

    async def _on_reply(self, msg: Msg) -> None:
        """An ack through nats-py's subscription (a client that is not tether's)."""
        self._reply(msg.subject[len(self._prefix):], msg.data, msg.headers)

    def _reply(self, tail: str | bytes, data: bytes, headers: dict[str, str] | None) -> None:
        try:
            seq = int(tail)
        except ValueError:
            return
        if self._flushing:
            flushing = self._flushing.pop(seq, None)
            if flushing is not None:
                if not flushing.done():
                    flushing.set_result(_parse_ack(data, headers))
                return
        entry = self._inflight.pop(seq, None)
        if entry is None:
            return  # already timed out into the outbox; dedupe covers the re-send
        if entry.waiter is None and not headers and data.startswith(b'{"stream":') \
                and b'"error"' not in data:
            # Hot path: a plain ack of an emitted event needs no JSON parsing.
            self.stats.acked += 1
            if b'"duplicate":true' in data:
                self.stats.duplicates += 1
            if entry.batch is not None:
                entry.batch.ack()
            self._after_change()
            return
        ack = _parse_ack(data, headers)
        if ack.get("transient"):
            self._degrade(str(ack["error"]), extra={seq: entry})
            return
        if "error" in ack:
            self._rejected(entry.message, str(ack["error"]))
            if entry.waiter is not None and not entry.waiter.done():
                entry.waiter.set_exception(PublishRejected(entry.message.id, str(ack["error"])))
            if entry.batch is not None:
                entry.batch.refuse(entry.index, str(ack["error"]))
        else:
            self.stats.acked += 1
            dup = bool(ack.get("duplicate"))
            self.stats.duplicates += dup
            if entry.waiter is not None and not entry.waiter.done():
                entry.waiter.set_result(Receipt(entry.message.id, ack.get("seq"), dup))
            if entry.batch is not None:
                entry.batch.ack()
        self._after_change()

    def _after_change(self) -> None:
        if not self._room.is_set() and len(self._inflight) < self.max_pending * 3 // 4:
            self._room.set()
        if not self._inflight:
            self._idle.set()
            if self._flush_waiters:
                waiters, self._flush_waiters = self._flush_waiters, []
                for done in waiters:
                    self._flushed(done)

    def _rejected(self, message: PendingMessage, error: str) -> None:
        self.stats.rejected += 1
        self.stats.last_error = error
        log.error("event %s on %s refused by NATS: %s (kept in the outbox's rejected table)",
                  message.id, message.subject, error)
        try:
            self._own_outbox().add_rejected(message, error)
        except Exception:  # the log line above is then the only record
            log.exception("could not keep refused event %s", message.id)
        if self._on_reject is not None:
            self._on_reject(message, error)

    def _degrade(self, reason: str, extra: dict[int, _Inflight] | None = None) -> None:
        """Move every unacked event, in order, to the outbox; later ones follow it there."""
        moved = dict(self._inflight)
        if extra:
            moved.update(extra)
        self._inflight.clear()
        if not self._degraded:
            log.warning("NATS publish degraded (%s): events go to the local outbox until it answers",
                        reason)
            self.stats.degraded_since = time.time()
        self._degraded = True
        self.stats.last_error = reason
        entries = [moved[k] for k in sorted(moved)]
        try:
            self._to_outbox([e.message for e in entries])
            outcome: Receipt | OutboxFull | None = None
        except OutboxFull as exc:
            outcome = exc
            if any(e.waiter is None for e in entries):
                self._full_error = exc  # emitted events lost: flush() must say so
        for e in entries:
            if e.waiter is not None and not e.waiter.done():
                if isinstance(outcome, OutboxFull):
                    e.waiter.set_exception(outcome)
                else:
                    e.waiter.set_result(Receipt(e.message.id, outboxed=True))
            if e.batch is not None:
                if isinstance(outcome, OutboxFull):
                    e.batch.refuse(e.index, str(outcome))
                else:
                    e.batch.keep(e.index)
        self._after_change()
        self._room.set()

    def _own_outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox.create(self._outbox_dir, max_bytes=self.outbox_max_bytes)
        return self._outbox

    def _divert(self, message: PendingMessage, reason: str,
                waiter: asyncio.Future[Receipt] | None = None) -> None:
        """Send a new event to the outbox, behind every older event still in flight.

        nats-py reports the connection down before tether's disconnect callback runs; an
        event published in that gap must not overtake the unacked ones, so they go first.
        """
        if self._inflight or not self._degraded:
            self._degrade(reason)
        try:
            self._to_outbox([message])
        except OutboxFull as exc:
            if waiter is None:
                raise
            if not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter is not None and not waiter.done():
            waiter.set_result(Receipt(message.id, outboxed=True))

    def _to_outbox(self, messages: list[PendingMessage]) -> None:
        if not messages:
            return
        self._degraded = True
        if self.stats.degraded_since is None:
            self.stats.degraded_since = time.time()
        try:
            self._own_outbox().add(messages)
        except OutboxFull as exc:
            self.stats.dropped += len(messages)
            log.error("%s (%d event(s) refused)", exc, len(messages))
            raise
        self.stats.outboxed += len(messages)
        self._drained.clear()
        self._kick.set()

    def on_disconnect(self) -> None:
        """Called by the bus when the connection drops."""
        # nats-py re-sends its unflushed write buffer after reconnecting. Those
        # messages are unacked, so they are in the outbox already; re-sending them
        # behind the outbox's back could reorder them, so forget the buffer.
        forget_unflushed(self._nc)
        if self._inflight:
            self._degrade("connection to NATS lost")

    def on_reconnect(self) -> None:
        self._kick.set()

    def on_publish_denied(self, subject: str) -> None:
        """The server refused a publish on ``subject`` (NATS permissions): for good, not transient."""
        # nats-py hands the server's words over in lower case: match the subject case-blind.
        subject = subject.lower()

        def error(real: str) -> str:
            return f"permission denied: this connection may not publish to {real}"

        for seq in [s for s, e in self._inflight.items() if e.message.subject.lower() == subject]:
            entry = self._inflight.pop(seq)
            self._rejected(entry.message, error(entry.message.subject))
            if entry.waiter is not None and not entry.waiter.done():
                entry.waiter.set_exception(PublishRejected(entry.message.id, error(entry.message.subject)))
            if entry.batch is not None:
                entry.batch.refuse(entry.index, error(entry.message.subject))
        for seq, subj in [(s, subj) for s, subj in self._flushing_subjects.items() if subj.lower() == subject]:
            fut = self._flushing.pop(seq, None)
            if fut is not None and not fut.done():
                fut.set_result({"error": error(subj), "transient": False})
        self._after_change()

    async def _sweep(self) -> None:
        interval = max(0.01, min(0.25, self.ack_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            if self._inflight:
                oldest = next(iter(self._inflight.values()))
                if time.monotonic() - oldest.sent_at > self.ack_timeout_s:
                    self._degrade(f"no ack within {self.ack_timeout_s}s")

    async def _flush_loop(self) -> None:
        backoff = 0.1
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                await self._flush_outboxes()
                backoff = 0.1
            except _Transient as exc:
                log.info("outbox flush paused: %s; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._kick.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the flusher die silently
                log.exception("outbox flush failed; retrying")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._kick.set()

    async def _flush_outboxes(self) -> None:
        while self._orphans:
            box = self._orphans[0]
            await self._flush_box(box)
            self._orphans.pop(0)
            box.close()
        if self._outbox is not None:
            await self._flush_box(self._outbox)
        # Synchronous from the emptiness check to here: no event can slip in between.
        if not self._orphans and (self._outbox is None or self._outbox.depth() == 0):
            if self._degraded:
                log.warning("NATS publish recovered: outbox flushed")
            self._degraded = False
            self.stats.degraded_since = None
            self._drained.set()

    async def _flush_box(self, box: Outbox) -> None:
        while box.depth():
            if not self._nc.is_connected:
                raise _Transient("NATS not connected")
            rows = box.peek(256)
            results = await self._publish_rows(rows)
            done_through = None
            for row, ack in zip(rows, results, strict=True):
                if ack is None or ack.get("transient"):
                    break
                if "error" in ack:
                    box.reject(row, str(ack["error"]))
                    self.stats.rejected += 1
                    self.stats.last_error = str(ack["error"])
                    log.error("outbox event %s on %r can never be delivered, set aside in %s "
                              "(rejected): %s", row.message.id, row.message.subject, box.path.name,
                              ack["error"])
                    continue
                done_through = row.seq
                self.stats.flushed += 1
            if done_through is not None:
                box.remove_through(done_through)
            if any(a is None or a.get("transient") for a in results):
                first = next(a for a in results if a is None or a.get("transient"))
                raise _Transient("no ack" if first is None else str(first["error"]))

    async def _publish_rows(self, rows: list[OutboxRow]) -> list[dict[str, Any] | None]:
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[dict[str, Any]]] = []
        for row in rows:
            wire = row.message
            problem = self._undeliverable(wire)
            if problem is not None:  # written by an older tether, or for another server
                refused: asyncio.Future[dict[str, Any]] = loop.create_future()
                refused.set_result({"error": problem, "transient": False})
                waits.append(refused)
                continue
            if len(wire.payload) > self.large_payload_bytes:
                try:
                    wire = await self._claim_check(wire)
                except Exception as exc:
                    raise _Transient(f"object store: {exc}") from exc
            self._seq += 1
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._flushing[self._seq] = fut
            self._flushing_subjects[self._seq] = wire.subject
            waits.append(fut)
            try:
                await self._nc.publish(wire.subject, wire.payload,
                                       reply=self._prefix + str(self._seq), headers=wire.headers)
            except _PERMANENT as exc:
                fut.set_result({"error": str(exc), "transient": False})
            except (nats.errors.Error, OSError) as exc:
                fut.set_result({"error": repr(exc), "transient": True})
                break
        out: list[dict[str, Any] | None] = []
        deadline = time.monotonic() + self.ack_timeout_s
        for fut in waits:
            try:
                out.append(await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                out.append(None)
        out.extend([None] * (len(rows) - len(out)))
        for seq in [s for s, f in self._flushing.items() if f in waits]:
            self._flushing.pop(seq, None)
        self._flushing_subjects = {s: subj for s, subj in self._flushing_subjects.items()
                                   if s in self._flushing}
        return out


def _time_out(done: asyncio.Future[None], wait: float) -> None:
    if not done.done():
        done.set_exception(TimeoutError(f"events still unacked after {wait:g} s"))


def _parse_ack(data: bytes, headers: dict[str, str] | None) -> dict[str, Any]:
    """A JetStream publish ack as a dict; ``transient`` marks errors worth retrying."""
    headers = headers or {}
    status = headers.get("Status")
    if status:
        # 503 No Responders: no stream for the subject (yet), or JetStream is down.
        return {"error": f"status {status} {headers.get('Description', '')}".strip(),
                "transient": status in {"503", "408"}}
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return {"error": f"unreadable ack: {data[:200]!r}", "transient": True}
    err = doc.get("error")
    if err:
        code = err.get("code")
        # 10158: a message with this id is being stored right now (a cluster proposing it): not a
        # refusal; sent again, JetStream's dedupe answers for it.
        return {"error": f"{err.get('description', err)} (code {code}, err_code {err.get('err_code')})",
                "transient": code in {503, 408, 500} or err.get("err_code") == DUPLICATE_IN_PROCESS}
    return doc
