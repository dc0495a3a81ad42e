"""Memory's reads: entries now or as of a point in the log, their history, search and prompt context.

Every read waits until the view has applied this client's own writes (read-your-writes);
``after=seq`` waits for someone else's.
"""

from __future__ import annotations

import fnmatch
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from . import _query as q
from ._context import pack
from ._core import MemoryCore
from ._embed import VectorIndex
from ._errors import InvalidMemory, MemoryNotFound
from ._names import check_key
from ._rank import Candidate, fuse, query_terms, rerank, rrf_weighted, temporal, words
from ._types import Context, Entry, Hit, Version

__all__ = ["AsOf", "MemoryReads", "SearchMode"]

SearchMode = Literal["auto", "keyword", "semantic", "hybrid"]
AsOf = int | datetime | None


def _stamp(entry: Entry, default: float) -> float:
    return entry.updated_at.timestamp() if entry.updated_at is not None else default


def _valid(entry: Entry, default: float) -> float:
    when = entry.valid_time
    return when.timestamp() if when is not None else default


_NAME = re.compile(r"\b[A-Z][\w'-]*[a-z][\w'-]*(?:\s+[A-Z][\w-]*[a-z][\w-]*)+")


def _new_names(query: str, texts: Sequence[str]) -> str | None:
    """For a multi-hop question: the names (two or more capitalised words) the best hits bring that
    the query does not have, with the query's words neither those hits nor its own names hold
    ("Where does Ann's manager live?" + "Ann's manager is Leo Berg." -> "Leo Berg where does live")."""
    asked = set(words(query))
    found: list[str] = []
    seen = set()
    for text in texts:
        seen.update(words(text))
        for name in _NAME.findall(text):
            name = re.sub(r"'s$", "", name)
            if not set(words(name)) <= asked:
                found.append(" ".join(w for w in name.split() if w.lower() not in asked))
    if not found:
        return None
    own = {w for name in _NAME.findall(query) for w in words(name)}
    rest = [w for w in words(query) if w not in seen and w not in own]
    return " ".join(dict.fromkeys(found)) + (" " + " ".join(rest) if rest else "")


@dataclass(frozen=True, slots=True)
class _Scope:
    names: list[str] | None
    patterns: list[str] | None
    filters: Mapping[str, Any] | None
    include_compacted: bool
    seq: int | None
    at: float | None
    after: int | None


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
                     include_compacted: bool = False, after: int | None = None,
                     valid_at: datetime | Literal["query"] | None = None) -> list[Hit]:
        """The ``k`` most relevant live entries, best first.

        ``keyword`` is field-aware BM25 (text, key, metadata) blended with recency;
        ``semantic`` is cosine similarity of embeddings; ``hybrid`` scores the candidates of
        both by a weighted sum of the two (``self.ranking``); ``auto`` is hybrid when an
        embedder is set, else keyword. ``namespaces`` defaults to every namespace this agent
        may read; ``filters`` match metadata (see ``_query._filters``). Searches ``as_of`` a
        log position are keyword searches. ``valid_at`` searches the versions that were
        *true* then (valid time); ``valid_at="query"`` reads it from the query ("before
        March"), and a query about the present ("now", "latest") then favours the entries
        that became true most recently.
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
        now = self.clock()
        at, present = self._valid_at(query, valid_at, now)
        seq, _ = await self._as_of(as_of)
        if seq is not None:
            if at is not None:
                raise InvalidMemory("as_of (a log position) and valid_at (a valid time) cannot be combined")
            mode = "keyword"
        pool = max(4 * k, 40)
        vector = await self._query_vector(query) if mode != "keyword" else None
        scope = _Scope(names, patterns, filters, include_compacted, seq, at, after)
        found = await self._gather(query, vector, scope, mode, pool, now)
        ranked, scores = self._order(found, now, present, semantic_only=mode == "semantic")
        if self.ranking.expand and mode != "semantic" and ranked and seq is None:
            bridge = _new_names(query, [found[p][0].text for p in ranked[:1]])
            if bridge:  # multi-hop: a second, keyword pass for the names the best hit brings
                second = await self._gather(bridge, vector, scope, "keyword", pool, now, rescore=mode == "hybrid")
                again, _ = self._order(second, now, present, semantic_only=False)
                scores = rrf_weighted([(ranked, 1.0), (again, self.ranking.expand_weight)], k=1)
                found = {**second, **found}
                ranked = sorted(scores, key=lambda p: -scores[p])
        return [Hit(found[p][0], scores[p], found[p][2], found[p][3]) for p in ranked[:k]]

    async def _query_vector(self, query: str) -> list[float]:
        """The query's embedding (from the client's vector cache when it was embedded lately)."""
        embedder = self.embedder
        assert embedder is not None
        found = await self.vector_cache.embed(
            [query], embedder.name, lambda fresh: embedder.embed(fresh, agent=self.agent, run=self.run))
        return found[0]

    def _valid_at(self, query: str, valid_at: datetime | str | None, now: float) -> tuple[float | None, bool]:
        if valid_at is None:
            return None, False
        if valid_at == "query":
            when, present = temporal(query, now)
            return (when.timestamp() if when else None), present
        if isinstance(valid_at, datetime):
            return (valid_at if valid_at.tzinfo else valid_at.replace(tzinfo=UTC)).timestamp(), False
        raise InvalidMemory(f"valid_at must be a datetime, 'query' or None, got {valid_at!r}")

    async def _gather(self, query: str, vector: list[float] | None, scope: _Scope, mode: str, pool: int,
                      now: float, *, rescore: bool = True) -> dict[tuple[str, str], tuple[Entry, Candidate, int | None,
                                                                                          int | None]]:
        """The candidates of each retriever with both their scores: a keyword candidate gets its
        cosine similarity from its recorded vector, so hybrid re-ranks every candidate by both."""
        terms = query_terms(query)
        ranking = self.ranking
        keyword_hits: list[tuple[Entry, float]] = []
        if mode in ("keyword", "hybrid") and terms:
            keyword_hits = await self._read(lambda db: q.keyword(
                db, terms, namespaces=scope.names, patterns=scope.patterns, filters=scope.filters, now=now,
                limit=pool, as_of=scope.seq, include_compacted=scope.include_compacted, stats=self._terms,
                weights=(ranking.text_weight, ranking.key_weight, ranking.meta_weight), valid_at=scope.at),
                after=scope.after)
        semantic: list[tuple[Entry, float]] = []
        if vector is not None and mode in ("semantic", "hybrid") and scope.at is None:
            semantic = await self._semantic(vector, scope.names, scope.patterns, scope.filters, pool, now,
                                            scope.include_compacted, scope.after)
        out: dict[tuple[str, str], tuple[Entry, Candidate, int | None, int | None]] = {}
        for i, (e, bm) in enumerate(keyword_hits, start=1):
            out[(e.namespace, e.key)] = (e, Candidate(bm, None, _valid(e, now)), i, None)
        for i, (e, cos) in enumerate(semantic, start=1):
            pair = (e.namespace, e.key)
            old = out.get(pair)
            if old is None:
                out[pair] = (e, Candidate(None, cos, _valid(e, now)), None, i)
            else:
                old[1].cosine = cos
                out[pair] = (old[0], old[1], old[2], i)
        if vector is not None and mode == "hybrid" and rescore:
            missing = [p for p, (_, c, _, _) in out.items() if c.cosine is None]
            if missing:
                sims = await self._similarities(vector, missing, {p: out[p][0] for p in missing}, scope.at is not None)
                for pair, cos in sims.items():
                    out[pair][1].cosine = cos
        return out

    def _order(self, found: dict[tuple[str, str], tuple[Entry, Candidate, int | None, int | None]], now: float,
               present: bool, *, semantic_only: bool) -> tuple[list[tuple[str, str]], dict[tuple[str, str], float]]:
        """The candidates best first, and their scores."""
        pairs = list(found)
        if semantic_only:
            values = [found[p][1].cosine or 0.0 for p in pairs]
        else:
            fused = fuse([found[p][1] for p in pairs], self.ranking, present=present)
            ages = [now - _stamp(found[p][0], now) for p in pairs]
            values = rerank(fused, ages, weight=self.recency_weight, half_life_s=self.half_life_s)
        scores = dict(zip(pairs, values, strict=True))
        return sorted(pairs, key=lambda p: -scores[p]), scores

    async def _similarities(self, vector: list[float], pairs: list[tuple[str, str]],
                            entries: dict[tuple[str, str], Entry], past: bool) -> dict[tuple[str, str], float]:
        assert self.embedder is not None
        name = self.embedder.name

        def run(db: sqlite3.Connection) -> dict[tuple[str, str], float]:
            if not past:
                if self._vectors is None:
                    self._vectors = VectorIndex()
                self._vectors.refresh(db)
                return self._vectors.similarities(vector, name, pairs)
            import numpy as np

            blobs = q.embeddings(db, [entries[p].seq for p in pairs])
            query = np.asarray(vector, dtype=np.float32)
            out = {}
            for p in pairs:
                blob = blobs.get(entries[p].seq)
                if blob is not None and blob[1] == name:
                    row = np.frombuffer(blob[0], dtype="<f4")
                    if len(row) == len(query):
                        out[p] = float(row @ query)
            return out

        return await self._read(run)

    async def _semantic(self, vector: list[float], names: list[str] | None, patterns: list[str] | None,
                        filters: Mapping[str, Any] | None, pool: int, now: float, include_compacted: bool,
                        after: int | None) -> list[tuple[Entry, float]]:
        assert self.embedder is not None
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
                      mode: SearchMode = "auto", valid_at: datetime | Literal["query"] | None = None) -> Context:
        """Text to put in a prompt: the most relevant entries that fit ``token_budget``, each cited."""
        if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 16:
            raise InvalidMemory(f"token_budget must be an int >= 16, got {token_budget!r}")
        hits = await self.search(query, namespaces, k, filters, as_of, mode=mode, valid_at=valid_at)
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

    async def _as_of(self, as_of: AsOf) -> tuple[int | None, float | None]:
        if as_of is None:
            return None, None
        if isinstance(as_of, datetime):
            when = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
            return await self._read(q.seq_at, when), when.timestamp()
        if isinstance(as_of, bool) or not isinstance(as_of, int) or as_of < 0:
            raise InvalidMemory(f"as_of must be a stream sequence (int >= 0) or a datetime, got {as_of!r}")
        return as_of, await self._read(q.time_at, as_of)
