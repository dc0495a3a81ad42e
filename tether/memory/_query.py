"""Reading the memory view: SQL over one SQLite connection, no NATS, no clock of its own.

Every function takes ``now`` (epoch seconds) where expiry matters, and ``as_of`` (a
stream sequence) for reads of the past. An entry is *live* when its current row is not
deleted (a deletion aimed at an older version does not count), not past its
``expires_at``, and, unless asked, not replaced by a compaction summary.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from tether.schemas import NON_FINITE_HINT

from ._errors import InvalidMemory
from ._types import Entry, Version, to_datetime
from ._view import ns_token, split_replaced

__all__ = [
    "current",
    "entry_as_of",
    "history",
    "keyword",
    "live",
    "seq_at",
    "time_at",
]

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}(?:\.[A-Za-z_][A-Za-z0-9_-]{0,63}){0,4}")
_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "ne": "!=", "eq": "="}

DELETED = "(m.deleted IS NOT NULL AND (m.deleted_version IS NULL OR m.deleted_version >= m.version))"
COMPACTED = "(m.compacted_into IS NOT NULL AND (m.compacted_version IS NULL OR m.compacted_version >= m.version))"
EXPIRED = "(v.expires_at IS NOT NULL AND v.expires_at <= :now)"
COLUMNS = ("v.namespace, v.key, m.version, v.text, v.metadata, v.seq, m.created_at, v.time, v.expires_at, v.agent, "
           "v.run, v.source_call_id, v.source_message_id, m.kind, " + COMPACTED + ", m.compacted_into, v.replaced, "
           "v.valid_from, v.observed_at")
CURRENT = "JOIN memories m ON m.namespace = v.namespace AND m.key = v.key AND m.write_seq = v.seq"


READ_CACHE_KIB = 16_384
"""The read connection's page cache (SQLite's default is 2 MiB)."""
READ_MMAP_BYTES = 1 << 30
"""How much of the view file the read connection maps into memory instead of reading it page by
page: search reads the FTS index's pages of every word it scores, and copying them from the
operating system's cache each time was a tenth of a keyword search at 100k entries."""


def tune_reader(db: sqlite3.Connection) -> None:
    """The read connection's page cache and memory map (:data:`READ_CACHE_KIB`, :data:`READ_MMAP_BYTES`)."""
    db.execute(f"PRAGMA cache_size=-{READ_CACHE_KIB}")
    db.execute(f"PRAGMA mmap_size={READ_MMAP_BYTES}")


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(namespace=row[0], key=row[1], version=int(row[2] or 0), text=row[3] or "",
                 metadata=json.loads(row[4] or "{}"), seq=int(row[5]), created_at=to_datetime(row[6]),
                 updated_at=to_datetime(row[7]), expires_at=to_datetime(row[8]), agent=row[9], run=row[10],
                 source_call_id=row[11], source_message_id=row[12], kind=row[13] or "memory",
                 status="compacted" if row[14] else "live", compacted_into=row[15] if row[14] else None,
                 replaced=tuple(json.loads(row[16])) if row[16] else (), valid_from=to_datetime(row[17]),
                 observed_at=to_datetime(row[18]))


def current(db: sqlite3.Connection, namespace: str, key: str, now: float) -> tuple[Entry | None, str | None]:
    """The live entry, or None and why not (``deleted``, ``expired``, ``merged``... or None if never written)."""
    row = db.execute(f"SELECT {COLUMNS}, {DELETED}, m.deleted, {EXPIRED} FROM versions v {CURRENT} "
                     "WHERE v.namespace = :ns AND v.key = :key",
                     {"ns": namespace, "key": key, "now": now}).fetchone()
    if row is None:
        return None, None
    if row[19]:
        return None, str(row[20])
    if row[21]:
        return None, "expired"
    return _entry(row), None


def live_version(db: sqlite3.Connection, namespace: str, key: str, now: float) -> int:
    """The live version number, 0 if absent, deleted or expired: what ``expected_version`` is checked against."""
    row = db.execute(f"SELECT m.version, {DELETED}, {EXPIRED} FROM memories m "
                     "LEFT JOIN versions v ON v.seq = m.write_seq WHERE m.namespace = :ns AND m.key = :key",
                     {"ns": namespace, "key": key, "now": now}).fetchone()
    if row is None or row[0] is None or row[1] or row[2]:
        return 0
    return int(row[0])


def valid_times(db: sqlite3.Connection, pairs: Sequence[tuple[str, str]], now: float) -> dict[tuple[str, str], float]:
    """The valid time (``valid_from``, else when written) of each live entry's current version."""
    out: dict[tuple[str, str], float] = {}
    for ns, key in dict.fromkeys(pairs):
        entry, _ = current(db, ns, key, now)
        if entry is not None and entry.valid_time is not None:
            out[(ns, key)] = entry.valid_time.timestamp()
    return out


def next_version(db: sqlite3.Connection, namespace: str, key: str) -> int:
    """The number the next write of this key gets (versions keep counting across deletions)."""
    row = db.execute("SELECT version FROM memories WHERE namespace = ? AND key = ?", (namespace, key)).fetchone()
    return 1 + int(row[0] or 0) if row else 1


def time_at(db: sqlite3.Connection, seq: int) -> float | None:
    row = db.execute("SELECT time FROM versions WHERE seq <= ? ORDER BY seq DESC LIMIT 1", (seq,)).fetchone()
    return None if row is None else float(row[0])


def seq_at(db: sqlite3.Connection, when: datetime) -> int:
    """The last memory event at or before ``when`` (by the time its writer recorded)."""
    row = db.execute("SELECT max(seq) FROM versions WHERE time <= ?", (when.timestamp(),)).fetchone()
    return int(row[0] or 0)


def entry_as_of(db: sqlite3.Connection, namespace: str, key: str, seq: int, at: float | None) -> tuple[Entry | None,
                                                                                                       str | None]:
    """The entry as it was once the log reached ``seq``; ``at`` is the time then (for expiry)."""
    row = db.execute(
        "SELECT v.namespace, v.key, (SELECT count(*) FROM versions w WHERE w.namespace = v.namespace "
        "AND w.key = v.key AND w.seq <= v.seq AND w.action != 'deleted'), v.text, v.metadata, v.seq, "
        "(SELECT min(time) FROM versions w WHERE w.namespace = v.namespace AND w.key = v.key), v.time, "
        "v.expires_at, v.agent, v.run, v.source_call_id, v.source_message_id, "
        "CASE v.action WHEN 'compacted' THEN 'summary' ELSE 'memory' END, 0, NULL, v.replaced, v.valid_from, "
        "v.observed_at, v.action, v.reason "
        "FROM versions v WHERE v.namespace = ? AND v.key = ? AND v.seq <= ? ORDER BY v.seq DESC LIMIT 1",
        (namespace, key, seq)).fetchone()
    if row is None:
        return None, None
    if row[19] == "deleted":
        return None, str(row[20] or "deleted")
    if row[8] is not None and at is not None and row[8] <= at:
        return None, "expired"
    return _entry(row), None


def history(db: sqlite3.Connection, namespace: str, key: str) -> list[Version]:
    """Every version and deletion, oldest first; version numbers count the writes."""
    out: list[Version] = []
    number = 0
    for row in db.execute("SELECT seq, action, text, metadata, time, reason, agent, run, source_call_id, "
                          "source_message_id, event_id FROM versions "
                          "WHERE namespace = ? AND key = ? AND action != 'embedded' ORDER BY seq",
                          (namespace, key)):
        if row[1] != "deleted":
            number += 1
        out.append(Version(version=number, action=row[1], seq=int(row[0]), time=to_datetime(row[4]), text=row[2],
                           metadata=json.loads(row[3] or "{}"), reason=row[5], agent=row[6], run=row[7],
                           source_call_id=row[8], source_message_id=row[9], event_id=row[10]))
    return out


def _filters(filters: Mapping[str, Any] | None, params: dict[str, Any]) -> list[str]:
    """SQL conditions on metadata: ``{"topic": "food"}``, ``{"tag": ["a", "b"]}`` (any of),
    ``{"priority": {"gte": 2}}`` (gt, gte, lt, lte, ne, eq), ``{"city": None}`` (absent)."""
    out: list[str] = []
    for i, (name, want) in enumerate((filters or {}).items()):
        if not isinstance(name, str) or not _FIELD.fullmatch(name):
            raise InvalidMemory(f"filter field {name!r}: use letters, digits, _ and - (dots for nested fields)")
        path = "$." + ".".join(f'"{part}"' for part in name.split("."))
        col = f"json_extract(v.metadata, :fp{i})"
        params[f"fp{i}"] = path
        if want is None:
            out.append(f"{col} IS NULL")
        elif isinstance(want, (list, tuple)):
            if not want:
                raise InvalidMemory(f"filter {name!r}: an empty list matches nothing")
            marks = []
            for j, value in enumerate(want):
                params[f"fv{i}_{j}"] = _scalar(name, value)
                marks.append(f":fv{i}_{j}")
            out.append(f"{col} IN ({', '.join(marks)})")
        elif isinstance(want, Mapping):
            if not want:
                raise InvalidMemory(f"filter {name!r}: an empty condition")
            for j, (op, value) in enumerate(want.items()):
                if op not in _OPS:
                    raise InvalidMemory(f"filter {name!r}: unknown operator {op!r} (known: {', '.join(_OPS)})")
                params[f"fv{i}_{j}"] = _scalar(name, value)
                out.append(f"{col} {_OPS[op]} :fv{i}_{j}")
        else:
            params[f"fv{i}"] = _scalar(name, want)
            out.append(f"{col} = :fv{i}")
    return out


def _scalar(name: str, value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidMemory(f"filter {name!r}: {value!r} matches nothing: {NON_FINITE_HINT}")
    if isinstance(value, (str, int, float)):
        return value
    raise InvalidMemory(f"filter {name!r}: values must be strings, numbers or booleans, got {type(value).__name__}")


def _scope(namespaces: Sequence[str] | None, patterns: Sequence[str] | None, params: dict[str, Any]) -> list[str]:
    out = []
    if namespaces is not None:
        for i, ns in enumerate(namespaces):
            params[f"ns{i}"] = ns
        # unary +: a filter on candidate rows, never an index to scan the namespace by
        out.append(f"+v.namespace IN ({', '.join(f':ns{i}' for i in range(len(namespaces)))})"
                   if namespaces else "0")
    if patterns is not None and "*" not in patterns:
        for i, pattern in enumerate(patterns):
            params[f"gp{i}"] = pattern
        out.append("(" + " OR ".join(f"+v.namespace GLOB :gp{i}" for i in range(len(patterns))) + ")"
                   if patterns else "0")
    return out


class TermStats:
    """Document frequencies of query terms, cached per reader; the cache is dropped whenever the
    view has grown by a tenth. ``docs`` estimates the entries by the highest sequence (an
    overestimate when other events interleave, which only makes pruning more cautious)."""

    def __init__(self) -> None:
        self.docs = 0
        self.df: dict[str, int] = {}
        self._seq = -1
        self._built = 0

    def refresh(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT value FROM _meta WHERE key = 'seq'").fetchone()
        seq = int(row[0]) if row else 0
        if seq == self._seq:
            return
        self._seq = seq
        self.docs = int(db.execute("SELECT max(seq) FROM versions").fetchone()[0] or 0)
        if self.docs > self._built * 1.1:
            self.df.clear()
            self._built = self.docs

    def of(self, db: sqlite3.Connection, term: str, column: str = "text") -> int:
        found = self.df.get(f"{column}:{term}")
        if found is None:
            phrase = _phrase(term) if column == FIELDS else f'{column} : "{term}"'
            found = self.df[f"{column}:{term}"] = int(db.execute(
                "SELECT count(*) FROM versions_fts WHERE versions_fts MATCH ?", (phrase,)).fetchone()[0])
        return found


SCAN_LIMIT = 1000
"""Queries whose terms match more entries than this rank the most recent SCAN_LIMIT matches."""
PRUNE_FROM = 2000
"""From this many entries on, terms found in more than half of them are left out of the match."""
APART_FROM = 25_000
"""From this many entries in the searched namespaces on, the candidates are found by one FTS query with
the namespaces' phrase and scored by another without it: SQLite's ``bm25()`` counts every entry of
every phrase of its query (each phrase's document frequency) on every search, and the namespaces'
phrase (weight 0: it adds nothing to the score) holds every entry of the namespaces. Counting costs
10-15 ns an entry, the second query about 0.3 ms (7 December 2026, CPU per search apart against one
query: 1.16 times with 10k entries in the namespace, 0.76 times with 100k)."""


FIELDS = "{text key_terms meta}"
"""The FTS columns a query's words are matched in (the namespace token column is apart)."""


def _phrase(term: str) -> str:
    """One of the query's words as an FTS phrase matched in :data:`FIELDS`. The column filter is left
    out where only those columns can hold the word, a word of ASCII none of whose parts begins with
    "ns": the namespace column holds one token, "ns" and hex digits (:func:`ns_token`), which the
    tokenizer keeps whole. FTS5 looks at every match's positions to apply a column filter: a quarter
    of what counting a broad word's matches costs, and ``bm25()`` counts them in every search."""
    if term.isascii() and not any(part.startswith("ns") for part in term.split("_")):
        return f'"{term}"'
    return f'{FIELDS} : "{term}"'


def _any_word(terms: Sequence[str]) -> str:
    """An FTS query matching any of ``terms`` in :data:`FIELDS` (see :func:`_phrase`)."""
    return "(" + " OR ".join(_phrase(t) for t in dict.fromkeys(terms)) + ")"


def _bm25(weights: tuple[float, float, float]) -> str:
    text, key, meta = (float(w) for w in weights)
    return f"bm25(versions_fts, {text!r}, 0.0, {key!r}, {meta!r})"


def keyword(db: sqlite3.Connection, terms: Sequence[str], *, namespaces: Sequence[str] | None,
            patterns: Sequence[str] | None, filters: Mapping[str, Any] | None, now: float, limit: int,
            as_of: int | None = None, include_compacted: bool = False,
            stats: TermStats | None = None, weights: tuple[float, float, float] = (1.0, 0.5, 0.5),
            valid_at: float | None = None) -> list[tuple[Entry, float]]:
    """BM25 matches of any of ``terms`` (best first) with their relevance (higher is better).

    Two phases: the FTS index alone ranks candidates (confined to the namespaces when they
    are named), then the view keeps the live ones that match the scope and filters, until
    ``limit`` are found. In a large view, terms in more than half the entries are dropped
    (BM25 gives them no weight anyway) unless nothing else is left; if the rest still
    match more than :data:`SCAN_LIMIT` entries, the most recent of those are the candidates.
    """
    _filters(filters, {})  # refuse bad filters whatever the query matches
    if not terms:
        return []
    bm25 = _bm25(weights)
    if as_of is not None or valid_at is not None:
        return _keyword_as_of(db, terms, namespaces, patterns, filters, now, limit, as_of, include_compacted, bm25,
                              valid_at)
    stats = stats or TermStats()
    stats.refresh(db)
    df = {t: stats.of(db, t, FIELDS) for t in dict.fromkeys(terms)}
    common = stats.docs / 2 if stats.docs >= PRUNE_FROM else float("inf")
    kept = [t for t in df if df[t] <= common] or sorted(df, key=lambda t: df[t])[:1]
    match = _any_word(kept)
    scope = ""  # the namespaces' phrase, when the FTS query confines the search to them
    apart = False
    if namespaces is not None:
        if not namespaces:
            return []
        tokens = [ns_token(n) for n in namespaces]
        in_scope = sum(stats.of(db, t, "ns") for t in tokens)
        if in_scope <= stats.docs / 2:  # else the scope filter is cheaper
            scope = " AND ns : (" + " OR ".join(f'"{t}"' for t in tokens) + ")"
            apart = in_scope >= APART_FROM
    estimate = sum(df[t] for t in kept)
    recent = estimate > SCAN_LIMIT
    found = _in_scope(db, match + scope, recent) if apart else None
    params: dict[str, Any] = {"now": now}
    where = [*_scope(namespaces, patterns, params), *_filters(filters, params), f"NOT {DELETED}", f"NOT {EXPIRED}"]
    if not include_compacted:
        where.append(f"NOT {COMPACTED}")
    hits: list[tuple[int, float]] = []
    live: dict[int, Sequence[Any]] = {}
    seen: set[int] = set()
    want = max(limit * 2, 32)
    while True:
        rows = _ranked(db, bm25, match if apart else match + scope, recent=recent, want=want, among=found)
        fetched = 0
        # check liveness of only as many candidates as are likely needed, best first
        step = max(limit - len(hits), 1) * 5 // 4 + 8
        while len(hits) < limit:
            batch = rows.fetchmany(step)
            fetched += len(batch)
            chunk = [r for r in batch if r[0] not in seen]
            if chunk:
                seen.update(r[0] for r in chunk)
                live.update(_live_rows(db, [r[0] for r in chunk], where, params))
                hits.extend((int(seq), -float(bm)) for seq, bm in chunk if seq in live)
            if len(batch) < step:
                break
            step = 250
        rows.close()
        if len(hits) >= limit or recent or fetched < want:
            break
        want *= 4
    return [(_entry(live[seq]), rel) for seq, rel in hits[:limit]]


def _in_scope(db: sqlite3.Connection, match: str, recent: bool) -> list[int]:
    """The rows ``match`` (the query's words and the namespaces' phrase) selects, unscored: the
    :data:`SCAN_LIMIT` most recent if ``recent``, else all of them (fewer than that)."""
    if recent:
        return [r[0] for r in db.execute("SELECT rowid FROM versions_fts WHERE versions_fts MATCH ? "
                                         "ORDER BY rowid DESC LIMIT ?", (match, SCAN_LIMIT))]
    return [r[0] for r in db.execute("SELECT rowid FROM versions_fts WHERE versions_fts MATCH ?", (match,))]


def _ranked(db: sqlite3.Connection, bm25: str, match: str, *, recent: bool, want: int,
            among: list[int] | None) -> sqlite3.Cursor:
    """Candidate rows and their BM25 score (lower is better), best first: if ``recent``, the
    :data:`SCAN_LIMIT` most recent matches, ties newest first; else the ``want`` best. ``among``:
    only these rows (:func:`_in_scope`'s), scored by ``match`` without the namespaces' phrase. The
    rows reach ``bm25()`` and the sort in the same order either way, so both give the same scores,
    bit for bit, in the same order. SQLite sorts: the caller fetches only the rows it checks."""
    if among is None:
        if recent:
            sql = (f"SELECT rowid, b FROM (SELECT rowid, {bm25} AS b FROM versions_fts WHERE versions_fts "
                   "MATCH :match ORDER BY rowid DESC LIMIT :limit) ORDER BY b, rowid DESC")
        else:
            sql = f"SELECT rowid, {bm25} AS b FROM versions_fts WHERE versions_fts MATCH :match ORDER BY b LIMIT :want"
        return db.execute(sql, {"match": match, "want": want, "limit": SCAN_LIMIT})
    # unary +: a filter on the rows the range yields (FTS5 would otherwise run the query once per id)
    order = "b, rowid DESC" if recent else "b LIMIT :want"
    return db.execute(
        f"SELECT rowid, {bm25} AS b FROM versions_fts WHERE versions_fts MATCH :match AND rowid BETWEEN :lo "
        f"AND :hi AND +rowid IN (SELECT value FROM json_each(:ids)) ORDER BY {order}",
        {"match": match, "want": want, "lo": min(among, default=0), "hi": max(among, default=-1),
         "ids": json.dumps(among)})


def _live_rows(db: sqlite3.Connection, seqs: Sequence[int], where: Sequence[str], params: dict[str, Any]
               ) -> dict[int, Sequence[Any]]:
    """The candidate rows that are current, live, in scope and match the filters, by sequence
    (their :data:`COLUMNS`)."""
    marks = ", ".join(f":c{j}" for j in range(len(seqs)))
    local = {**params, **{f"c{j}": seq for j, seq in enumerate(seqs)}}
    # CROSS JOIN: drive from the candidate rows (SQLite would otherwise scan the namespace's memories)
    return {int(r[5]): r for r in db.execute(
        f"SELECT {COLUMNS} FROM versions v CROSS {CURRENT} WHERE v.seq IN ({marks}) AND {' AND '.join(where)}", local)}


VALID = "coalesce(w.valid_from, w.time)"
VERSION_COLUMNS = COLUMNS.replace("m.version", "(SELECT count(*) FROM versions w WHERE w.namespace = v.namespace "
                                  "AND w.key = v.key AND w.seq <= v.seq AND w.action != 'deleted')")


def _keyword_as_of(db: sqlite3.Connection, terms: Sequence[str], namespaces: Sequence[str] | None,
                   patterns: Sequence[str] | None, filters: Mapping[str, Any] | None, now: float, limit: int,
                   as_of: int | None, include_compacted: bool, bm25: str,
                   valid_at: float | None = None) -> list[tuple[Entry, float]]:
    """The same search as the log stood at ``as_of``, or over the versions valid at ``valid_at``
    (each key's version with the latest valid time at or before it, of those written by now);
    every version is a candidate (slower)."""
    match = _any_word(terms)
    params: dict[str, Any] = {"q": match, "now": now, "limit": limit}
    where = ["versions_fts MATCH :q", *_scope(namespaces, patterns, params), *_filters(filters, params),
             "v.action != 'deleted'"]
    if as_of is not None:
        params["as_of"] = as_of
        params["now"] = time_at(db, as_of) or now
        where += ["v.seq <= :as_of", f"NOT {EXPIRED}",
                  "v.seq = (SELECT max(w.seq) FROM versions w WHERE w.namespace = v.namespace AND w.key = v.key "
                  "AND w.seq <= :as_of)"]
    else:
        params["valid_at"] = valid_at
        where += [f"NOT {EXPIRED}",
                  f"v.seq = (SELECT w.seq FROM versions w WHERE w.namespace = v.namespace AND w.key = v.key "
                  f"AND w.action != 'deleted' AND {VALID} <= :valid_at ORDER BY {VALID} DESC, w.seq DESC LIMIT 1)",
                  "NOT EXISTS (SELECT 1 FROM memories m WHERE m.namespace = v.namespace AND m.key = v.key "
                  f"AND {DELETED})"]
    sql = (f"SELECT v.seq, {bm25} AS bm FROM versions_fts "
           f"JOIN versions v ON v.seq = versions_fts.rowid WHERE {' AND '.join(where)} ORDER BY bm LIMIT :limit")
    out = []
    for seq, bm in db.execute(sql, params).fetchall():
        if as_of is None:
            row = db.execute(f"SELECT {VERSION_COLUMNS} FROM versions v "
                             "JOIN memories m ON m.namespace = v.namespace AND m.key = v.key WHERE v.seq = ?",
                             (seq,)).fetchone()
            valid = _entry(row)
            if not include_compacted and valid.status == "compacted":
                continue
            out.append((valid, -float(bm)))
            continue
        row = db.execute("SELECT namespace, key FROM versions WHERE seq = ?", (seq,)).fetchone()
        entry, _ = entry_as_of(db, row[0], row[1], as_of, params["now"])
        if entry is None:
            continue
        if not include_compacted and _compacted_as_of(db, entry, as_of):
            continue
        out.append((entry, -float(bm)))
    return out


def embeddings(db: sqlite3.Connection, seqs: Sequence[int]) -> dict[int, tuple[bytes, str | None]]:
    """The recorded vectors (and their embedder) of these versions."""
    if not seqs:
        return {}
    marks = ", ".join("?" * len(seqs))
    return {int(r[0]): (r[1], r[2]) for r in db.execute(
        f"SELECT seq, embedding, embedder FROM versions WHERE seq IN ({marks}) AND embedding IS NOT NULL", list(seqs))}


def _compacted_as_of(db: sqlite3.Connection, entry: Entry, as_of: int) -> bool:
    row = db.execute("SELECT 1 FROM compactions WHERE namespace = ? AND key = ? AND seq <= ? "
                     "AND (version IS NULL OR version >= ?) LIMIT 1",
                     (entry.namespace, entry.key, as_of, entry.version)).fetchone()
    return row is not None


def live(db: sqlite3.Connection, namespace: str, now: float, *, include_compacted: bool = False,
         filters: Mapping[str, Any] | None = None, before: float | None = None) -> list[Entry]:
    """Every live entry of a namespace, oldest update first."""
    params: dict[str, Any] = {"ns": namespace, "now": now}
    where = ["v.namespace = :ns", f"NOT {DELETED}", f"NOT {EXPIRED}", *_filters(filters, params)]
    if not include_compacted:
        where.append(f"NOT {COMPACTED}")
    if before is not None:
        params["before"] = before
        where.append("v.time < :before")
    sql = f"SELECT {COLUMNS} FROM versions v {CURRENT} WHERE {' AND '.join(where)} ORDER BY v.seq"
    return [_entry(r) for r in db.execute(sql, params)]


def expired(db: sqlite3.Connection, now: float) -> list[Entry]:
    """Entries past their ``expires_at`` that no ``expired`` deletion has recorded yet."""
    sql = f"SELECT {COLUMNS} FROM versions v {CURRENT} WHERE NOT {DELETED} AND {EXPIRED} ORDER BY v.seq"
    return [_entry(r) for r in db.execute(sql, {"now": now})]


def by_hash(db: sqlite3.Connection, namespace: str, digest: str, now: float) -> Entry | None:
    sql = (f"SELECT {COLUMNS} FROM versions v {CURRENT} WHERE v.namespace = :ns AND v.content_hash = :h "
           f"AND NOT {DELETED} AND NOT {EXPIRED} AND NOT {COMPACTED} ORDER BY v.seq DESC LIMIT 1")
    row = db.execute(sql, {"ns": namespace, "h": digest, "now": now}).fetchone()
    return None if row is None else _entry(row)


def shared_key_versions(db: sqlite3.Connection, namespace: str, key: str) -> list[int]:
    """The sequences of the entry's versions *not* sealed under a key of its own (written by an older
    tether, or unencrypted by another producer): erasing the entry alone cannot reach them."""
    return [int(r[0]) for r in db.execute(
        "SELECT seq FROM versions WHERE namespace = ? AND key = ? AND text IS NOT NULL "
        "AND (key_id IS NULL OR key_id NOT LIKE '%/entry')", (namespace, key))]


def keys_of(db: sqlite3.Connection, namespace: str) -> list[str]:
    return [r[0] for r in db.execute("SELECT key FROM memories WHERE namespace = ?", (namespace,))]


def namespaces(db: sqlite3.Connection) -> list[tuple[str, int]]:
    """Namespaces with at least one live entry, and how many."""
    sql = f"SELECT m.namespace, count(*) FROM memories m WHERE m.version IS NOT NULL AND NOT {DELETED} GROUP BY 1"
    return [(r[0], int(r[1])) for r in db.execute(sql)]


def vectors_since(db: sqlite3.Connection, seq: int) -> list[tuple[str, str, int, bytes | None, bool, str | None]]:
    """(namespace, key, memories.seq, embedding, live-ish, embedder) of rows changed after ``seq``."""
    sql = (f"SELECT m.namespace, m.key, m.seq, v.embedding, NOT {DELETED} AND NOT {COMPACTED}, v.embedder "
           "FROM memories m LEFT JOIN versions v ON v.seq = m.write_seq WHERE m.seq > ? ORDER BY m.seq")
    return [(r[0], r[1], int(r[2] or 0), r[3], bool(r[4]), r[5]) for r in db.execute(sql, (seq,))]


def unembedded(db: sqlite3.Connection, namespaces: Sequence[str], embedder: str, now: float,
               limit: int) -> list[tuple[str, str, int, int, str]]:
    """(namespace, key, version, seq, text) of the live entries of ``namespaces`` whose current version
    has no vector of ``embedder`` (another embedder's, or none), oldest first, at most ``limit``."""
    marks = ", ".join(f":n{i}" for i in range(len(namespaces)))
    params: dict[str, Any] = {f"n{i}": ns for i, ns in enumerate(namespaces)}
    params.update(now=now, embedder=embedder, limit=limit)
    sql = (f"SELECT v.namespace, v.key, m.version, v.seq, v.text FROM versions v {CURRENT} "
           f"WHERE v.namespace IN ({marks}) AND v.text IS NOT NULL AND NOT {DELETED} AND NOT {EXPIRED} "
           f"AND NOT {COMPACTED} AND (v.embedder IS NULL OR v.embedder != :embedder) ORDER BY v.seq LIMIT :limit")
    return [(r[0], r[1], int(r[2]), int(r[3]), r[4]) for r in db.execute(sql, params)]


def entries(db: sqlite3.Connection, pairs: Sequence[tuple[str, str]], now: float,
            include_compacted: bool = False) -> dict[tuple[str, str], Entry]:
    """The live entries among (namespace, key) pairs."""
    out: dict[tuple[str, str], Entry] = {}
    pairs = list(dict.fromkeys(pairs))
    for i in range(0, len(pairs), 200):  # one query per 200 entries, not one per entry
        chunk = pairs[i:i + 200]
        params: dict[str, Any] = {"now": now}
        alts = []
        for j, (ns, key) in enumerate(chunk):
            params[f"n{j}"], params[f"k{j}"] = ns, key
            alts.append(f"(m.namespace = :n{j} AND m.key = :k{j})")
        # driven by the memories' primary key (one index search per pair), then the current row
        rows = db.execute(f"SELECT {COLUMNS} FROM memories m CROSS JOIN versions v ON v.seq = m.write_seq "
                          f"WHERE ({' OR '.join(alts)}) AND NOT {DELETED} AND NOT {EXPIRED}", params).fetchall()
        found = {(r[0], r[1]): _entry(r) for r in rows}
        for pair in chunk:
            entry = found.get(pair)
            if entry is not None and (include_compacted or entry.status == "live"):
                out[pair] = entry
    return out


def matching(db: sqlite3.Connection, pairs: Sequence[tuple[str, str]], filters: Mapping[str, Any]
             ) -> set[tuple[str, str]]:
    """Which of the (namespace, key) pairs have current metadata matching ``filters``."""
    out: set[tuple[str, str]] = set()
    for i in range(0, len(pairs), 200):
        params: dict[str, Any] = {}
        conds = _filters(filters, params)
        chunk = pairs[i:i + 200]
        alts = []
        for j, (ns, key) in enumerate(chunk):
            params[f"pn{j}"], params[f"pk{j}"] = ns, key
            alts.append(f"(v.namespace = :pn{j} AND v.key = :pk{j})")
        sql = (f"SELECT v.namespace, v.key FROM versions v {CURRENT} WHERE ({' OR '.join(alts)}) "
               f"AND {' AND '.join(conds) or '1'}")
        out.update((r[0], r[1]) for r in db.execute(sql, params))
    return out


def replaced_keys(items: Sequence[str]) -> list[tuple[str, int | None]]:
    return [split_replaced(i) for i in items]
