"""A batch of events emitted together: their messages written as one event's are (each header block
filled into its envelope's template), and :class:`Batch`, what became of each one (acked by the
stream, kept in the outbox, or refused for good with NATS's words)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tether.schemas import Event

from ._wireform import encode_message

__all__ = ["Batch", "encode_batch"]



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
    :func:`~tether.bus._binding.encode_binary` writes them: each block filled into its envelope's
    template (:func:`~tether.bus._wireform.encode_message`)."""
    return [(headers, payload) for _, headers, payload in map(encode_message, events)]
