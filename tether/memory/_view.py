"""The memory view: a projection of ``memory.*`` events into SQLite, with full-text search."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tether.projections import Delete, Merge, Op, Projection, Table, Upsert, ViewStore
from tether.schemas import Event, MemoryCompacted, MemoryDeleted, MemoryEmbedded, MemoryWritten, finite_or_none

from ._codec import open_entry, open_vector
from ._keys import KeyStore, pinned
from ._names import ALL_KEYS

__all__ = ["MEMORY_TYPES", "MemoryStore", "MemoryView", "ns_token", "prepare", "split_replaced"]

MEMORY_TYPES = frozenset({MemoryWritten.event_type, MemoryDeleted.event_type, MemoryCompacted.event_type,
                          MemoryEmbedded.event_type})

VERSIONS = Table("versions", {
    "seq": "INTEGER", "namespace": "TEXT NOT NULL", "key": "TEXT NOT NULL", "action": "TEXT NOT NULL",
    "version": "INTEGER", "text": "TEXT", "metadata": "TEXT", "time": "REAL", "expires_at": "REAL",
    "agent": "TEXT", "run": "TEXT", "event_id": "TEXT", "source_call_id": "TEXT", "source_message_id": "TEXT",
    "reason": "TEXT", "content_hash": "TEXT", "embedding": "BLOB", "embedder": "TEXT", "replaced": "TEXT",
    "summarizer": "TEXT", "token_budget": "INTEGER", "ns": "TEXT", "key_id": "TEXT", "valid_from": "REAL",
    "observed_at": "REAL", "meta": "TEXT", "key_terms": "TEXT",
}, key=("seq",), indexes=(("namespace", "key", "seq"), ("namespace", "content_hash"), ("time",)))

MEMORIES = Table("memories", {
    "namespace": "TEXT", "key": "TEXT", "version": "INTEGER", "seq": "INTEGER", "write_seq": "INTEGER",
    "created_at": "REAL", "updated_at": "REAL", "deleted": "TEXT", "deleted_version": "INTEGER",
    "compacted_into": "TEXT", "compacted_version": "INTEGER", "kind": "TEXT",
}, key=("namespace", "key"), indexes=(("seq",), ("namespace", "updated_at")))

COMPACTIONS = Table("compactions", {
    "seq": "INTEGER", "namespace": "TEXT", "key": "TEXT", "version": "INTEGER", "summary_key": "TEXT",
}, key=("seq", "namespace", "key"), indexes=(("namespace", "key"),))

# Columns: the text, the namespace token, the entry's key (unless generated) and its metadata (field-aware
# BM25 weighs them).
_FTS = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS versions_fts USING fts5(text, ns, key_terms, meta, content='versions', "
    "content_rowid='seq', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS versions_fts_ai AFTER INSERT ON versions WHEN new.text IS NOT NULL BEGIN "
    "INSERT INTO versions_fts(rowid, text, ns, key_terms, meta) "
    "VALUES (new.seq, new.text, new.ns, new.key_terms, new.meta); END",
    "CREATE TRIGGER IF NOT EXISTS versions_fts_ad AFTER DELETE ON versions WHEN old.text IS NOT NULL BEGIN "
    "INSERT INTO versions_fts(versions_fts, rowid, text, ns, key_terms, meta) "
    "VALUES ('delete', old.seq, old.text, old.ns, old.key_terms, old.meta); END",
    "CREATE TRIGGER IF NOT EXISTS versions_fts_au AFTER UPDATE OF text ON versions BEGIN "
    "INSERT INTO versions_fts(versions_fts, rowid, text, ns, key_terms, meta) "
    "SELECT 'delete', old.seq, old.text, old.ns, old.key_terms, old.meta WHERE old.text IS NOT NULL; "
    "INSERT INTO versions_fts(rowid, text, ns, key_terms, meta) "
    "SELECT new.seq, new.text, new.ns, new.key_terms, new.meta WHERE new.text IS NOT NULL; END",
)


_GENERATED = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def key_terms(key: str) -> str | None:
    """The key as words for the index; None for a generated one (a UUID says nothing, and its
    unique tokens would make every write slower to index)."""
    return None if _GENERATED.fullmatch(key) else key


def meta_words(metadata: Any) -> str:
    """The words of an entry's metadata, for its FTS column: field names and scalar values."""
    out: list[str] = []

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, name)
        elif value is not None and not isinstance(value, bool):
            out.extend((name, str(value)))

    walk(metadata, "")
    return " ".join(w for w in out if w)


def ns_token(namespace: str) -> str:
    """The namespace as one FTS token (``text : (...) AND ns : "<token>"`` confines a search to it)."""
    return "ns" + hashlib.sha256(namespace.encode()).hexdigest()[:20]


def prepare(db: sqlite3.Connection) -> None:
    """Add what a :class:`Table` cannot declare: the FTS index and its triggers; secure deletes.

    Idempotent, and safe while another connection (a projector) writes the view: the index
    is created and filled in one transaction. ``secure_delete`` is per connection: it must
    be on for the connection that applies erasures, so erased rows are zeroed, not unlinked.
    """
    db.execute("PRAGMA secure_delete=ON")
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'versions_fts'").fetchone() is not None:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'versions_fts'").fetchone() is None:
            for statement in _FTS:
                db.execute(statement)
            if db.execute("SELECT 1 FROM versions LIMIT 1").fetchone():
                db.execute("INSERT INTO versions_fts(versions_fts) VALUES ('rebuild')")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def split_replaced(item: str) -> tuple[str, int | None]:
    """``"key@3"`` → ``("key", 3)``; a bare key → ``(key, None)``."""
    key, sep, version = item.rpartition("@")
    if sep and version.isdigit():
        return key, int(version)
    return item, None


class MemoryView(Projection):
    """The ``memory`` view. Give it the keystore the writers use.

    Tables:

    * ``versions``: one row per memory event (its stream sequence is the key): every version
      of every entry, with its plaintext, metadata, vector and provenance; deletions and
      compactions too. History, ``as_of`` reads and search all read it.
    * ``memories``: one row per (namespace, key): the current version number, which row of
      ``versions`` holds the current text, and whether it is deleted or compacted.
    * ``compactions``: which versions a summary replaced (for ``as_of`` searches).

    ``versions_fts`` (FTS5, BM25) indexes ``versions.text``; triggers keep it in step inside
    the same transaction as the rows and the checkpoint (see :func:`prepare`).

    The fold is pure given the keystore: it opens sealed text with the namespace key, and
    an event whose key was destroyed (erased) folds into nothing. That is what makes an
    erasure survive replay: a rebuilt view never sees the plaintext again.
    """

    name: ClassVar[str] = "memory"
    version: ClassVar[int] = 2
    """2: ``versions.key_id`` (which key sealed each version: erasing one entry needs its own key),
    ``valid_from`` and ``observed_at`` (valid time), ``meta``, and the key and metadata in the FTS index."""
    tables: ClassVar[tuple[Table, ...]] = (VERSIONS, MEMORIES, COMPACTIONS)
    types: ClassVar[frozenset[str] | None] = MEMORY_TYPES

    def __init__(self, keys: KeyStore | None = None) -> None:
        if keys is None:
            from ._keys import FileKeyStore
            from ._settings import default_keyfile

            keys = FileKeyStore(default_keyfile())
        self.keys = keys

    def open_store(self, path: Path) -> MemoryStore:
        return MemoryStore(self, path)

    def fold(self, events: Sequence[tuple[int, Event]]) -> tuple[list[Op], list[tuple[int, Exception]]]:
        with pinned(self.keys):  # the keystore file checked once a batch, not once an event
            return super().fold(events)

    def notify_key(self, op: Op) -> str | None:
        values = op.values if isinstance(op, Upsert) else op.key
        namespace = values.get("namespace")
        return None if namespace is None else str(namespace)

    def apply(self, event: Event, seq: int) -> Iterable[Op]:
        data = event.data
        if isinstance(data, MemoryWritten):
            return self._written(event, data, seq)
        if isinstance(data, MemoryDeleted):
            return self._deleted(event, data, seq)
        if isinstance(data, MemoryCompacted):
            return self._compacted(event, data, seq)
        if isinstance(data, MemoryEmbedded):
            return self._embedded(data, seq)
        return ()

    def _base(self, event: Event, seq: int, namespace: str, key: str, action: str) -> dict[str, Any]:
        return {"seq": seq, "namespace": namespace, "key": key, "action": action, "time": event.time.timestamp(),
                "agent": event.agentid, "run": event.runid, "event_id": event.id, "ns": ns_token(namespace)}

    def _written(self, event: Event, d: MemoryWritten, seq: int) -> list[Op]:
        opened = open_entry(self.keys, d.namespace, d.key, d.key_id, d.text, d.metadata, d.embedding)
        if opened is None:
            return []  # erased: its key is gone, and so is everything it said
        row = self._base(event, seq, d.namespace, d.key, "written")
        row.update(version=d.version, text=opened.text,
                   # finite_or_none: an older tether let NaN in, which SQLite's JSON functions refuse
                   metadata=json.dumps(finite_or_none(opened.metadata), ensure_ascii=False, sort_keys=True),
                   expires_at=d.expires_at.timestamp() if d.expires_at else None,
                   source_call_id=d.source_call_id, source_message_id=d.source_message_id,
                   content_hash=d.content_hash, embedding=opened.embedding, embedder=d.embedder, key_id=d.key_id,
                   valid_from=opened.valid_from, observed_at=opened.observed_at,
                   meta=meta_words(opened.metadata) or None, key_terms=key_terms(d.key))
        return [Upsert("versions", row), self._current(event, seq, d.namespace, d.key, "memory",
                                                       historical=opened.historical)]

    def _current(self, event: Event, seq: int, namespace: str, key: str, kind: str, *,
                 historical: bool = False) -> Upsert:
        """The entry's row: this version becomes current, unless it is history (valid before the
        version that was current when it was written): then only the version count moves."""
        t = event.time.timestamp()
        merge: dict[str, Merge] = {"version": "add", "created_at": "keep"}
        if historical:
            merge.update({c: "keep" for c in ("write_seq", "updated_at", "deleted", "deleted_version",
                                               "compacted_into", "compacted_version", "kind")})
        return Upsert("memories", {
            "namespace": namespace, "key": key, "version": 1, "seq": seq, "write_seq": seq, "created_at": t,
            "updated_at": t, "deleted": None, "deleted_version": None, "compacted_into": None,
            "compacted_version": None, "kind": kind,
        }, merge=merge)

    def _deleted(self, event: Event, d: MemoryDeleted, seq: int) -> Iterator[Op]:
        if d.reason == "erased":
            scope = {"namespace": d.namespace} if d.key == ALL_KEYS else {"namespace": d.namespace, "key": d.key}
            for table in ("versions", "memories", "compactions"):
                yield Delete(table, scope)
            return
        row = self._base(event, seq, d.namespace, d.key, "deleted")
        row.update(version=d.version, reason=d.reason)
        yield Upsert("versions", row)
        yield Upsert("memories", {"namespace": d.namespace, "key": d.key, "seq": seq, "deleted": d.reason,
                                  "deleted_version": d.version, "updated_at": event.time.timestamp()})

    def _compacted(self, event: Event, d: MemoryCompacted, seq: int) -> list[Op]:
        opened = open_entry(self.keys, d.namespace, d.key, d.key_id, d.summary, {}, d.embedding)
        if opened is None:
            return []
        row = self._base(event, seq, d.namespace, d.key, "compacted")
        row.update(version=d.version, text=opened.text, metadata="{}", source_call_id=d.source_call_id,
                   embedding=opened.embedding, embedder=d.embedder, replaced=json.dumps(list(d.replaced)),
                   summarizer=d.summarizer, token_budget=d.token_budget, key_id=d.key_id,
                   key_terms=key_terms(d.key))
        ops: list[Op] = [Upsert("versions", row), self._current(event, seq, d.namespace, d.key, "summary")]
        for item in d.replaced:
            key, version = split_replaced(item)
            ops.append(Upsert("memories", {"namespace": d.namespace, "key": key, "compacted_into": d.key,
                                           "compacted_version": version}))
            ops.append(Upsert("compactions", {"seq": seq, "namespace": d.namespace, "key": key,
                                              "version": version, "summary_key": d.key}))
        return ops


    def _embedded(self, d: MemoryEmbedded, seq: int) -> list[Op]:
        """The version at ``of_seq`` gets the new vector; the entry's row moves to ``seq`` so the vector
        index reads it again (nothing else reads ``memories.seq``). Erased: nothing. (Should the version's
        row be gone, erased between ``reembed`` listing it and this event, the row made here holds no text
        and its action says ``embedded``: ``history()`` and search pass it by.)"""
        vector = open_vector(self.keys, d.namespace, d.key, d.key_id, d.embedding)
        if vector is None:
            return []
        keep: dict[str, Merge] = {"namespace": "keep", "key": "keep", "action": "keep"}
        return [Upsert("versions", {"seq": d.of_seq, "namespace": d.namespace, "key": d.key, "action": "embedded",
                                    "embedding": vector, "embedder": d.embedder}, merge=keep),
                Upsert("memories", {"namespace": d.namespace, "key": d.key, "seq": seq}, merge={"seq": "max"})]


class MemoryStore(ViewStore):
    """The view's SQLite file, with the FTS index and secure deletes switched on."""

    def __init__(self, projection: MemoryView, path: Path) -> None:
        super().__init__(projection, path)
        self.db.execute("PRAGMA busy_timeout=10000")
        prepare(self.db)

    def _execute(self, ops: Sequence[Op]) -> None:
        # Group a batch's operations by table (stable, so each table sees its own in log order;
        # the tables do not depend on each other): far longer runs for executemany.
        order = {t.name: i for i, t in enumerate(self.projection.tables)}
        super()._execute(sorted(ops, key=lambda op: order.get(op.table, 0)))

    def scrub(self) -> None:
        """After an erasure: merge the FTS segments (dropping deleted tokens) and empty the WAL."""
        self.db.execute("INSERT INTO versions_fts(versions_fts) VALUES ('optimize')")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
