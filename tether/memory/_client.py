"""The memory API: :class:`AsyncMemory`, built from its writes and reads, and :func:`connect_memory`.

Writes are events on the bus (``memory.written`` / ``deleted`` / ``compacted``) with the
agent, run, call and message that produced them; reads come from the memory view (see ``_feed``).
"""

from __future__ import annotations

import asyncio
import copy
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tether.bus import Bus, connect

from . import _query as q
from ._compact import ExtractiveSummarizer, Summarizer
from ._embed import AsymmetricEmbedder, Embedder, LocalEmbedder, StaticEmbedder, VectorCache, VectorIndex, WriteBatcher
from ._errors import InvalidMemory
from ._feed import ViewFeed
from ._grants import Grants
from ._keys import FileKeyStore, KeyStore
from ._rank import Ranking
from ._reads import MemoryReads
from ._settings import MemorySettings, load_settings
from ._view import MemoryView
from ._writes import MemoryWrites

__all__ = ["AsyncMemory", "connect_memory"]


def _now() -> float:
    return time.time()


class AsyncMemory(MemoryWrites, MemoryReads):
    """Event-sourced memory for one agent (or an operator, with ``agent=None``).

    Create it with :func:`tether.memory.connect` or ``AsyncMemory(bus, agent=...)`` and
    ``await start()``. ``embedder`` enables semantic and hybrid search (none given: the one
    ``[memory] embedder`` names, loaded by ``start()``); ``summarizer``
    replaces the extractive default of :meth:`compact`. Its writes are those of
    :class:`~tether.memory._writes.MemoryWrites`, its reads those of
    :class:`~tether.memory._reads.MemoryReads`; this class only builds and closes it.
    ``namespaces`` makes its view follow those namespaces only, each through a consumer
    filtered on it: what an agent confined by ``tether auth`` (granted them with ``--read``) may
    do; the view of every namespace needs a consumer on all of ``memory.>``.
    """

    def __init__(self, bus: Bus, *, agent: str | None = None, run: str | None = None,
                 settings: MemorySettings | None = None, keys: KeyStore | None = None,
                 embedder: Embedder | None = None, summarizer: Summarizer | None = None,
                 view_dir: Path | None = None, grants: Grants | None = None,
                 recency_weight: float = 0.3, half_life_s: float = 14 * 86400.0,
                 dedupe_threshold: float = 0.8, clock: Callable[[], float] = _now,
                 source: str = "urn:tether:memory", ranking: Ranking | None = None,
                 namespaces: Sequence[str] | None = None) -> None:
        self.bus = bus
        self.agent = agent
        self.run = run
        self.settings = settings or load_settings()
        # [memory] key_store = "nats": the shared store is opened by start() (it connects).
        self._keys_from_settings = keys is None and self.settings.key_store != "file"
        self.keys: KeyStore = keys or FileKeyStore(self.settings.keyfile)
        self.grants = grants or self.settings.grants
        self.embedder = embedder
        self.batcher = WriteBatcher(embedder) if embedder is not None else None
        # [memory] embedder = "static" | "minilm": loaded by start() (it reads a model), unless one is given
        self._embedder_from_settings = embedder is None and self.settings.embedder != "none"
        self.summarizer: Summarizer = summarizer or ExtractiveSummarizer()
        self.view = MemoryView(self.keys)
        self.feed = ViewFeed(bus, self.view, view_dir or self.settings.view_dir, namespaces=namespaces)
        self.recency_weight = recency_weight
        self.ranking = ranking or Ranking()
        self.vector_cache = VectorCache()
        self.half_life_s = half_life_s
        self.dedupe_threshold = dedupe_threshold
        self.clock = clock
        self.source = source
        self.position = 0
        self._own_bus = False
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="tether-memory-read")
        self._db: sqlite3.Connection | None = None
        self._vectors: VectorIndex | None = None
        self._terms = q.TermStats()
        self._closed = False
        self._root: AsyncMemory = self

    async def start(self) -> AsyncMemory:
        if self._embedder_from_settings:
            self.embedder = await asyncio.to_thread(open_embedder, self.settings)
            self.batcher = WriteBatcher(self.embedder) if self.embedder is not None else None
            self._embedder_from_settings = False
        if self._keys_from_settings:
            self.keys = self.view.keys = await asyncio.to_thread(self.settings.open_keys, self.bus)
        try:
            await self.feed.start()
        except BaseException:
            self._close_keys()
            raise
        try:
            # what the log held when this client opened, its first read or write waits for: a new
            # process numbers versions and decides supersession after every earlier write, not
            # against a view still catching up
            self.position = max(self.position, await self.feed.head())
        except BaseException:
            await self.feed.stop()
            self._close_keys()
            raise
        return self

    def as_agent(self, agent: str | None, *, grants: Grants | None = None, run: str | None = None) -> AsyncMemory:
        """This memory as ``agent`` uses it (its grants: ``grants``, else this client's): the same
        view, feed and reader, its own read-your-writes position. For a server that acts for many
        agents (the gateway's ``/v1/memory``, ``tether mcp``); closing it closes nothing."""
        other = copy.copy(self)
        other.agent, other.run = agent, run
        other.grants = grants if grants is not None else self.grants
        other._root = self._root
        other._closed = True  # the root owns the view, the reader and the bus
        return other

    def _close_keys(self) -> None:
        """Close the keystore start() opened from the settings (one given to us is the caller's)."""
        close = getattr(self.keys, "close", None) if self._keys_from_settings else None
        if close is not None:
            close()

    async def close(self) -> None:
        """Stop following the log and close the view; closes the bus too if :func:`connect` opened it."""
        if self._closed:
            return
        self._closed = True

        def close_db() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._reader, close_db)
        self._reader.shutdown(wait=True)
        await self.feed.stop()
        await asyncio.to_thread(self._close_keys)
        if self._own_bus:
            await self.bus.close()

    async def __aenter__(self) -> AsyncMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect_memory(url: str | None = None, *, agent: str | None = None, run: str | None = None,
                         **options: Any) -> AsyncMemory:
    """Connect to tether's NATS (as :func:`tether.connect` does) and start a memory client on it."""
    bus_options = {k: options.pop(k) for k in list(options) if k in ("config", "home", "provision")}
    bus = await connect(url, **bus_options)
    try:
        memory = AsyncMemory(bus, agent=agent, run=run, **options)
        memory._own_bus = True
        return await memory.start()
    except BaseException:
        await bus.close()
        raise


def open_embedder(settings: MemorySettings) -> Embedder | None:
    """The embedder ``[memory] embedder`` names (None for "none"); it loads a model: call it off the
    event loop. :class:`InvalidMemory` says what is missing and how to install it or turn it off."""
    where = f" in {settings.source}" if settings.source else ""
    try:
        if settings.embedder == "minilm":
            return LocalEmbedder()
        if settings.embedder == "static":
            return StaticEmbedder(home=settings.home)
        if settings.embedder == "asymmetric":
            return AsymmetricEmbedder(home=settings.home)
    except (ImportError, OSError, ValueError) as exc:
        raise InvalidMemory(f'[memory] embedder = "{settings.embedder}"{where} cannot be loaded: {exc}; '
                            f'or set embedder = "none" for keyword search only') from None
    if settings.embedder != "none":
        raise InvalidMemory(f'[memory] embedder must be "none", "static", "minilm" or "asymmetric", '
                            f'got {settings.embedder!r}')
    return None
