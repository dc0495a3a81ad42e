"""A lean reader of one JetStream pull consumer, for folds that read the log in order.

nats-py's ``fetch`` turns every message into a header dict, a ``Msg``, a queue entry and
a ``wait_for`` with its own task and inbox token; reading the log that way costs more
than folding it. A :class:`PullFeed` owns a consumer with ``AckPolicy.NONE`` (the reader
keeps its own position, as the projector does in each view's SQLite file), takes the
messages as the protocol parser hands them over (a raw sink of :class:`Client`), and
keeps two pull requests outstanding so the server is sending the next batch while the
caller folds this one.

Nothing is skipped without notice: each delivery carries the consumer sequence, and a
jump in it (messages delivered while the connection was down, say) makes the feed
recreate its consumer right after the last message it handed out. A pull request lost
with a connection is noticed when no message and no status came for longer than its
expiry, and replaced. Deliveries lost with no later one to show the jump (a cluster's
consumer leader killed as it sent them, then no new event) are noticed by asking the
consumer, once per expiry while the feed is idle, how far it has delivered; a consumer that
is gone (deleted, or lost with its node) is made again after the last message handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any, NamedTuple

import nats.errors
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ._client import Client, parse_headers
from ._natspriv import api_prefix, subscription_id

__all__ = ["FeedMessage", "PullFeed"]

log = logging.getLogger("tether.bus")

_HDR_START = len(b"NATS/1.0\r\n")
_STATUS = b"NATS/1.0 "


class FeedMessage(NamedTuple):
    """One message of the log: where it is, when the server stored it, what it holds.

    (A named tuple: the feed makes one per message, and a frozen dataclass costs twice as
    much to build.)"""

    subject: str
    header_block: bytes | None
    """The raw header lines (what follows ``NATS/1.0\\r\\n``), None if there are none; see
    :func:`~tether.bus.decode_block`."""
    data: bytes
    seq: int
    time: float
    """When the server stored it, in seconds since the epoch."""
    pending: int
    """Messages after this one that the consumer had not delivered yet."""

    @property
    def headers(self) -> dict[str, str] | None:
        """The headers as nats-py would give them (parsed on each access)."""
        return parse_headers(self.header_block) if self.header_block else None


class FeedError(RuntimeError):
    """The server ended a pull request with an error (its status and description)."""


_PASSING_409 = (b"Leadership Change", b"Server Shutdown")
"""409s that end one pull request, not the consumer: on a cluster, its leader moved or its node is
stopping (a rolling restart). The next request goes to the new leader."""
_GONE_409 = (b"Consumer Deleted",)
"""409s that say the consumer is gone: the feed makes it again after the last message it handed out."""


class PullFeed:
    """Reads ``filter_subject`` of ``stream`` from ``start_seq`` on, in order, without acks.

    ``durable`` names a consumer that outlives the connection (deleted and recreated at
    :meth:`start`: the caller's position is the truth); without it the consumer is
    ephemeral and the server removes it ``inactive_threshold`` seconds after the feed
    stops asking.
    """

    def __init__(self, nc: Client, js: object, stream: str, filter_subject: str, *, start_seq: int = 1,
                 durable: str | None = None, batch: int = 1000, expires: float = 5.0,
                 inactive_threshold: float = 60.0) -> None:
        if not isinstance(nc, Client):
            raise TypeError("PullFeed needs tether's NATS client (tether.bus.connect gives one)")
        self._nc = nc
        self._js = js
        self.stream = stream
        self.filter_subject = filter_subject
        self.durable = durable
        self.batch = batch
        self.expires = expires
        self.inactive_threshold = inactive_threshold
        self.name: str | None = None
        self.last_seq = start_seq - 1
        """The stream sequence of the last message handed out."""
        self.head_hint = 0
        """The stream's last sequence as the latest delivery told it (sequence + pending)."""
        self.restarts = 0
        self._sid: int | None = None
        self._sub: Subscription | None = None
        self._inbox = ""
        self._next_subject = ""
        self._buf: list[tuple[bytes, bytes, bytes, bytes | None]] = []
        self._outstanding: deque[int] = deque()
        self._cseq = 0
        self._gap: bool | str = False
        """True (or why) when the consumer must be made again after the last message handed out."""
        self._error: str | None = None
        self._wake = asyncio.Event()
        self._activity = time.monotonic()
        self._delivered_at = self._checked_at = time.monotonic()
        self._reconnects = nc.stats["reconnects"]

    # -- the consumer ------------------------------------------------------------------------

    async def start(self) -> PullFeed:
        await self._open(self.last_seq + 1)
        return self

    async def _open(self, start_seq: int) -> None:
        js = self._js
        if self.durable:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(self.stream, self.durable)  # type: ignore[attr-defined]
        config = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.NONE,
                                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start_seq),
                                filter_subject=self.filter_subject,
                                inactive_threshold=None if self.durable else self.inactive_threshold)
        info = await js.add_consumer(self.stream, config)  # type: ignore[attr-defined]
        self.name = info.name
        self._inbox = self._nc.new_inbox()
        self._next_subject = f"{api_prefix(js)}.CONSUMER.MSG.NEXT.{self.stream}.{self.name}"
        self._sub = sub = await self._nc.subscribe(self._inbox)
        self._sid = subscription_id(sub)
        self._nc.add_raw_sink(self._sid, self._on_message)
        self._buf = []
        self._outstanding.clear()
        self._cseq = 0
        self._gap = False
        self._error = None
        self._activity = self._delivered_at = self._checked_at = time.monotonic()

    async def _close_subscription(self) -> None:
        if self._sid is None:
            return
        sid, self._sid = self._sid, None
        sub, self._sub = self._sub, None
        self._nc.remove_raw_sink(sid)
        if sub is not None:
            with contextlib.suppress(Exception):  # a closed connection has forgotten it already
                await sub.unsubscribe()

    async def close(self, *, delete: bool | None = None) -> None:
        """Stop reading. The consumer is deleted if it is ephemeral (or ``delete``)."""
        await self._close_subscription()
        if (not self.durable if delete is None else delete) and self.name:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self.stream, self.name)  # type: ignore[attr-defined]

    async def _restart(self) -> None:
        """The consumer skipped messages (or is gone): read again right after the last one handed out."""
        self.restarts += 1
        why = self._gap if isinstance(self._gap, str) else f"deliveries skipped a message (consumer seq jumped " \
                                                          f"past {self._cseq})"
        log.warning("feed %s on %s: %s; restarting at stream seq %d", self.name, self.stream, why,
                    self.last_seq + 1)
        old = self.name
        await self._close_subscription()
        if not self.durable and old:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self.stream, old)  # type: ignore[attr-defined]
        await self._open(self.last_seq + 1)

    # -- messages ----------------------------------------------------------------------------

    def _on_message(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self._activity = time.monotonic()
        if not data and headers is not None and headers.startswith(_STATUS):
            code = headers[9:12]
            if code == b"100":  # an idle heartbeat: nothing ended
                return
            if self._outstanding:  # 404 no messages, 408 expired, 409: this request is over
                self._outstanding.popleft()
            if code == b"409" and any(gone in headers for gone in _GONE_409):
                self._gap = "its consumer is gone (" + headers[9:].split(b"\r\n", 1)[0].decode("utf-8", "replace") \
                    + ")"
            elif code == b"409" and not any(passing in headers for passing in _PASSING_409):
                self._error = headers[9:].split(b"\r\n", 1)[0].decode("utf-8", "replace")
            self._wake.set()
            return
        if self._gap:
            return
        self._delivered_at = self._activity
        self._buf.append((subject, reply, data, headers))
        if self._outstanding:
            left = self._outstanding[0] - 1
            if left:
                self._outstanding[0] = left
            else:
                self._outstanding.popleft()
        self._wake.set()

    async def _top_up(self) -> None:
        reconnects = self._nc.stats["reconnects"]
        if reconnects != self._reconnects or (self._outstanding
                                               and time.monotonic() - self._activity > self.expires + 2.0):
            self._outstanding.clear()  # requests lost with a connection: nothing will end them
            self._reconnects = reconnects
            self._activity = time.monotonic()
        if len(self._outstanding) >= 2 or not self._nc.is_connected:
            return
        body = json.dumps({"batch": self.batch, "expires": int(self.expires * 1e9)}).encode()
        while len(self._outstanding) < 2:
            try:
                await self._nc.publish(self._next_subject, body, reply=self._inbox)
            except nats.errors.Error:  # the connection went down meanwhile: ask again once it is back
                return
            self._outstanding.append(self.batch)

    async def fetch(self, timeout: float = 0.5, *, until: asyncio.Future[Any] | None = None) -> list[FeedMessage]:
        """The messages that arrived (waiting up to ``timeout`` for the first); in order. With
        ``until``, the wait also ends when that is done (perhaps with no messages): the
        projector waits so for the next batch while it writes the last one, and finishes
        that one as soon as it is written, whether or not more has come."""
        if self._gap:
            await self._restart()
        await self._top_up()
        if not self._buf and self._error is None and (until is None or not until.done()):
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # lands as the event is set, and a projector being stopped would fetch forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    if until is None:
                        await self._wake.wait()
                    else:
                        woken = asyncio.ensure_future(self._wake.wait())
                        try:
                            await asyncio.wait((woken, until), return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            woken.cancel()
        raw, self._buf = self._buf, []
        error, self._error = self._error, None
        out = self._messages(raw)
        await self._top_up()
        if error is not None and not out:
            raise FeedError(f"{self.stream} consumer {self.name}: {error}")
        if not out and not self._gap:
            await self._check_idle()
        return out

    async def _check_idle(self) -> None:
        """Idle for longer than an expiry: has the consumer delivered past what reached us? (Messages
        it sent as its node died are lost with no later delivery to show the jump.)"""
        now = time.monotonic()
        if now - self._delivered_at < self.expires or now - self._checked_at < self.expires or self.name is None:
            return
        self._checked_at = now
        try:
            info = await self._js.consumer_info(self.stream, self.name, timeout=2.0)  # type: ignore[attr-defined]
        except NotFoundError:
            self._gap = "its consumer is gone"
            return
        except Exception:  # a cluster electing, a connection down: ask again next time
            return
        delivered = info.delivered.stream_seq or 0
        if delivered > self.last_seq and not self._buf:
            self._gap = f"its consumer delivered up to stream seq {delivered}, this feed received {self.last_seq}"

    def _messages(self, raw: list[tuple[bytes, bytes, bytes, bytes | None]]) -> list[FeedMessage]:
        out: list[FeedMessage] = []
        cseq = self._cseq
        for subject, reply, data, headers in raw:
            tokens = reply.split(b".")
            if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
                sseq, c, ts, pending = int(tokens[5]), int(tokens[6]), int(tokens[7]), int(tokens[8])
            else:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>...
                sseq, c, ts, pending = int(tokens[7]), int(tokens[8]), int(tokens[9]), int(tokens[10])
            if c != cseq + 1:
                self._gap = True
                break
            cseq = c
            out.append(FeedMessage(subject.decode(), headers[_HDR_START:] if headers else None, data, sseq, ts / 1e9,
                                   pending))
        self._cseq = cseq
        if out:
            last = out[-1]
            self.last_seq = last.seq
            self.head_hint = max(self.head_hint, last.seq + last.pending)
        return out
