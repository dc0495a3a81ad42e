"""Following only some memory namespaces, each through a consumer filtered on it: what an agent
confined by ``tether auth`` may do (it may not read ``memory.>``, only the namespaces it is granted).

The view has one checkpoint (a stream sequence), so the namespaces' messages are applied in log
order up to a barrier: the stream's last sequence, read first; then each consumer's info (the
server's word) shows it has sent everything up to then, and everything it sent has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tether.bus import EVENTS_STREAM, Bus

from ._names import namespace_filter

__all__ = ["ScopedFollow"]


@dataclass
class _Consumer:
    namespace: str
    name: str = ""
    sub: Any = None
    received: int = 0
    """The stream sequence of the last message that arrived (messages arrive in order)."""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class ScopedFollow:
    """Push consumers on EVENTS, one per namespace, merged in log order (see the module docstring)."""

    def __init__(self, bus: Bus, namespaces: Sequence[str]) -> None:
        self.bus = bus
        self.consumers = [_Consumer(ns) for ns in dict.fromkeys(namespaces)]
        self.arrived = asyncio.Event()
        """Set when any namespace's message arrives."""
        self._buffer: list[Any] = []

    async def start(self, start_seq: int) -> None:
        for consumer in self.consumers:
            consumer.received = start_seq - 1
            await self._subscribe(consumer)

    async def _subscribe(self, consumer: _Consumer) -> None:
        """A consumer from just after what arrived (again after the server lost it: a node restart)."""
        if consumer.sub is not None:
            await self._unsubscribe(consumer)
        inbox = self.bus.nc.new_inbox()

        async def arrive(msg: Any) -> None:
            seq = msg.metadata.sequence.stream
            if seq > consumer.received:
                consumer.received = seq
                self._buffer.append(msg)
                consumer.arrived.set()
                self.arrived.set()

        consumer.sub = await self.bus.nc.subscribe(inbox, cb=arrive)
        consumer.name = f"memory-{uuid.uuid4().hex}"
        await self.bus.js.add_consumer(EVENTS_STREAM, ConsumerConfig(
            name=consumer.name, filter_subject=namespace_filter(consumer.namespace), deliver_subject=inbox,
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=consumer.received + 1, inactive_threshold=60.0))

    async def _unsubscribe(self, consumer: _Consumer) -> None:
        with contextlib.suppress(Exception):  # the connection is away: the server drops the consumer anyway
            await consumer.sub.unsubscribe()
        consumer.sub = None

    async def reset(self) -> None:
        """New consumers from what arrived (after a round failed: messages may be lost in a reconnect)."""
        for consumer in self.consumers:
            await self._subscribe(consumer)

    async def stop(self) -> None:
        for consumer in self.consumers:
            if consumer.sub is not None:
                await self._unsubscribe(consumer)

    async def round(self, timeout: float = 5.0) -> tuple[list[Any], int]:
        """The messages of every namespace up to the barrier, in log order, and the barrier."""
        head = (await self.bus.js.stream_info(EVENTS_STREAM)).state.last_seq
        for consumer in self.consumers:
            try:
                info = await self.bus.js.consumer_info(EVENTS_STREAM, consumer.name)
            except Exception:
                await self._subscribe(consumer)  # gone with a restarted node: again from what arrived
                info = await self.bus.js.consumer_info(EVENTS_STREAM, consumer.name)
            sent = info.delivered.stream_seq if info.delivered else 0
            while consumer.received < sent:
                consumer.arrived.clear()
                await asyncio.wait_for(consumer.arrived.wait(), timeout)
            if info.num_pending:  # more to come for this namespace: the barrier is not there yet
                head = min(head, consumer.received)
        ready = sorted((m for m in self._buffer if m.metadata.sequence.stream <= head),
                       key=lambda m: m.metadata.sequence.stream)
        self._buffer = [m for m in self._buffer if m.metadata.sequence.stream > head]
        return ready, head
