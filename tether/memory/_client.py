"""The memory API: :class:`AsyncMemory`, and :class:`Memory` for synchronous code.

Writes are events on the bus (``memory.written`` / ``deleted`` / ``compacted``) with the
agent, run, call and message that produced them; each returns its stream sequence.
Reads come from the memory view (see ``_feed``) and wait until it has applied this
client's own writes (read-your-writes); pass ``after=seq`` to wait for someone else's.

``expected_version`` makes a write conditional, race-free across processes: the client
reads the namespace's last stream sequence L, waits until its view has applied L, checks
the key's version there, and publishes with ``Nats-Expected-Last-Subject-Sequence: L``
on the namespace's subject filter. JetStream appends atomically only if nothing was
written to the namespace since L; if something was, the client catches up to the new
last sequence, checks the key again, and either retries or raises
:class:`VersionConflict`. A write to another key of the namespace costs a retry, never
a false conflict. Unconditional writes are plain appends (last writer wins, in log order).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from nats.js.errors import APIError

from tether.bus import Bus, connect
from tether.schemas import Event, MemoryCompacted, MemoryDeleted, MemoryWritten, uuid7
from tether.schemas._finite import NON_FINITE_HINT, non_finite

from . import _query as q
from ._codec import seal_entry
from ._compact import ExtractiveSummarizer, Summarizer, duplicates, plan_compaction, similarity
from ._context import pack
from ._embed import Embedder, VectorIndex, WriteBatcher
from ._errors import InvalidMemory, MemoryNotFound, VersionConflict
from ._feed import ViewFeed, last_memory_seq
from ._grants import Grants, Mode
from ._keys import FileKeyStore, KeyStore, content_hash
from ._names import ALL_KEYS, check_key, check_namespace, namespace_filter
from ._rank import query_terms, rerank, rrf
from ._settings import MemorySettings, load_settings
from ._types import BulkWritten, Context, Entry, Erased, Hit, Version, Written
from ._view import MemoryView, prepare

__all__ = ["AsyncMemory", "Memory", "connect_memory"]

T = TypeVar("T")
SearchMode = Literal["auto", "keyword", "semantic", "hybrid"]
AsOf = int | datetime | None
WRONG_LAST = 10071
MAX_METADATA_BYTES = 16 * 1024
_WRONG_SEQ = re.compile(r"wrong last sequence: (\d+)")


def _at(value: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def _now() -> float:
    return time.time()


def _stamp(entry: Entry, default: float) -> float:
    return entry.updated_at.timestamp() if entry.updated_at is not None else default


class AsyncMemory:
    """Event-sourced memory for one agent (or an operator, with ``agent=None``).

    Create it with :func:`tether.memory.connect` or ``AsyncMemory(bus, agent=...)`` and
    ``await start()``. ``embedder`` enables semantic and hybrid search; ``summarizer``
    replaces the extractive default of :meth:`compact`.
    """

    def __init__(self, bus: Bus, *, agent: str | None = None, run: str | None = None,
                 settings: MemorySettings | None = None, keys: KeyStore | None = None,
                 embedder: Embedder | None = None, summarizer: Summarizer | None = None,
                 view_dir: Path | None = None, grants: Grants | None = None,
                 recency_weight: float = 0.3, half_life_s: float = 14 * 86400.0,
                 dedupe_threshold: float = 0.8, clock: Callable[[], float] = _now,
                 source: str = "urn:tether:memory") -> None:
        self.bus = bus
        self.agent = agent
        self.run = run
        self.settings = settings or load_settings()
        self.keys: KeyStore = keys or FileKeyStore(self.settings.keyfile)
        self.grants = grants or self.settings.grants
        self.embedder = embedder
        self.batcher = WriteBatcher(embedder) if embedder is not None else None
        """Embeds the texts of concurrent writes in one batch."""
        self.summarizer: Summarizer = summarizer or ExtractiveSummarizer()
        self.view = MemoryView(self.keys)
        self.feed = ViewFeed(bus, self.view, view_dir or self.settings.view_dir)
        self.recency_weight = recency_weight
        self.half_life_s = half_life_s
        self.dedupe_threshold = dedupe_threshold
        self.clock = clock
        self.source = source
        self.position = 0
        """The highest stream sequence this client wrote: reads wait for the view to reach it."""
        self._own_bus = False
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="tether-memory-read")
        self._db: sqlite3.Connection | None = None
        self._vectors: VectorIndex | None = None
        self._terms = q.TermStats()
        self._closed = False

    async def start(self) -> AsyncMemory:
        await self.feed.start()
        return self

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
        if self._own_bus:
            await self.bus.close()

    async def __aenter__(self) -> AsyncMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ------------------------------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any, after: int | None = None) -> T:
        await self.feed.wait_for(max(self.position, after or 0))

        def call() -> T:
            if self._db is None:
                path = self.feed.path
                if not path.exists():
                    raise MemoryNotFound("?", "?", ": the memory view does not exist yet")
                if not self.feed.leading:  # another process feeds it: make sure the index is there
                    setup = sqlite3.connect(path, isolation_level=None, timeout=10.0)
                    try:
                        prepare(setup)
                    finally:
                        setup.close()
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
                self._db.execute("PRAGMA busy_timeout=10000")
            return fn(self._db, *args)

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

    async def _conditional(self, namespace: str, build: Callable[[], Awaitable[Event]], *,
                           attempts: int = 100) -> tuple[int, Event]:
        """Publish ``build()``'s event only if the namespace has not changed since ``build`` checked it."""
        subject = namespace_filter(namespace)
        last = await last_memory_seq(self.bus, subject)
        event_id = uuid7()
        for _ in range(attempts):
            await self.feed.wait_for(last)
            event = (await build()).model_copy(update={"id": event_id})
            message = self.bus.publisher.prepare(event)
            headers = {**message.headers, "Nats-Expected-Last-Subject-Sequence": str(last),
                       "Nats-Expected-Last-Subject-Sequence-Subject": subject}
            try:
                ack = await self.bus.js.publish(message.subject, message.payload, headers=headers,
                                                timeout=self.bus.config.ack_timeout_s)
            except APIError as exc:
                if exc.err_code != WRONG_LAST:
                    raise
                found = _WRONG_SEQ.search(exc.description or "")
                last = int(found[1]) if found else await last_memory_seq(self.bus, subject)
                continue
            self._moved(ack.seq)
            return int(ack.seq), event
        raise TimeoutError(f"namespace {namespace!r} changed under every one of {attempts} conditional attempts")

    # -- validation ----------------------------------------------------------------------------

    def _text(self, text: object) -> str:
        if not isinstance(text, str):
            raise InvalidMemory(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidMemory("text is empty: there is nothing to remember")
        size = len(text.encode("utf-8"))
        if size > self.settings.max_text_bytes:
            raise InvalidMemory(f"text is {size:,} bytes; the limit is {self.settings.max_text_bytes:,} "
                                "(memory.max_text_bytes): split it into entries, or keep the document elsewhere "
                                "and remember a reference to it")
        return text

    @staticmethod
    def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        if metadata is None:
            return {}
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
            raise InvalidMemory("metadata must be a mapping with string keys")
        nan_at = non_finite(dict(metadata))
        if nan_at is not None:
            where = ".".join(str(part) for part in nan_at)
            raise InvalidMemory(f"metadata {where} is {_at(metadata, nan_at)!r}: {NON_FINITE_HINT}")
        try:
            size = len(json.dumps(metadata, ensure_ascii=False))
        except (TypeError, ValueError) as exc:
            raise InvalidMemory(f"metadata must be JSON: {exc}") from None
        if size > MAX_METADATA_BYTES:
            raise InvalidMemory(f"metadata is {size:,} bytes of JSON; the limit is {MAX_METADATA_BYTES:,}")
        return dict(metadata)

    def _expiry(self, ttl: float | timedelta | None) -> datetime | None:
        if ttl is None:
            return None
        seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
            raise InvalidMemory(f"ttl must be a positive number of seconds (or a timedelta), got {ttl!r}")
        return datetime.fromtimestamp(self.clock() + float(seconds), UTC)

    async def _as_of(self, as_of: AsOf) -> tuple[int | None, float | None]:
        if as_of is None:
            return None, None
        if isinstance(as_of, datetime):
            when = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
            return await self._read(q.seq_at, when), when.timestamp()
        if isinstance(as_of, bool) or not isinstance(as_of, int) or as_of < 0:
            raise InvalidMemory(f"as_of must be a stream sequence (int >= 0) or a datetime, got {as_of!r}")
        return as_of, await self._read(q.time_at, as_of)

    # -- writing -------------------------------------------------------------------------------

    async def write(self, namespace: str, text: str, key: str | None = None, metadata: Mapping[str, Any] | None = None,
                    ttl: float | timedelta | None = None, expected_version: int | None = None, *,
                    run: str | None = None, call_id: str | None = None, message_id: str | None = None) -> Written:
        """Write a new version of ``key`` (a new entry if ``key`` is None) and return its position.

        With ``expected_version`` the write happens only if the entry is at that version
        (0: does not exist), else :class:`VersionConflict`. Without a key, a near-duplicate
        of a live entry is merged into it (``Written.merged_into``) instead of piling up.
        """
        self._check(namespace, "write")
        text = self._text(text)
        meta = self._metadata(metadata)
        expires = self._expiry(ttl)
        if expected_version is not None and (isinstance(expected_version, bool) or not isinstance(
                expected_version, int) or expected_version < 0):
            raise InvalidMemory(f"expected_version must be an int >= 0, got {expected_version!r}")
        merged_into = None
        if key is None:
            if expected_version not in (None, 0):
                raise InvalidMemory("expected_version needs a key (a new entry without a key is version 0)")
            found = await self._near_duplicate(namespace, text) if self.settings.dedupe else None
            if found is not None:
                if found.text == text and all(found.metadata.get(k) == v for k, v in meta.items()) \
                        and found.expires_at == expires:
                    return Written(namespace, found.key, found.version, found.seq, "", merged_into=found.key)
                key, merged_into, meta = found.key, found.key, {**found.metadata, **meta}
            else:
                key = uuid7()
        check_key(key)
        vector = await self._embed([text], run)
        embedder = self.embedder.name if (self.embedder is not None and vector is not None) else None

        async def build() -> Event:
            version = await self._read(q.next_version, namespace, key)
            if expected_version is not None:
                live = await self._read(q.live_version, namespace, key, self.clock())
                if live != expected_version:
                    raise VersionConflict(namespace, key, expected_version, live)
            sealed = seal_entry(self.keys, namespace, key, text, meta, vector[0] if vector else None)
            return self._event(MemoryWritten(namespace=namespace, key=key, version=version, expires_at=expires,
                                             source_call_id=call_id, source_message_id=message_id,
                                             embedder=embedder, **sealed), run)

        if expected_version is not None:
            done, event = await self._conditional(namespace, build)
            assert isinstance(event.data, MemoryWritten)
            return Written(namespace, key, event.data.version, done, event.id, merged_into)
        event = await build()
        seq, outboxed = await self._publish(event)
        assert isinstance(event.data, MemoryWritten)
        return Written(namespace, key, event.data.version, seq, event.id, merged_into, outboxed)

    async def _embed(self, texts: Sequence[str], run: str | None, *, batched: bool = True
                     ) -> list[list[float]] | None:
        """Vectors for what is written: through the batcher (concurrent writes embed together),
        or straight to the embedder for a bulk write that is one batch already."""
        if self.embedder is None:
            return None
        if not batched:
            return await self.embedder.embed(texts, agent=self.agent, run=run or self.run)
        if self.batcher is None or self.batcher.embedder is not self.embedder:  # the embedder was replaced
            self.batcher = WriteBatcher(self.embedder)
        return await self.batcher.embed(texts, agent=self.agent, run=run or self.run)

    async def _near_duplicate(self, namespace: str, text: str) -> Entry | None:
        digest_key = self.keys.current(namespace)[1]
        exact = await self._read(q.by_hash, namespace, content_hash(digest_key, text), self.clock())
        if exact is not None:
            return exact
        terms = query_terms(text)
        found = await self._read(lambda db: q.keyword(db, terms, namespaces=[namespace], patterns=None,
                                                      filters=None, now=self.clock(), limit=5, stats=self._terms))
        best = max(found, key=lambda pair: similarity(text, pair[0].text), default=None)
        if best is not None and similarity(text, best[0].text) >= self.dedupe_threshold:
            return best[0]
        return None

    async def write_many(self, items: Iterable[Mapping[str, Any]], *, namespace: str | None = None,
                         run: str | None = None) -> BulkWritten:
        """Write many entries at once (emit, then one flush): the fast path for bulk loads.

        Each item has ``text`` and optionally ``namespace`` (else the argument), ``key``,
        ``metadata``, ``ttl``. No conditional writes and no near-duplicate merging here.
        """
        rows = []
        for item in items:
            ns = self._check(item.get("namespace") or namespace or "", "write")
            key = item.get("key") or uuid7()
            check_key(key)
            rows.append((ns, key, self._text(item.get("text")), self._metadata(item.get("metadata")),
                         self._expiry(item.get("ttl"))))
        if not rows:
            return BulkWritten(0, self.position, ())
        vectors = await self._embed([r[2] for r in rows], run, batched=False)
        claimed: dict[tuple[str, str], int] = {}
        nexts = await self._read(lambda db: {(ns, key): q.next_version(db, ns, key) for ns, key, *_ in rows})
        embedder = self.embedder.name if self.embedder is not None else None
        for i, (ns, key, text, meta, expires) in enumerate(rows):
            version = claimed.get((ns, key), nexts[(ns, key)] - 1) + 1
            claimed[(ns, key)] = version
            sealed = seal_entry(self.keys, ns, key, text, meta, vectors[i] if vectors else None)
            await self.bus.emit(self._event(MemoryWritten(namespace=ns, key=key, version=version, expires_at=expires,
                                                          embedder=embedder if vectors else None, **sealed), run))
        await self.bus.flush()
        seq = await last_memory_seq(self.bus)
        self._moved(seq)
        return BulkWritten(len(rows), seq, tuple(r[1] for r in rows))

    async def delete(self, namespace: str, key: str, *, expected_version: int | None = None,
                     run: str | None = None) -> Written:
        """Delete an entry (logically: it stays in the log and in :meth:`history`)."""
        self._check(namespace, "write")
        check_key(key)

        async def build() -> Event:
            live = await self._read(q.live_version, namespace, key, self.clock())
            if expected_version is not None and live != expected_version:
                raise VersionConflict(namespace, key, expected_version, live)
            if live == 0:
                raise MemoryNotFound(namespace, key)
            return self._event(MemoryDeleted(namespace=namespace, key=key, version=live), run)

        if expected_version is not None:
            done, event = await self._conditional(namespace, build)
            return Written(namespace, key, expected_version, done, event.id)
        event = await build()
        seq, outboxed = await self._publish(event)
        assert isinstance(event.data, MemoryDeleted)
        return Written(namespace, key, event.data.version or 0, seq, event.id, outboxed=outboxed)

    async def forget(self, namespace: str, *, keys: Sequence[str] | None = None,
                     filters: Mapping[str, Any] | None = None, before: datetime | None = None,
                     run: str | None = None) -> list[str]:
        """Delete every live entry of the namespace that matches; the keys deleted.

        ``keys`` restricts to those keys, ``filters`` to matching metadata, ``before`` to
        entries last written before then. Logical deletion: use :meth:`erase` to make
        content unreadable.
        """
        self._check(namespace, "write")
        wanted = set(keys) if keys is not None else None
        cutoff = before.timestamp() if before is not None else None
        found = await self._read(lambda db: q.live(db, namespace, self.clock(), include_compacted=True,
                                                   filters=filters, before=cutoff))
        gone = [e for e in found if wanted is None or e.key in wanted]
        for entry in gone:
            await self.bus.emit(self._event(MemoryDeleted(namespace=namespace, key=entry.key, version=entry.version),
                                            run))
        if gone:
            await self.bus.flush()
            self._moved(await last_memory_seq(self.bus, namespace_filter(namespace)))
        return [e.key for e in gone]

    async def erase(self, namespace: str, *, run: str | None = None) -> Erased:
        """Destroy the namespace's keys, then record the erasure: its content is unreadable for good.

        The ciphertext stays in the log; without the key it never comes back, neither in
        this view nor in any view rebuilt by replay. See ``docs/memory.md`` for exactly
        what is and is not guaranteed.
        """
        self._check(namespace, "write")
        destroyed = await asyncio.to_thread(self.keys.destroy, namespace)
        event = self._event(MemoryDeleted(namespace=namespace, key=ALL_KEYS, reason="erased"), run)
        seq, _ = await self._publish(event)
        if seq is not None:
            await self.feed.wait_for(seq)
        if self._vectors is not None:
            self._vectors = None  # drop vectors of the erased namespace from memory too
        return Erased(namespace, tuple(destroyed), seq)

    async def expire(self, *, run: str | None = None) -> int:
        """Record an ``expired`` deletion for every entry past its TTL (reads already hide them)."""
        found = await self._read(q.expired, self.clock())
        count = 0
        for entry in found:
            if self.grants.allows(self.agent, entry.namespace, "write"):
                await self.bus.emit(self._event(MemoryDeleted(namespace=entry.namespace, key=entry.key,
                                                              version=entry.version, reason="expired"), run))
                count += 1
        if count:
            await self.bus.flush()
            self._moved(await last_memory_seq(self.bus))
        return count

    async def compact(self, namespace: str, token_budget: int, *, summarizer: Summarizer | None = None,
                      run: str | None = None) -> Written | None:
        """Merge near-duplicates, then summarise the oldest entries so the namespace fits ``token_budget``.

        The summary is a new entry (key ``summary:<id>``) whose ``replaced`` lists each
        ``key@version`` it stands for; the originals stay in the log and in :meth:`history`,
        and drop out of search and context. None when nothing needed compacting.
        """
        self._check(namespace, "write")
        if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 16:
            raise InvalidMemory(f"token_budget must be an int >= 16, got {token_budget!r}")
        entries = await self._read(q.live, namespace, self.clock())
        dupes = duplicates(entries, self.dedupe_threshold)
        for older, _newer in dupes:
            await self.bus.emit(self._event(MemoryDeleted(namespace=namespace, key=older.key, version=older.version,
                                                          reason="merged"), run))
        if dupes:
            await self.bus.flush()
            self._moved(await last_memory_seq(self.bus, namespace_filter(namespace)))
            gone = {o.key for o, _ in dupes}
            entries = [e for e in entries if e.key not in gone]
        plan = plan_compaction(entries, token_budget)
        if plan is None:
            return None
        chosen = summarizer or self.summarizer
        summary = await chosen.summarize(plan.replace, plan.summary_budget, agent=self.agent, run=run or self.run)
        key = f"summary:{uuid7()}"
        vector = await self._embed([summary.text], run)
        sealed = seal_entry(self.keys, namespace, key, summary.text, {}, vector[0] if vector else None)
        event = self._event(MemoryCompacted(
            namespace=namespace, key=key, version=1, summary=sealed["text"], key_id=sealed["key_id"],
            replaced=tuple(f"{e.key}@{e.version}" for e in plan.replace), token_budget=token_budget,
            summarizer=chosen.name, source_call_id=summary.call_id, embedding=sealed.get("embedding"),
            embedder=self.embedder.name if vector and self.embedder else None), run)
        seq, outboxed = await self._publish(event)
        return Written(namespace, key, 1, seq, event.id, outboxed=outboxed)

    # -- reading -------------------------------------------------------------------------------

    async def get(self, namespace: str, key: str, as_of: AsOf = None, *, after: int | None = None) -> Entry:
        """The entry now, or as of a stream sequence or a time; :class:`MemoryNotFound` if there is none."""
        self._check(namespace, "read")
        check_key(key)
        seq, at = await self._as_of(as_of)
        if seq is None:
            entry, why = await self._read(q.current, namespace, key, self.clock(), after=after)
        else:
            entry, why = await self._read(q.entry_as_of, namespace, key, seq, at, after=after)
        if entry is None:
            detail = f" ({why})" if why else ""
            if as_of is not None:
                detail += f" as of {as_of}"
            raise MemoryNotFound(namespace, key, detail)
        return entry

    async def history(self, namespace: str, key: str, *, after: int | None = None) -> list[Version]:
        """Every version of the entry and every deletion, oldest first."""
        self._check(namespace, "read")
        check_key(key)
        versions = await self._read(q.history, namespace, key, after=after)
        if not versions:
            raise MemoryNotFound(namespace, key, " (never written, or erased)")
        return versions

    def _scope(self, namespaces: Sequence[str] | str | None) -> tuple[list[str] | None, list[str] | None]:
        if isinstance(namespaces, str):
            namespaces = [namespaces]
        if namespaces is None:
            return None, list(self.grants.patterns(self.agent, "read"))
        for ns in namespaces:
            self._check(ns, "read")
        return list(namespaces), None

    async def search(self, query: str, namespaces: Sequence[str] | str | None = None, k: int = 5,
                     filters: Mapping[str, Any] | None = None, as_of: AsOf = None, *, mode: SearchMode = "auto",
                     include_compacted: bool = False, after: int | None = None) -> list[Hit]:
        """The ``k`` most relevant live entries, best first.

        ``keyword`` is BM25 over the text, blended with recency; ``semantic`` is cosine
        similarity of embeddings; ``hybrid`` fuses both by reciprocal rank; ``auto`` is
        hybrid when an embedder is set, else keyword. ``namespaces`` defaults to every
        namespace this agent may read; ``filters`` match metadata (see ``_query._filters``).
        Searches ``as_of`` the past are keyword searches.
        """
        if not isinstance(query, str) or not query.strip():
            raise InvalidMemory("query is empty")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
            raise InvalidMemory(f"k must be an int from 1 to 1000, got {k!r}")
        names, patterns = self._scope(namespaces)
        if mode not in ("auto", "keyword", "semantic", "hybrid"):
            raise InvalidMemory(f"mode must be auto, keyword, semantic or hybrid, got {mode!r}")
        if mode == "auto":
            mode = "hybrid" if self.embedder is not None else "keyword"
        if mode in ("semantic", "hybrid") and self.embedder is None:
            raise InvalidMemory(f"{mode} search needs an embedder: AsyncMemory(..., embedder=LocalEmbedder())")
        seq, _ = await self._as_of(as_of)
        if seq is not None:
            mode = "keyword"
        now = self.clock()
        pool = max(4 * k, 40)
        keyword_hits: list[tuple[Entry, float]] = []
        terms = query_terms(query)
        if mode in ("keyword", "hybrid") and terms:
            keyword_hits = await self._read(lambda db: q.keyword(
                db, terms, namespaces=names, patterns=patterns, filters=filters, now=now, limit=pool, as_of=seq,
                include_compacted=include_compacted, stats=self._terms), after=after)
        if mode == "keyword":
            return self._ranked(keyword_hits, now, k)
        semantic = await self._semantic(query, names, patterns, filters, pool, now, include_compacted, after)
        if mode == "semantic":
            hits = [Hit(e, s, None, i) for i, (e, s) in enumerate(semantic, start=1)]
            return hits[:k]
        by_key = {(e.namespace, e.key): e for e, _ in keyword_hits}
        by_key.update({(e.namespace, e.key): e for e, _ in semantic})
        k_rank = [(e.namespace, e.key) for e, _ in keyword_hits]
        s_rank = [(e.namespace, e.key) for e, _ in semantic]
        fused = rrf(k_rank, s_rank)
        pairs = list(fused)
        ages = [now - _stamp(by_key[p], now) for p in pairs]
        scores = rerank([fused[p] for p in pairs], ages, weight=self.recency_weight, half_life_s=self.half_life_s)
        k_pos = {p: i for i, p in enumerate(k_rank, start=1)}
        s_pos = {p: i for i, p in enumerate(s_rank, start=1)}
        ranked = sorted(zip(pairs, scores, strict=True), key=lambda x: -x[1])[:k]
        return [Hit(by_key[p], s, k_pos.get(p), s_pos.get(p)) for p, s in ranked]

    def _ranked(self, found: list[tuple[Entry, float]], now: float, k: int) -> list[Hit]:
        ages = [now - _stamp(e, now) for e, _ in found]
        scores = rerank([r for _, r in found], ages, weight=self.recency_weight, half_life_s=self.half_life_s)
        order = sorted(range(len(found)), key=lambda i: -scores[i])[:k]
        return [Hit(found[i][0], scores[i], i + 1, None) for i in order]

    async def _semantic(self, query: str, names: list[str] | None, patterns: list[str] | None,
                        filters: Mapping[str, Any] | None, pool: int, now: float, include_compacted: bool,
                        after: int | None) -> list[tuple[Entry, float]]:
        assert self.embedder is not None
        vector = (await self.embedder.embed([query], agent=self.agent, run=self.run))[0]
        name = self.embedder.name

        def allow(ns: str) -> bool:
            if names is not None:
                return ns in names
            return patterns is None or any(fnmatch.fnmatchcase(ns, p) for p in patterns)

        def run(db: sqlite3.Connection) -> list[tuple[Entry, float]]:
            if self._vectors is None:
                self._vectors = VectorIndex()
            self._vectors.refresh(db)
            nearest = self._vectors.search(vector, name, pool * (4 if filters else 1), allow)
            found = q.entries(db, [p for p, _ in nearest], now, include_compacted)
            if filters:
                keep = q.matching(db, list(found), filters)
                found = {p: e for p, e in found.items() if p in keep}
            return [(found[p], s) for p, s in nearest if p in found][:pool]

        return await self._read(run, after=after)

    async def context(self, query: str, namespaces: Sequence[str] | str | None = None, token_budget: int = 1000,
                      *, k: int = 20, filters: Mapping[str, Any] | None = None, as_of: AsOf = None,
                      mode: SearchMode = "auto") -> Context:
        """Text to put in a prompt: the most relevant entries that fit ``token_budget``, each cited."""
        if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 16:
            raise InvalidMemory(f"token_budget must be an int >= 16, got {token_budget!r}")
        hits = await self.search(query, namespaces, k, filters, as_of, mode=mode)
        return pack(hits, token_budget)

    async def namespaces(self) -> list[tuple[str, int]]:
        """Namespaces this agent may read that have live entries, with their entry counts."""
        found = await self._read(q.namespaces)
        return [(ns, n) for ns, n in found if self.grants.allows(self.agent, ns, "read")]

    async def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        """Until the view has applied the log up to ``seq``."""
        await self.feed.wait_for(seq, timeout)

    async def catch_up(self, timeout: float = 30.0) -> int:
        """Until the view has every memory event in the log right now."""
        return await self.feed.catch_up(timeout)


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


class Memory:
    """The synchronous API: the same methods as :class:`AsyncMemory`, on a private event loop thread.

    ::

        with Memory.connect(agent="support-bot") as memory:
            memory.write("agent:support-bot", "The customer prefers email.")
            print(memory.context("how to contact the customer?"))
    """

    def __init__(self, memory: AsyncMemory, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.aio = memory
        self._loop = loop
        self._thread = thread

    @classmethod
    def connect(cls, url: str | None = None, **options: Any) -> Memory:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="tether-memory", daemon=True)
        thread.start()
        try:
            memory = asyncio.run_coroutine_threadsafe(connect_memory(url, **options), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(memory, loop, thread)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self.aio.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def position(self) -> int:
        return self.aio.position

    def write(self, namespace: str, text: str, key: str | None = None, metadata: Mapping[str, Any] | None = None,
              ttl: float | timedelta | None = None, expected_version: int | None = None, **kw: Any) -> Written:
        return self._call(self.aio.write(namespace, text, key, metadata, ttl, expected_version, **kw))

    def write_many(self, items: Iterable[Mapping[str, Any]], **kw: Any) -> BulkWritten:
        return self._call(self.aio.write_many(items, **kw))

    def get(self, namespace: str, key: str, as_of: AsOf = None, **kw: Any) -> Entry:
        return self._call(self.aio.get(namespace, key, as_of, **kw))

    def search(self, query: str, namespaces: Sequence[str] | str | None = None, k: int = 5,
               filters: Mapping[str, Any] | None = None, as_of: AsOf = None, **kw: Any) -> list[Hit]:
        return self._call(self.aio.search(query, namespaces, k, filters, as_of, **kw))

    def history(self, namespace: str, key: str, **kw: Any) -> list[Version]:
        return self._call(self.aio.history(namespace, key, **kw))

    def delete(self, namespace: str, key: str, **kw: Any) -> Written:
        return self._call(self.aio.delete(namespace, key, **kw))

    def forget(self, namespace: str, **kw: Any) -> list[str]:
        return self._call(self.aio.forget(namespace, **kw))

    def erase(self, namespace: str, **kw: Any) -> Erased:
        return self._call(self.aio.erase(namespace, **kw))

    def expire(self, **kw: Any) -> int:
        return self._call(self.aio.expire(**kw))

    def compact(self, namespace: str, token_budget: int, **kw: Any) -> Written | None:
        return self._call(self.aio.compact(namespace, token_budget, **kw))

    def context(self, query: str, namespaces: Sequence[str] | str | None = None, token_budget: int = 1000,
                **kw: Any) -> Context:
        return self._call(self.aio.context(query, namespaces, token_budget, **kw))

    def namespaces(self) -> list[tuple[str, int]]:
        return self._call(self.aio.namespaces())

    def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        self._call(self.aio.wait_for(seq, timeout))

    def catch_up(self, timeout: float = 30.0) -> int:
        return self._call(self.aio.catch_up(timeout))

