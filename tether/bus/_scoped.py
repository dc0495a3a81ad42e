"""Reading one subject of the log through a consumer whose filter is that subject, so that NATS
permissions scoped by filter (what ``tether auth`` gives an agent) apply, with a clear refusal;
and finding one event on such a subject by its id."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ._connect import Bus
from ._publisher import MSG_ID
from ._reader import ReadResult
from ._streams import EVENTS_STREAM

__all__ = ["PermissionDenied", "find_event", "read_subject"]


class PermissionDenied(PermissionError):
    """The NATS server refused this identity what it asked (its permissions say no)."""


async def read_subject(bus: Bus, subject: str, *, timeout: float = 5.0) -> list[ReadResult]:
    """Every event on ``subject`` (a filter: ``event_filter(...)``, ``namespace_subject(...)``) in
    EVENTS, in order, read through a push consumer of its own whose filter is ``subject``.

    The server checks the filter against the identity's permissions: an agent confined by
    ``tether auth`` reading another agent's events or a memory namespace it has no read grant for
    gets :class:`PermissionDenied` at once, saying so, instead of a timeout."""
    name = f"read-{uuid.uuid4().hex}"
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    api = f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.{name}.{subject}".lower()
    creating = asyncio.ensure_future(bus.js.add_consumer(EVENTS_STREAM, ConsumerConfig(
        name=name, filter_subject=subject, deliver_subject=inbox, ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0), timeout=timeout))
    try:
        while not creating.done() and api not in bus.denials:
            await asyncio.wait({creating}, timeout=0.02)
        if api in bus.denials:
            creating.cancel()
            raise PermissionDenied(
                f"NATS refused reading {subject}: this identity may not read it ({bus.denials[api]}). "
                "An agent reads its own events and the memory namespaces it is granted: "
                "`tether auth agent NAME --read NAMESPACE` issues credentials that allow one more")
        info = creating.result()
        results = []
        for _ in range(info.num_pending or 0):
            msg = await sub.next_msg(timeout=timeout)
            seq = msg.metadata.sequence.stream if msg.reply else None
            results.append(await bus.reader.read_safe(msg.subject, msg.headers, msg.data, seq))
        return results
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if not creating.done():
            creating.cancel()


async def find_event(bus: Bus, subject: str, event_id: str, *, since: float, timeout: float = 5.0) -> int | None:
    """The stream sequence of the event ``event_id`` on ``subject`` (a narrow filter) stored at
    ``since`` (a Unix time, the server's clock) or later; None if it is not in the log (yet).

    For an event published without its position being known (it went through an outbox): a
    consumer of its own, headers only, reads the subject from ``since`` and matches the id."""
    name = f"find-{uuid.uuid4().hex}"
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    try:
        info = await bus.js.add_consumer(EVENTS_STREAM, ConsumerConfig(
            name=name, filter_subject=subject, deliver_subject=inbox, ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=datetime.fromtimestamp(since, UTC),
            headers_only=True, inactive_threshold=30.0), timeout=timeout)
        for _ in range(info.num_pending or 0):
            msg = await sub.next_msg(timeout=timeout)
            if (msg.headers or {}).get(MSG_ID) == event_id:
                return int(msg.metadata.sequence.stream)
        return None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
