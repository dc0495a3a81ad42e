"""Live updates: the projector's change notifications (``tether.proj.>``), fanned out to each browser over SSE.

One core NATS subscription per dashboard; each open page has a bounded queue of its own (a slow
browser loses old notifications, never slows the others or the bus). Beside them, ``lag``
messages say how far each view is behind the log: the views' checkpoints against the head of
EVENTS, asked of JetStream at most twice a second while notifications flow and every 2 s otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from tether.bus import EVENTS_STREAM, PROJECTION_SUBJECTS, Bus

from ._views import VIEWS, ViewFiles

__all__ = ["Live", "lag_state", "sse"]

log = logging.getLogger("tether.ui")
QUEUE = 256


def sse(event: str, data: Any) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def lag_state(checkpoints: dict[str, dict[str, Any]], head: int | None, now: float) -> dict[str, Any]:
    """Each view's place in the log: its sequence, the head, how many events behind, the age of its newest."""
    out: dict[str, Any] = {}
    for view, c in checkpoints.items():
        behind = None if head is None else max(0, head - c["seq"])
        out[view] = {"seq": c["seq"], "head": head, "behind": behind, "missing": bool(c.get("missing")),
                     "complete": c.get("complete", False),
                     "age_s": None if c.get("at") is None else max(0.0, now - c["at"])}
    return out


class Live:
    """The fan-out: :meth:`start` subscribes, :meth:`stream` is one browser's SSE body."""

    def __init__(self, bus: Bus, views: ViewFiles) -> None:
        self.bus = bus
        self.views = views
        self.clients: set[asyncio.Queue[bytes | None]] = set()
        self.head: int | None = None
        self.lag: dict[str, Any] = {}
        self.notifications = 0
        self._sub: Any = None
        self._ticker: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        self.closing = asyncio.Event()

    async def start(self) -> Live:
        self._sub = await self.bus.nc.subscribe(PROJECTION_SUBJECTS, cb=self._on_change)
        await self._refresh()
        self._ticker = asyncio.create_task(self._tick(), name="tether-ui-lag")
        return self

    async def stop(self) -> None:
        self.closing.set()
        for queue in list(self.clients):
            self._put(queue, None)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_change(self, msg: Any) -> None:
        try:
            doc = json.loads(msg.data)
            view = str(doc["view"])
        except (ValueError, KeyError, TypeError):
            return
        self.notifications += 1
        self.broadcast(sse(view if view in VIEWS else "view", doc))
        self._dirty.set()

    def broadcast(self, message: bytes) -> None:
        for queue in list(self.clients):
            self._put(queue, message)

    @staticmethod
    def _put(queue: asyncio.Queue[bytes | None], message: bytes | None) -> None:
        if queue.full():  # a browser that does not keep up loses the oldest, the page refetches anyway
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
        queue.put_nowait(message)

    async def _tick(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._refresh()
            except Exception:  # the next tick tries again
                log.debug("lag refresh failed", exc_info=True)
            await asyncio.sleep(0.5)

    async def _refresh(self) -> None:
        with contextlib.suppress(Exception):  # NATS away: the head is unknown
            info = await asyncio.wait_for(self.bus.js.stream_info(EVENTS_STREAM), 2.0)
            self.head = int(info.state.last_seq)
        checkpoints = await asyncio.to_thread(lambda: {v: self.views.checkpoint(v) for v in VIEWS})
        lag = lag_state(checkpoints, self.head, time.time())
        if lag != self.lag:
            self.lag = lag
            self.broadcast(sse("lag", lag))

    async def stream(self) -> AsyncIterator[bytes]:
        """One browser's events: the current lag first, then every change, until it leaves or we stop."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE)
        self.clients.add(queue)
        try:
            yield b"retry: 1000\n\n" + sse("lag", self.lag)
            while not self.closing.is_set():
                try:
                    async with asyncio.timeout(15.0):
                        message = await queue.get()
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if message is None:
                    return
                yield message
        finally:
            self.clients.discard(queue)
