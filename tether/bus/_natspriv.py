"""nats-py's private API: every use tether makes of it, in this one module.

nats-py has no public way to do what these do. :data:`HOOKS` names each private attribute
and what tether uses it for; ``tests/bus/test_natspriv.py`` checks each against the installed
nats-py (in ``make test`` and ``make test-lowest``), so an upgrade that changes one fails
there, by name, rather than as a slower feed or events re-sent out of order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import nats.errors
from nats.aio.client import Client as _NatsClient
from nats.aio.client import _validate_subject
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport
from nats.js.api import DEFAULT_PREFIX
from nats.js.kv import KeyValue
from nats.protocol.command import hpub_cmd

from tether._hooks import Hook

from ._headers import HeaderBlock, parse_headers

__all__ = [
    "HOOKS",
    "HookedClient",
    "RawSink",
    "api_prefix",
    "forget_unflushed",
    "reads_direct",
    "server_info",
    "subscription_id",
]

RawSink = Callable[[bytes, bytes, bytes, "bytes | None"], None]
"""Called with (subject, reply, payload, header block or None) for each message."""


HOOKS = (
    Hook("nats-py", "nats.aio.client.Client", "_parse_header_lines",
         "a static method nats-py calls on every header block; tether's Client puts parse_headers there "
         "(the same dict, about 20 us a message less)", __name__),
    Hook("nats-py", "nats.aio.client.Client", "_process_msg",
         "the protocol parser calls it with (sid, subject, reply, payload, header bytes or None) for every "
         "message; tether's Client hands the messages of a raw sink's subscription over as bytes "
         "(PullFeed)", __name__),
    Hook("nats-py", "nats.aio.subscription.Subscription", "_id",
         "the subscription's sid, which _process_msg is given: the key of PullFeed's raw sink", __name__),
    Hook("nats-py", "nats.aio.client.Client", "_send_publish",
         "publish() calls it with (subject, reply, payload, payload_size, headers) once its checks pass; "
         "tether's Client sends a HeaderBlock's ready block there instead of nats-py encoding a dozen "
         "headers one by one (about 9 us an event less)", __name__),
    Hook("nats-py", "nats.aio.client.Client", "_send_command",
         "queues a protocol command for the flusher (and flushes when the buffer is over its size); "
         "tether's _send_publish queues its HPUB there", __name__),
    Hook("nats-py", "nats.aio.client.Client", "_flush_pending",
         "wakes the flusher task, as nats-py's _send_publish does after each publish when _flush_queue "
         "is empty; tether's _send_publish does the same", __name__),
    Hook("nats-py", "nats.aio.client.Client", "_flush_queue",
         "the flusher's queue: publish_now puts a future there (as _flush_pending does) when it is empty, and "
         "goes the awaited way when it is full or missing", __name__),
    Hook("nats-py", "nats.aio.client.Client", "_flusher_task",
         "publish_now queues an HPUB only while the flusher task runs (else nats-py writes inline)", __name__),
    Hook("nats-py", "nats.aio.client.Client", "_max_pending_size",
         "publish_now goes the awaited way when nats-py buffers while disconnected (tether connects with 0)",
         __name__),
    Hook("nats-py", "nats.aio.client.Client", "_max_payload",
         "publish_now refuses a payload above the server's max_payload, as publish() does", __name__),
    Hook("nats-py", "nats.aio.client.Client", "_skip_subject_validation",
         "publish_now checks the subject and reply as publish() does unless the client was told not to", __name__),
    Hook("nats-py", "nats.aio.client", "_validate_subject",
         "the check publish() makes of a subject and reply (empty, whitespace, CR or LF), made by publish_now",
         __name__),
    Hook("nats-py", "nats.aio.client.Client", "_transport",
         "write_now writes what publish_now queued to the connection's transport itself, as the flusher "
         "would, when that is a plain TCP one with nothing buffered", __name__),
    Hook("nats-py", "nats.aio.transport.TcpTransport", "_io_writer",
         "the StreamWriter whose transport's write buffer write_now checks is empty (else the flusher, "
         "which waits for it to drain, writes)", __name__),
    Hook("nats-py", "nats.aio.client.Client", "_pending",
         "the write buffer nats-py sends after a reconnect; the publisher empties it on disconnect (those "
         "events are in the outbox already: sent again behind its back they would arrive out of order)", __name__),
    Hook("nats-py", "nats.aio.client.Client", "_pending_data_size",
         "the size of _pending, zeroed with it (nats-py flushes only while it is above 0)", __name__),
    Hook("nats-py", "nats.aio.client.Client", "_server_info",
         "the server's INFO (version, server_name, jetstream, max_payload), shown by Bus.status()", __name__),
    Hook("nats-py", "nats.js.client.JetStreamContext", "_prefix",
         "the JetStream API prefix (with a domain, $JS.<domain>.API) PullFeed sends its pull requests "
         "under", __name__),
    Hook("nats-py", "nats.js.kv.KeyValue", "_direct",
         "whether a bucket is read with direct gets; open_bucket turns them on for a bucket made without", __name__),
)


class HookedClient(_NatsClient):
    """nats-py's client with its three per-message hooks taken over: header blocks read by
    :func:`~tether.bus._headers.parse_headers`; raw sinks (``_raw_sinks``, sid to sink)
    given their subscriptions' messages as the protocol parser hands them over, without a
    header dict, a ``Msg`` or a queue entry; and a :class:`~tether.bus._headers.HeaderBlock`
    published with the block it carries (any other headers as nats-py writes them)."""

    _parse_header_lines = staticmethod(parse_headers)

    def __init__(self) -> None:
        super().__init__()
        self._raw_sinks: dict[int, RawSink] = {}

    async def _send_publish(self, subject: str, reply: str, payload: bytes, payload_size: int,
                            headers: dict[str, Any] | None) -> None:
        if type(headers) is not HeaderBlock:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        # What nats-py's _send_publish does, with the header block written beforehand.
        if subject == "":
            raise nats.errors.BadSubjectError
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(hpub_cmd(subject, reply, headers.block, payload))
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    def publish_now(self, subject: str, reply: str, payload: bytes, headers: HeaderBlock, *,
                    kick: bool = True) -> bool:
        """``publish(subject, payload, reply=reply, headers=headers)`` done at once, for a caller that
        does not await (a callback on the connection's loop): the same checks and errors, the HPUB
        queued for the flusher task as ``publish`` queues it. ``False``, and nothing done, where
        ``publish`` could wait: not connected, buffering while disconnected, no flusher running, or
        its queue full. ``kick=False``: the flusher is not woken; the caller calls :meth:`write_now`
        once it has published what it had."""
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        if self.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        queue, flusher = self._flush_queue, self._flusher_task
        if (not self.is_connected or self._max_pending_size > 0 or queue is None or queue.full()
                or flusher is None or flusher.done()):
            return False
        if not self._skip_subject_validation:
            _validate_subject(subject)
            if reply:
                _validate_subject(reply)
        if len(payload) > self._max_payload:
            raise nats.errors.MaxPayloadError
        if subject == "":
            raise nats.errors.BadSubjectError
        command = hpub_cmd(subject, reply, headers.block, payload)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += len(payload)
        self._pending.append(command)
        self._pending_data_size += len(command)
        if kick and queue.empty():  # what _flush_pending puts there: the flusher writes the buffer, sets it done
            queue.put_nowait(asyncio.get_running_loop().create_future())
        return True

    def write_now(self) -> bool:
        """Write what :meth:`publish_now` queued (``kick=False``) in this iteration of the loop, as the
        flusher writes it, when the connection is a plain TCP one whose write buffer is empty and the
        flusher has nothing to do (``True``); else wake the flusher to write it (``False``)."""
        if not self._pending:
            return True
        queue, flusher, transport = self._flush_queue, self._flusher_task, self._transport
        if queue is None or not self.is_connected:
            return False
        if (queue.empty() and flusher is not None and not flusher.done() and type(transport) is TcpTransport
                and transport._io_writer is not None and not transport._io_writer.transport.get_write_buffer_size()):
            pending, self._pending, self._pending_data_size = self._pending, [], 0
            cast(Any, transport).writelines(pending)  # nats-py's TcpTransport is untyped
            return True
        if queue.empty():
            queue.put_nowait(asyncio.get_running_loop().create_future())
        return False

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                           headers: bytes) -> None:  # nats-py's parser passes None when there are none
        sink = self._raw_sinks.get(sid)
        if sink is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        sink(subject, reply, data, headers)


def subscription_id(sub: Subscription) -> int:
    """The sid nats-py gives ``_process_msg`` for this subscription's messages."""
    return int(sub._id)


def forget_unflushed(nc: _NatsClient) -> None:
    """Drop what nats-py has buffered and not written yet (it would send it on reconnect)."""
    pending = getattr(nc, "_pending", None)
    if isinstance(pending, list):
        pending.clear()
        nc._pending_data_size = 0


def server_info(nc: _NatsClient) -> dict[str, Any]:
    """The INFO the server sent on connect ({} if nats-py no longer keeps it)."""
    info: dict[str, Any] = getattr(nc, "_server_info", {})
    return info


def api_prefix(js: object) -> str:
    """The subject prefix of the JetStream API this context talks to."""
    prefix: str = getattr(js, "_prefix", DEFAULT_PREFIX)
    return prefix


def reads_direct(kv: KeyValue) -> bool:
    """Whether this bucket handle reads with direct gets (``allow_direct``)."""
    return bool(kv._direct)
