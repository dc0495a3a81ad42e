"""What memory's reads and writes share: the client's state, reading the view off the event loop,
the grant check, and publishing its own events (the position reads then wait for)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tether.bus import Bus
from tether.schemas import Event

from . import _query as q
from ._compact import Summarizer
from ._embed import Embedder, VectorCache, VectorIndex, WriteBatcher
from ._errors import MemoryNotFound
from ._feed import ViewFeed
from ._grants import Grants, Mode
from ._keys import KeyStore
from ._names import check_namespace
from ._rank import Ranking
from ._settings import MemorySettings
from ._view import MemoryView, prepare

__all__ = ["MemoryCore"]

T = TypeVar("T")


class MemoryCore:
    """The state of a memory client (set by :class:`~tether.memory.AsyncMemory`) and the plumbing
    its reads and writes share."""

    bus: Bus
    agent: str | None
    run: str | None
    settings: MemorySettings
    keys: KeyStore
    grants: Grants
    embedder: Embedder | None
    batcher: WriteBatcher | None
    """Embeds the texts of concurrent writes in one batch."""
    vector_cache: VectorCache
    """Recent vectors by content hash: a text is embedded once."""
    summarizer: Summarizer
    view: MemoryView
    feed: ViewFeed
    recency_weight: float
    ranking: Ranking
    """The weights hybrid search fuses and re-ranks with (``_rank.Ranking``)."""
    half_life_s: float
    dedupe_threshold: float
    clock: Callable[[], float]
    source: str
    position: int
    """The highest stream sequence this client wrote: reads wait for the view to reach it."""
    _reader: ThreadPoolExecutor
    _db: sqlite3.Connection | None
    _root: MemoryCore
    """The client whose view and read connection this one shares (itself, unless made by ``as_agent``)."""
    _vectors: VectorIndex | None
    _terms: q.TermStats

    async def _read(self, fn: Callable[..., T], *args: Any, after: int | None = None) -> T:
        await self.feed.wait_for(max(self.position, after or 0))
        root = self._root  # one read connection per view, whichever agent reads through it

        def call() -> T:
            if root._db is None:
                path = self.feed.path
                if not path.exists():
                    raise MemoryNotFound("?", "?", ": the memory view does not exist yet")
                if not self.feed.leading:  # another process feeds it: make sure the index is there
                    setup = sqlite3.connect(path, isolation_level=None, timeout=10.0)
                    try:
                        prepare(setup)
                    finally:
                        setup.close()
                root._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
                root._db.execute("PRAGMA busy_timeout=10000")
                q.tune_reader(root._db)
            return fn(root._db, *args)

        if not self.feed.path.exists():
            await self.feed.catch_up()
        return await asyncio.get_running_loop().run_in_executor(self._reader, call)

    def _check(self, namespace: str, mode: Mode) -> str:
        check_namespace(namespace)
        self.grants.check(self.agent, namespace, mode)
        return namespace

    def _event(self, payload: Any, run: str | None, agent: str | None = None) -> Event:
        return Event.of(payload, source=self.source, runid=run or self.run, agentid=agent or self.agent)

    def _moved(self, seq: int | None) -> None:
        if seq is not None:
            self.position = max(self.position, seq)

    async def _publish(self, event: Event) -> tuple[int | None, bool]:
        receipt = await self.bus.publish(event)
        self._moved(receipt.stream_seq)
        return receipt.stream_seq, receipt.outboxed
