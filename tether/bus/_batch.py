"""A batch of events emitted together: their header blocks written from one template (the events
differ in id and time only), and :class:`Batch`, what became of each one (acked by the stream,
kept in the outbox, or refused for good with NATS's words)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tether.schemas import Event

from ._binding import _plain, encode_binary
from ._headers import HeaderBlock, header_block

__all__ = ["Batch", "encode_batch"]

MSG_ID = "Nats-Msg-Id"
_SHARED = ("specversion", "source", "type", "subject", "datacontenttype", "dataschema", "traceparent", "runid",
           "agentid", "dataref", "extensions")
"""The attributes every event of a templated batch has in common (all but id and time)."""


class Batch:
    """What became of each event of :meth:`Publisher.emit_batch`, by its index in the batch.

    ``acked``: how many the stream acked; ``outboxed``: the indexes kept in the local outbox
    (they reach the stream once NATS answers again); ``refused``: index to NATS's reason, for
    the events that will never be stored (the outbox keeps them in its rejected table).
    """

    __slots__ = ("_done", "_left", "acked", "outboxed", "refused", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.acked = 0
        self.outboxed: list[int] = []
        self.refused: dict[int, str] = {}
        self._left = size
        self._done = asyncio.Event()
        if size == 0:
            self._done.set()

    @property
    def settled(self) -> bool:
        """True once every event is acked, in the outbox or refused."""
        return self._done.is_set()

    async def wait(self, timeout: float | None = None) -> Batch:
        """Wait until every event is settled (``TimeoutError`` after ``timeout`` seconds)."""
        await asyncio.wait_for(self._done.wait(), timeout)
        return self

    def _settle(self) -> None:
        self._left -= 1
        if self._left <= 0:
            self._done.set()

    def ack(self) -> None:
        self.acked += 1
        self._settle()

    def keep(self, index: int) -> None:
        self.outboxed.append(index)
        self._settle()

    def refuse(self, index: int, reason: str) -> None:
        self.refused[index] = reason
        self._settle()


def encode_batch(events: Sequence[Event]) -> list[tuple[dict[str, str], bytes]]:
    """Headers (with ``Nats-Msg-Id``) and payload of each event, in binary content mode, exactly as
    :func:`~tether._binding.encode_binary` writes them; the header blocks of events that share every
    attribute but id and time are filled into one template instead of being written one by one."""
    out: list[tuple[dict[str, str], bytes]] = []
    template: tuple[tuple[object, ...], dict[str, str], tuple[str, str, str, str]] | None = None
    for event in events:
        d = event.__dict__
        if template is not None and tuple(d[name] for name in _SHARED) == template[0] \
                and _plain(d["id"]) and _plain(time := event.time_text()):
            headers = dict(template[1])
            headers["ce-id"] = headers[MSG_ID] = d["id"]
            headers["ce-time"] = time
            head, mid, tail, end = template[2]
            block = f"{head}{d['id']}{mid}{time}{tail}{d['id']}{end}".encode()
            out.append((HeaderBlock(headers, block), event.data_json()))
            continue
        headers, payload = encode_binary(event)
        headers[MSG_ID] = d["id"]
        out.append((HeaderBlock.of(headers), payload))
        template = _template(event, headers)
    return out


def _template(event: Event, headers: dict[str, str]) -> tuple[tuple[object, ...], dict[str, str],
                                                                 tuple[str, str, str, str]] | None:
    """The template of ``event``'s header block, if it is the usual layout (id second, time fifth,
    the message id last) and filling the template in gives exactly the block nats-py would write."""
    block = header_block(headers)
    names = list(headers)
    if block is None or names[:5] != ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time"] \
            or names[-1] != MSG_ID:
        return None
    lines = [f"{k}: {v}\r\n" for k, v in headers.items()]
    head = "NATS/1.0\r\n" + lines[0] + "ce-id: "
    mid = "\r\n" + lines[2] + lines[3] + "ce-time: "
    tail = "\r\n" + "".join(lines[5:-1]) + f"{MSG_ID}: "
    end = "\r\n\r\n"
    d = event.__dict__
    if f"{head}{d['id']}{mid}{headers['ce-time']}{tail}{d['id']}{end}".encode() != block:
        return None
    return tuple(d[name] for name in _SHARED), headers, (head, mid, tail, end)
