"""Memory's reads: entries now or as of a point in the log, their history, search and prompt context.

Every read waits until the view has applied this client's own writes (read-your-writes);
``after=seq`` waits for someone else's.
"""

from __future__ import annotations

import fnmatch
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from . import _query as q
from ._context import pack
from ._core import MemoryCore
from ._embed import VectorIndex
from ._errors import InvalidMemory, MemoryNotFound
from ._names import check_key
from ._rank import query_terms, rerank, rrf
from ._types import Context, Entry, Hit, Version

__all__ = ["AsOf", "MemoryReads", "SearchMode"]

SearchMode = Literal["auto", "keyword", "semantic", "hybrid"]
AsOf = int | datetime | None


def _stamp(entry: Entry, default: float) -> float:
    return entry.updated_at.timestamp() if entry.updated_at is not None else default


class MemoryReads(MemoryCore):
    """``get``, ``history``, ``search``, ``context``, ``namespaces``, ``wait_for`` and ``catch_up``."""

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

    async def entries(self, namespace: str, as_of: AsOf = None, *, limit: int = 100, after_key: str | None = None,
                      include_compacted: bool = False, after: int | None = None) -> list[Entry]:
        """The namespace's live entries now, or as of a stream sequence or a time, by key.

        At most ``limit`` (1 to 1000); ``after_key`` pages on (the entries whose key sorts after it).
        Deleted, expired and erased entries are left out; so are those a compaction replaced,
        unless ``include_compacted`` (read now, they say ``status="compacted"``).
        """
        self._check(namespace, "read")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidMemory(f"limit must be an int from 1 to 1000, got {limit!r}")
        if after_key is not None:
            check_key(after_key)
        seq, at = await self._as_of(as_of)
        return await self._read(_entries, namespace, seq, at, self.clock(), limit, after_key or "",
                                include_compacted, after=after)

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

    async def _as_of(self, as_of: AsOf) -> tuple[int | None, float | None]:
        if as_of is None:
            return None, None
        if isinstance(as_of, datetime):
            when = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
            return await self._read(q.seq_at, when), when.timestamp()
        if isinstance(as_of, bool) or not isinstance(as_of, int) or as_of < 0:
            raise InvalidMemory(f"as_of must be a stream sequence (int >= 0) or a datetime, got {as_of!r}")
        return as_of, await self._read(q.time_at, as_of)


def _entries(db: sqlite3.Connection, namespace: str, seq: int | None, at: float | None, now: float, limit: int,
             after_key: str, include_compacted: bool) -> list[Entry]:
    """:meth:`MemoryReads.entries`: the keys in order, each read now or as of ``seq``, until ``limit`` are live."""
    out: list[Entry] = []
    while len(out) < limit:
        if seq is None:
            keys = [r[0] for r in db.execute("SELECT key FROM memories WHERE namespace = ? AND key > ? "
                                             "ORDER BY key LIMIT ?", (namespace, after_key, limit))]
        else:
            keys = [r[0] for r in db.execute("SELECT DISTINCT key FROM versions WHERE namespace = ? AND key > ? "
                                             "AND seq <= ? ORDER BY key LIMIT ?", (namespace, after_key, seq, limit))]
        for key in keys:
            if seq is None:
                entry, _ = q.current(db, namespace, key, now)
            else:
                entry, _ = q.entry_as_of(db, namespace, key, seq, at)
                if entry is not None and not include_compacted and db.execute(
                        "SELECT 1 FROM compactions WHERE namespace = ? AND key = ? AND seq <= ? "
                        "AND (version IS NULL OR version >= ?) LIMIT 1", (namespace, key, seq, entry.version)
                ).fetchone() is not None:
                    entry = None  # a summary had replaced it by then
            if entry is not None and (include_compacted or entry.status == "live"):
                out.append(entry)
                if len(out) == limit:
                    break
        if len(keys) < limit:
            break
        after_key = keys[-1]
    return out
