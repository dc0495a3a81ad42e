"""Memory's reads: entries now or as of a point in the log, their history, search and prompt context.

Every read waits until the view has applied this client's own writes (read-your-writes);
``after=seq`` waits for someone else's.
"""

from __future__ import annotations

import asyncio
import fnmatch
import math
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from . import _query as q
from ._context import pack
from ._core import MemoryCore
from ._embed import LateEmbedder, QueryEmbedder, SpanEmbedder, VectorIndex
from ._errors import InvalidMemory, MemoryNotFound
from ._late import kept
from ._names import check_key
from ._rank import (
    STOPWORDS,
    Candidate,
    Features,
    content_words,
    features,
    fuse,
    guard,
    query_terms,
    recency,
    rerank,
    score,
    similar_words,
    temporal,
    words,
)
from ._rank import names as _names
from ._rank import stem as _stem
from ._types import Context, Entry, Hit, Version
from ._view import meta_words

__all__ = ["AsOf", "MemoryReads", "SearchMode"]

SearchMode = Literal["auto", "keyword", "semantic", "hybrid"]
AsOf = int | datetime | None
_WITHOUT_NAMES = "\x00without-names-{}"
"""Appended to the embedder's name in the vector cache (with ``Ranking.unnamed_push``): a query's vector
without its names' tokens."""
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""A key written without one (``uuid7()``): no words for late interaction to read (``Ranking.late_fields``)."""
_QUERY_WORDS_SIMILAR = 0.55
"""The semantic test's threshold for an embedder that names none (``words_similar``): MiniLM's."""


def _stamp(entry: Entry, default: float) -> float:
    return entry.updated_at.timestamp() if entry.updated_at is not None else default


def _valid(entry: Entry, default: float) -> float:
    when = entry.valid_time
    return when.timestamp() if when is not None else default


def _name_spans(query: str, asked: Sequence[str]) -> list[tuple[int, int]]:
    """Where the query's names are (each with its "'s"), as character offsets ``[start, end)``, in order."""
    return sorted({(m.start(), m.end()) for name in asked for m in re.finditer(rf"\b{re.escape(name)}(?:'s)?", query)})


def _without(query: str, asked: Sequence[str]) -> str:
    """The query without its names ("Which animal lives with Jana Novak?" -> "Which animal lives with?")."""
    kept, at = [], 0
    for start, end in _name_spans(query, asked):
        kept.append(query[at:max(at, start)])
        at = max(at, end)
    return " ".join(" ".join([*kept, query[at:]]).split()).replace(" ?", "?")


def _held(text: str, *, stems: bool) -> set[str]:
    """A text's words (and their crude stems): what a second-hop pick must not hold of the relation."""
    ws = words(text)
    return {*ws, *(_stem(w) for w in ws)} if stems else set(ws)


async def _nth(vectors: asyncio.Future[list[list[float]]], i: int) -> list[float]:
    return (await vectors)[i]


def _relation(query: str, asked: Sequence[str]) -> frozenset[str]:
    """The stems of the query's content words that are not its names: what it asks about them."""
    own = {w for name in asked for w in words(name)}
    return frozenset(_stem(w) for w in words(query) if w not in STOPWORDS and w not in own and len(w) > 2)


def _bridges(query: str, texts: Sequence[str], evidence: Sequence[str] | None = None
             ) -> list[tuple[str, str, frozenset[str]]]:
    """For a multi-hop question, one second-hop search per new name the first hits bring, best
    hit first: (the name, its query, words its answer must not hold). A hit bridges when it
    names what the query names ("Ann Borg reports to Ben Berg." for "Where does Ann Borg's
    manager live?" gives ("Ben Berg", "Ben Berg where does live", {"manager"})): the query's
    own names and the relation word after a possessive ("manager") are left out, and that
    word marks the first hop's kind of entry, not the answer.

    With ``evidence`` (for each hit, its text, key and metadata words), a hit bridges only if
    it also holds one of the query's words besides the names (its stem: "manages" for
    "manager"): the hit is about what the query asks of the name, not merely another fact
    of the same person ("Greta Novak reports to Jana Fisher." does not make "Should I offer
    Greta Novak an espresso?" a question about Jana Fisher)."""
    return [(name, second, relation) for _, name, second, relation in _bridge_hits(query, texts, evidence,
                                                                                   require=evidence is not None)]


def _bridge_hits(query: str, texts: Sequence[str], evidence: Sequence[str] | None = None, *,
                 require: bool = True, rest: bool = False, related: Mapping[int, frozenset[str]] | None = None
                 ) -> list[tuple[int, str, str, frozenset[str]]]:
    """:func:`_bridges` with the index of the hit each name comes from; ``require``: the evidence
    rule. ``rest``: the second query is the new name and the query's words the hit does not hold
    (in ``evidence``, else its text), instead of the query with "<name>'s <relation>" swapped for
    the new name. ``related``: hits that pass the evidence rule by the meaning of their words
    (``Ranking.expand_similar``), each with the query's and its own words that matched: the
    query's are left out of the second question, and the second hop's pick holds none of them."""
    asked = _names(query)
    relation = frozenset(words(" ".join(re.findall(r"'s\s+(\w+)", query))))
    own = {w for name in asked for w in words(name)}
    every = set(words(query))
    asks = _relation(query, asked)
    out: list[tuple[int, str, str, frozenset[str]]] = []
    for i, text in enumerate(texts):
        here = _names(text)
        if not here or (asked and not any(name in here for name in asked)):
            continue
        held = {_stem(w) for w in words(evidence[i] if evidence is not None else text)}
        matched = related.get(i, frozenset()) if related is not None else frozenset()
        if require and not asks & held and not matched:
            continue
        seen = set(words(text))
        if rest:
            left = [w for w in words(query) if w not in own and len(w) > 1 and _stem(w) not in held
                    and w not in matched]
        else:
            left = [w for w in words(query) if w not in own and w not in relation and w not in seen
                    and w not in matched]
        for name in here:
            if not set(words(name)) <= every and name not in (b[1] for b in out):
                if rest:
                    out.append((i, name, " ".join([name, *left]), frozenset()))
                    continue
                # "Where does Ann Borg's manager live?" -> "Where does Ben Berg live?"
                asked_for = [a for a in asked if a in here]
                swapped = re.sub(rf"\b{re.escape(asked_for[0])}'s\s+\w+", name, query) if asked_for else query
                out.append((i, name, swapped if swapped != query else " ".join([name, *left]), relation | matched))
    return out


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
        scope = _Scope(names, patterns, filters, include_compacted, seq, at, after)
        asked = _names(query)
        # with Ranking.unnamed, the query without its names is embedded too (in the same call)
        bare = _without(query, asked) if (self.ranking.unnamed and asked and mode == "hybrid"
                                          and at is None and seq is None) else None
        if bare is not None and not query_terms(bare):
            bare = None  # nothing but the names (or stopwords) is asked: nothing to weigh
        vector: list[float] | None = None
        unnamed: list[float] | None = None
        # one encode gives both when the embedder pools without the names' tokens (Ranking.unnamed_from)
        source = self.ranking.unnamed_from
        push = self.ranking.unnamed_push if source == "tokens" else 0.0
        spans = _name_spans(query, asked) if bare is not None and isinstance(self.embedder, SpanEmbedder) and (
            source == "tokens" or (source == "auto" and getattr(self.embedder, "spans_exact", False))) else None
        if mode != "keyword":
            space = self._query_space()
            vector = self.vector_cache.lookup(space, query)
            if spans is not None:
                unnamed = self.vector_cache.lookup(space + _WITHOUT_NAMES.format(push), query)
            elif bare is not None:
                unnamed = self.vector_cache.lookup(space, bare)
        if mode != "keyword" and (vector is None or (bare is not None and unnamed is None)):
            # embed the query (on the embedder's thread) while the keyword retriever runs (on the reader's)
            both = asyncio.ensure_future(self._query_vectors_without(query, spans, push) if spans is not None
                                         else self._query_vectors([query] if bare is None else [query, bare]))
            embedding = asyncio.ensure_future(_nth(both, 0))
            second = asyncio.ensure_future(_nth(both, 1)) if bare is not None else None
            try:
                found = await self._gather(query, embedding, scope, mode, pool, now, unnamed=second)
            finally:
                for task in (both, embedding, second):
                    if task is not None and not task.done():
                        task.cancel()
            vector = embedding.result()
        else:
            found = await self._gather(query, vector, scope, mode, pool, now, unnamed=unnamed)
        if (self.ranking.late and mode == "hybrid" and self.ranking.fusion == "zscore" and found
                and isinstance(self.embedder, LateEmbedder)):
            await self._late(query, asked, found)
        ranked, scores = self._order(found, now, present, semantic_only=mode == "semantic", asked=asked)
        best = max(scores.values(), default=0.0) or 1.0
        first = {p: scores[p] / best for p in ranked}
        hop2: dict[tuple[str, str], float] = {}
        if self.ranking.expand and mode != "semantic" and ranked and seq is None:
            ranked, scores, hop2 = await self._second_hop(query, vector, scope, mode, pool, now, present, found,
                                                          ranked, scores)
        if (self.ranking.model is not None or self._capture is not None) and mode != "semantic" and ranked:
            ranked, scores = self._rerank(query, present, found, ranked, scores, first, hop2, now)
        return [Hit(found[p][0], scores[p], found[p][2], found[p][3]) for p in ranked[:k]]

    _capture: list[tuple[str, list[tuple[str, str, str]], list[list[float]]]] | None = None
    """Set to a list (by ``bench/memory.py``), every search appends its query, its top candidates
    (namespace, key, text) and their re-ranking features: what the model is trained on."""

    def _rerank(self, query: str, present: bool,
                found: dict[tuple[str, str], tuple[Entry, Candidate, int | None, int | None]],
                ranked: list[tuple[str, str]], scores: dict[tuple[str, str], float],
                first: dict[tuple[str, str], float], hop2: dict[tuple[str, str], float], now: float
                ) -> tuple[list[tuple[str, str]], dict[tuple[str, str], float]]:
        """The first ``model_top`` candidates re-ordered by the re-ranking model (``Ranking.model``)."""
        top = ranked[:self.ranking.model_top]
        rows = features(words(query), _names(query), present, [
            Features(c.bm25, c.cosine, kp, sp, c.valid, recency(now - _stamp(e, now), self.half_life_s), e.text,
                     e.key, meta_words(e.metadata), first.get(p), hop2.get(p))
            for p in top for e, c, kp, sp in (found[p],)])
        if self._capture is not None:
            self._capture.append((query, [(p[0], p[1], found[p][0].text) for p in top], rows))
        if self.ranking.model is None:
            return ranked, scores
        values = score(self.ranking.model, rows)
        order = sorted(range(len(top)), key=lambda i: -values[i])
        # scores stay in order: the re-ranked ones above the rest, by the model's logistic
        floor = max((scores[p] for p in ranked[len(top):]), default=0.0)
        new = {top[i]: floor + 1.0 / (1.0 + math.exp(-values[i])) for i in order}
        return [top[i] for i in order] + ranked[len(top):], {**scores, **new}

    async def _late(self, query: str, asked: Sequence[str],
                    found: dict[tuple[str, str], tuple[Entry, Candidate, int | None, int | None]]) -> None:
        """Each candidate's late-interaction score (``Ranking.late``): the mean over the query's tokens
        (``late_tokens``, weighed by ``late_sif``) of each one's best cosine among the candidate's tokens."""
        import numpy as np

        embedder = self.embedder
        assert isinstance(embedder, LateEmbedder)
        ranking = self.ranking
        tokens = await embedder.query_tokens(query, agent=self.agent, run=self.run)
        if ranking.late_tokens == "all":
            weights = np.ones(len(tokens.pieces), dtype=np.float32)
        else:
            leave = set(STOPWORDS) | ({w for name in asked for w in words(name)} if ranking.late_tokens == "asked"
                                      else set())
            weights = np.asarray(kept(tokens.pieces, leave), dtype=np.float32)
        if ranking.late_sif:
            weights *= np.asarray(tokens.weights, dtype=np.float32)
        pairs = list(found)
        texts = [found[p][0].text if ranking.late_fields == "text" else
                 f"{e.text} {_UUID.sub(' ', e.key).replace('/', ' ').replace('-', ' ')} {meta_words(e.metadata)}"
                 for p in pairs for e in (found[p][0],)]
        for pair, value in zip(pairs, embedder.late_scores(tokens, weights, texts), strict=True):
            found[pair][1].late = value

    async def _second_hop(self, query: str, vector: list[float] | None, scope: _Scope, mode: str, pool: int,
                          now: float, present: bool,
                          found: dict[tuple[str, str], tuple[Entry, Candidate, int | None, int | None]],
                          ranked: list[tuple[str, str]], scores: dict[tuple[str, str], float]
                          ) -> tuple[list[tuple[str, str]], dict[tuple[str, str], float],
                                     dict[tuple[str, str], float]]:
        """Multi-hop: the first hop keeps its best ``expand_at - 1`` places; the next go to the best
        entry of each new name its best ``expand_from`` hits bring (up to ``expand_slots``), found
        by a search for the name and re-ranked like the first hop. With ``expand_fusion="score"``
        every second-hop entry naming the name competes with the first hop's at a discounted score.
        Also returns the second hop's (normalised) score of each entry it brought."""
        ranking = self.ranking
        keep = max(ranking.expand_at, 1) - 1
        picks: list[tuple[str, str]] = []
        similar = bool(self._words_similar()) and ranking.expand_evidence and mode == "hybrid"
        # the semantic test may look deeper than expand_from for a hit that bridges (expand_deep)
        hits = [found[p][0] for p in ranked[:max(ranking.expand_from, ranking.expand_deep if similar else 0)]]
        scoring = ranking.expand_fusion == "score"
        evidence = ([f"{e.text} {e.key} {meta_words(e.metadata)}" for e in hits]
                    if ranking.expand_evidence or ranking.expand_query == "rest" else None)
        related = await self._related_hits(query, hits) if similar else None
        bridges = [b for b in _bridge_hits(query, [e.text for e in hits], evidence, require=ranking.expand_evidence,
                                           rest=ranking.expand_query == "rest", related=related)
                   if b[0] < ranking.expand_from or (related is not None and b[0] in related)
                   ][:ranking.expand_slots]
        vectors: list[list[float] | None] = [None] * len(bridges)
        if bridges and mode == "hybrid" and ranking.expand_embed:
            vectors = list(await self._query_vectors([b[2] for b in bridges]))
        best = max(scores.values(), default=0.0) or 1.0
        combined = {p: scores[p] / best for p in ranked}
        brought: dict[tuple[str, str], float] = {}
        for (source, name, bridge, banned), hop in zip(bridges, vectors, strict=True):
            second = await self._gather(bridge, hop or vector, scope, "hybrid" if hop else "keyword", pool, now,
                                        rescore=mode == "hybrid")
            again, got = self._order(second, now, present, semantic_only=False, asked=[name])
            lowered = name.lower()
            if scoring:
                # every entry naming the new name, discounted by its bridge's score (both hops normalised)
                weight = ranking.expand_discount * combined[ranked[source]] / (max(got.values(), default=0.0) or 1.0)
                for p in (p for p in again if lowered in second[p][0].text.lower()):
                    value = weight * got[p]
                    brought[p] = max(brought.get(p, 0.0), value)
                    if value > combined.get(p, -1.0):
                        combined[p] = value
                        found.setdefault(p, second[p])
                continue
            pick = next((p for p in again if p not in ranked[:keep] and p not in picks and p != ranked[source]
                         and lowered in second[p][0].text.lower()
                         and not banned & _held(second[p][0].text, stems=related is not None and source in related)),
                        None)
            if pick is not None:
                if source >= keep and related and source in related and ranked[source] not in picks:
                    picks.append(ranked[source])  # a bridge the semantic test found below the kept places
                picks.append(pick)
                found.setdefault(pick, second[pick])
        if scoring:
            order = sorted(combined, key=lambda p: -combined[p])
            return order, {p: combined[p] * best for p in order}, brought
        if not picks:
            return ranked, scores, {}
        rest = [p for p in ranked if p not in picks]
        merged = [*rest[:keep], *picks, *rest[keep:]]
        floor = scores[rest[keep - 1]] if 0 < keep <= len(rest) else 0.0
        return merged, {**scores, **{p: floor for p in picks}}, {p: floor / best for p in picks}

    async def _related_hits(self, query: str, hits: Sequence[Entry]) -> dict[int, frozenset[str]]:
        """The hits (by index) that name the query's names and someone else, and hold a word whose
        embedding is like one of the query's (``Ranking.expand_similar``), each with the words of
        both sides that matched. The words are embedded in one call (cached: a hit's words recur)."""
        asked = _names(query)
        mine = {w for name in asked for w in words(name)}
        ask = content_words(query, mine)
        held: dict[int, list[str]] = {}
        for i, e in enumerate(hits):
            here = _names(e.text)
            if asked and any(n in here for n in asked) and any(n not in asked for n in here):
                theirs = {w for name in here for w in words(name)}
                held[i] = content_words(f"{e.text} {e.key.replace('/', ' ').replace('-', ' ')} "
                                        f"{meta_words(e.metadata)}", theirs)
        if not ask or not held:
            return {}
        vocabulary = list(dict.fromkeys([*ask, *(w for ws in held.values() for w in ws)]))
        vectors = dict(zip(vocabulary, await self._word_vectors(vocabulary), strict=True))
        out = {}
        for i, ws in held.items():
            matched = similar_words({w: vectors[w] for w in ask}, {w: vectors[w] for w in ws},
                                    self._words_similar())
            if matched:
                out[i] = matched | {_stem(w) for w in matched}
        return out

    def _words_similar(self) -> float:
        """The semantic test's threshold: ``Ranking.expand_similar``, else that of the embedder that
        embeds the words (``words_similar``: the static table's 0.35; MiniLM's 0.55)."""
        if self.ranking.expand_similar is not None:
            return self.ranking.expand_similar
        embedder = self.embedder
        if self.ranking.expand_words == "queries" and isinstance(embedder, QueryEmbedder):
            return _QUERY_WORDS_SIMILAR
        return float(getattr(embedder, "words_similar", _QUERY_WORDS_SIMILAR))

    async def _word_vectors(self, texts: list[str]) -> list[list[float]]:
        """The semantic test's single words, by the embedder's document side unless
        ``Ranking.expand_words="queries"`` (cached under the side's name)."""
        embedder = self.embedder
        assert embedder is not None
        if self.ranking.expand_words == "queries" or not isinstance(embedder, QueryEmbedder):
            return await self._query_vectors(texts)
        return await self.vector_cache.embed(
            texts, embedder.name, lambda fresh: embedder.embed(fresh, agent=self.agent, run=self.run))

    async def _query_vector(self, query: str) -> list[float]:
        """The query's embedding (from the client's vector cache when it was embedded lately)."""
        return (await self._query_vectors([query]))[0]

    def _query_space(self) -> str:
        """What the client's queries are cached under: the embedder's name, or the name of its query
        encoder when it embeds queries another way than documents (:class:`QueryEmbedder`)."""
        embedder = self.embedder
        assert embedder is not None
        return embedder.query_name if isinstance(embedder, QueryEmbedder) else embedder.name

    async def _query_vectors(self, queries: list[str]) -> list[list[float]]:
        embedder = self.embedder
        assert embedder is not None
        if isinstance(embedder, QueryEmbedder):
            asked = embedder
            return await self.vector_cache.embed(
                queries, asked.query_name, lambda fresh: asked.embed_queries(fresh, agent=self.agent, run=self.run))
        return await self.vector_cache.embed(
            queries, embedder.name, lambda fresh: embedder.embed(fresh, agent=self.agent, run=self.run))

    async def _query_vectors_without(self, query: str, spans: list[tuple[int, int]], push: float
                                     ) -> list[list[float]]:
        """The query's vector and its vector without ``spans`` (its names) from one encode, both cached:
        the mean of the other tokens' outputs pushed away from the names' (``Ranking.unnamed_push``)."""
        import numpy as np

        embedder = self.embedder
        assert isinstance(embedder, SpanEmbedder)
        self.vector_cache.misses += 1
        full, outside, inside = await embedder.embed_spans(query, spans, agent=self.agent, run=self.run)
        without = np.asarray(outside, dtype=np.float32)
        if push:
            without -= np.float32(push) * np.asarray(inside, dtype=np.float32)
            without /= max(float(np.linalg.norm(without)), 1e-12)
        unnamed: list[float] = without.tolist()
        space = self._query_space()
        self.vector_cache.put(space, query, full)
        self.vector_cache.put(space + _WITHOUT_NAMES.format(push), query, unnamed)
        return [full, unnamed]

    def _valid_at(self, query: str, valid_at: datetime | str | None, now: float) -> tuple[float | None, bool]:
        if valid_at is None:
            return None, False
        if valid_at == "query":
            when, present = temporal(query, now)
            return (when.timestamp() if when else None), present
        if isinstance(valid_at, datetime):
            return (valid_at if valid_at.tzinfo else valid_at.replace(tzinfo=UTC)).timestamp(), False
        raise InvalidMemory(f"valid_at must be a datetime, 'query' or None, got {valid_at!r}")

    async def _gather(self, query: str, vector: list[float] | asyncio.Future[list[float]] | None, scope: _Scope,
                      mode: str, pool: int, now: float, *, rescore: bool = True,
                      unnamed: list[float] | asyncio.Future[list[float]] | None = None
                      ) -> dict[tuple[str, str], tuple[Entry, Candidate, int | None, int | None]]:
        """The candidates of each retriever with both their scores: a keyword candidate gets its
        cosine similarity from its recorded vector, so hybrid re-ranks every candidate by both.
        ``vector`` may still be being computed (a future): the keyword retriever runs meanwhile,
        then the rest once it is there (two trips to the reader thread instead of one)."""
        terms = query_terms(query)
        ranking = self.ranking
        use_keyword = mode in ("keyword", "hybrid") and bool(terms)
        use_vectors = vector is not None and mode in ("semantic", "hybrid") and scope.at is None
        rescore = vector is not None and mode == "hybrid" and rescore

        def keyword(db: sqlite3.Connection) -> list[tuple[Entry, float]]:
            return q.keyword(db, terms, namespaces=scope.names, patterns=scope.patterns, filters=scope.filters,
                             now=now, limit=pool, as_of=scope.seq, include_compacted=scope.include_compacted,
                             stats=self._terms, weights=(ranking.text_weight, ranking.key_weight,
                                                         ranking.meta_weight), valid_at=scope.at)

        def run(db: sqlite3.Connection, keyword_hits: list[tuple[Entry, float]] | None, vector: list[float] | None,
                bare: list[float] | None) -> dict[tuple[str, str], tuple[Entry, Candidate, int | None, int | None]]:
            # one trip to the reader thread for both retrievers and the re-scoring
            if keyword_hits is None:
                keyword_hits = keyword(db) if use_keyword else []
            semantic = self._nearest(db, vector, scope, pool, now) if use_vectors and vector is not None else []
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
            if rescore and vector is not None:
                missing = [p for p, (_, c, _, _) in out.items() if c.cosine is None]
                if missing:
                    sims = self._cosines(db, vector, missing, {p: out[p][0] for p in missing}, scope.at is not None)
                    for pair, cos in sims.items():
                        out[pair][1].cosine = cos
            if bare is not None and rescore and out:
                # each candidate's cosine to the query without its names (Ranking.unnamed)
                assert self.embedder is not None
                for pair, cos in self._index(db).similarities(bare, self.embedder.name, list(out)).items():
                    out[pair][1].unnamed = cos
            return out

        if isinstance(vector, asyncio.Future):
            early = await self._read(keyword, after=scope.after) if use_keyword else []
            vector = await vector
        else:
            early = None
        if isinstance(unnamed, asyncio.Future):
            unnamed = await unnamed
        return await self._read(run, early, vector, unnamed, after=scope.after)

    def _order(self, found: dict[tuple[str, str], tuple[Entry, Candidate, int | None, int | None]], now: float,
               present: bool, *, semantic_only: bool, asked: Sequence[str] = ()
               ) -> tuple[list[tuple[str, str]], dict[tuple[str, str], float]]:
        """The candidates best first, and their scores; ``asked``: the names the query names."""
        pairs = list(found)
        if semantic_only:
            values = [found[p][1].cosine or 0.0 for p in pairs]
        else:
            fused = fuse([found[p][1] for p in pairs], self.ranking, present=present)
            if asked and self.ranking.entity and fused:
                lowered = [a.lower() for a in asked]
                lift = self.ranking.entity * (max(fused) or 1.0)
                fused = [f + lift * any(a in found[p][0].text.lower() for a in lowered)
                         for f, p in zip(fused, pairs, strict=True)]
            ages = [now - _stamp(found[p][0], now) for p in pairs]
            values = rerank(fused, ages, weight=self.recency_weight, half_life_s=self.half_life_s)
        scores = dict(zip(pairs, values, strict=True))
        order = sorted(pairs, key=lambda p: -scores[p])
        if self.ranking.guard and not semantic_only and any(found[p][1].cosine is not None for p in pairs):
            first = sorted((p for p in pairs if found[p][2] is not None), key=lambda p: found[p][2] or 0)
            lifted = guard(order, first, top=self.ranking.guard, at=self.ranking.guard_at)
            if lifted != order:
                at = min(self.ranking.guard_at, len(lifted)) - 1
                floor = scores[order[at]] if at >= 0 else 0.0
                scores = {**scores, **{p: max(scores[p], floor) for p in lifted[:at + 1] if p not in order[:at + 1]}}
                order = lifted
        return order, scores

    def _cosines(self, db: sqlite3.Connection, vector: list[float], pairs: list[tuple[str, str]],
                 entries: dict[tuple[str, str], Entry], past: bool) -> dict[tuple[str, str], float]:
        """The query's cosine similarity to these entries' recorded vectors (in the reader thread)."""
        assert self.embedder is not None
        name = self.embedder.name
        if not past:
            return self._index(db).similarities(vector, name, pairs)
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

    def _index(self, db: sqlite3.Connection) -> VectorIndex:
        if self._vectors is None:
            self._vectors = VectorIndex()
        self._vectors.refresh(db)
        return self._vectors

    def _nearest(self, db: sqlite3.Connection, vector: list[float], scope: _Scope, pool: int,
                 now: float) -> list[tuple[Entry, float]]:
        """The semantic candidates: the nearest live entries in scope (in the reader thread)."""
        assert self.embedder is not None
        names, patterns, filters = scope.names, scope.patterns, scope.filters

        def allow(ns: str) -> bool:
            if names is not None:
                return ns in names
            return patterns is None or any(fnmatch.fnmatchcase(ns, p) for p in patterns)

        nearest = self._index(db).search(vector, self.embedder.name, pool * (4 if filters else 1), allow)
        found = q.entries(db, [p for p, _ in nearest], now, scope.include_compacted)
        if filters:
            keep = q.matching(db, list(found), filters)
            found = {p: e for p, e in found.items() if p in keep}
        return [(found[p], s) for p, s in nearest if p in found][:pool]

    async def context(self, query: str, namespaces: Sequence[str] | str | None = None, token_budget: int = 1000,
                      *, k: int = 20, filters: Mapping[str, Any] | None = None, as_of: AsOf = None,
                      mode: SearchMode = "auto", valid_at: datetime | Literal["query"] | None = None) -> Context:
        """Text to put in a prompt: the most relevant entries that fit ``token_budget``, each cited."""
        if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 16:
            raise InvalidMemory(f"token_budget must be an int >= 16, got {token_budget!r}")
        hits = await self.search(query, namespaces, k, filters, as_of, mode=mode, valid_at=valid_at)
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
