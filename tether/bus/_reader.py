"""Reading events back: decode either content mode and resolve claim checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from tether.schemas import Event, EventError, InvalidEvent

from ._binding import WireEvent, decode, decode_block, validate
from ._publisher import DATAREF_SCHEME

__all__ = ["EventReader", "ReadResult"]


@dataclass(frozen=True, slots=True)
class ReadResult:
    """One message read: the event, or the error that kept it from being one."""

    subject: str
    event: Event | None
    error: EventError | None
    stream_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.event is not None


class EventReader:
    """Turns NATS messages into events, fetching data from the object store when needed."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._stores: dict[str, ObjectStore] = {}

    async def read(self, headers: Mapping[str, str] | None, payload: bytes) -> Event:
        """Decode and validate one message; ``EventError`` if it is not a valid tether event."""
        wire = decode(headers, payload)
        if wire.dataref:
            return validate(wire, await self._fetch(wire))
        return validate(wire)

    async def read_safe(self, subject: str, headers: Mapping[str, str] | None, payload: bytes,
                        stream_seq: int | None = None) -> ReadResult:
        """Like :meth:`read`, but a bad message becomes a result with ``error`` set."""
        try:
            return ReadResult(subject, await self.read(headers, payload), None, stream_seq)
        except EventError as exc:
            return ReadResult(subject, None, exc, stream_seq)

    def read_block_now(self, header_block: bytes | None, payload: bytes) -> Event | WireEvent:
        """:meth:`read` for a raw header block (a :class:`~tether.bus.FeedMessage`'s), without
        a coroutine: the event, or the :class:`WireEvent` whose data is in the object store
        (finish it with :meth:`finish`). ``EventError`` if it is not a valid tether event."""
        wire = decode_block(header_block, payload)
        return wire if wire.dataref else validate(wire)

    async def finish(self, wire: WireEvent) -> Event:
        """The event of a message whose data is in the object store."""
        return validate(wire, await self._fetch(wire))

    async def _fetch(self, wire: WireEvent) -> bytes:
        ref = wire.dataref or ""
        if not ref.startswith(DATAREF_SCHEME) or "/" not in ref[len(DATAREF_SCHEME):]:
            raise InvalidEvent(wire.type, [{"loc": ("dataref",), "msg": f"unsupported claim check {ref!r}"}],
                               what="message")
        bucket, name = ref[len(DATAREF_SCHEME):].split("/", 1)
        try:
            store = self._stores.get(bucket)
            if store is None:
                store = self._stores[bucket] = await self._js.object_store(bucket)
            result = await store.get(name)
        except Exception as exc:
            raise InvalidEvent(wire.type, [{"loc": ("dataref",),
                               "msg": f"claim check {ref!r} cannot be read: {exc!r}"}],
                               what="message") from None
        return bytes(result.data or b"")
