"""One view's SQLite file: its tables, its checkpoint, and the batch writer.

A batch of events is applied and the stream sequence it reached is recorded **in one
transaction**, so a crash mid-batch leaves the view exactly as it was, and a redelivered
event (sequence at or below the checkpoint) changes nothing. An event the projection
cannot apply is recorded in ``_failed`` (sequence, event id, error) and skipped.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from tether.schemas import Event

from ._ops import Op, Table, Upsert, combine_upserts, compile_delete, compile_upsert, create_sql

__all__ = ["Item", "Projection", "ViewStore", "view_path"]


class Projection(ABC):
    """A view: a name, a version, its tables and a pure fold of events into row operations.

    Bump ``version`` when the fold or the tables change: the runner rebuilds the view from
    the start of the log into a new file while the old one keeps serving, then swaps.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]]
    types: ClassVar[frozenset[str] | None] = None
    """Event types this view reads (None: all); others only move its checkpoint."""
    weight: ClassVar[float] = 1.0
    """What folding an event costs this view, relative to others: views are split across
    processes by it (:class:`~tether.projections.ProjectorPool`)."""

    @abstractmethod
    def apply(self, event: Event, seq: int) -> Iterable[Op]:
        """The row operations for one event. Pure: no I/O, no clock, no randomness."""

    def combine(self, ops: list[Op]) -> list[Op]:
        """A batch's ops as the runner executes them (in one transaction, in this order).

        The default runs each row's upserts of the batch as one where that leaves exactly
        the same row (:func:`~tether.projections._ops.combine_upserts`); override it for a
        cheaper rule of your own (counters that only ever ``add``, say)."""
        return combine_upserts(ops, self._tables_by_name())

    def fold(self, events: Sequence[tuple[int, Event]]) -> tuple[list[Op], list[tuple[int, Exception]]]:
        """A batch's ops as the runner executes them, and the events the fold refused.

        ``events`` are (sequence, event) pairs of this view's types, in log order. The
        default applies each event (one that raises is refused, its ops dropped) and
        :meth:`combine` s the rest. Override it to fold a batch more cheaply; the ops must
        leave exactly the rows that applying the accepted events one by one would."""
        ops: list[Op] = []
        refused: list[tuple[int, Exception]] = []
        apply = self.apply
        for seq, event in events:
            try:
                ops.extend(apply(event, seq))
            except Exception as exc:  # a fold that cannot take this event: the runner records it
                refused.append((seq, exc))
        return self.combine(ops), refused

    def _tables_by_name(self) -> dict[str, Table]:
        found: dict[str, Table] | None = self.__dict__.get("_tables_cache")
        if found is None:
            found = self.__dict__["_tables_cache"] = {t.name: t for t in self.tables}
        return found

    def notify_key(self, op: Op) -> str | None:
        """The key announced on ``tether.proj.<view>.<key>`` for a changed row."""
        table = next((t for t in self.tables if t.name == op.table), None)
        if table is None:
            return None
        values = op.values if isinstance(op, Upsert) else op.key
        first = values.get(table.key[0])
        return None if first is None else str(first)


class Item(NamedTuple):
    """One message for the views: its stream sequence and the event, or why it is not one.

    (A named tuple: the projector makes one per event, and a frozen dataclass costs twice
    as much to build.)"""

    seq: int
    event: Event | None
    event_id: str | None = None
    error: str | None = None
    stream_time: float | None = None


def view_path(directory: Path, name: str, version: int) -> Path:
    return directory / f"{name}.v{version}.db"


_META = """
CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS _failed (seq INTEGER PRIMARY KEY, event_id TEXT, error TEXT NOT NULL, at REAL NOT NULL);
"""


class ViewStore:
    """The SQLite file of one projection version. Use it from one thread only."""

    def __init__(self, projection: Projection, path: Path) -> None:
        self.projection = projection
        self.path = path
        self.tables = {t.name: t for t in projection.tables}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_META)
        for table in projection.tables:
            for sql in create_sql(table):
                self.db.execute(sql)
        self._sql: dict[tuple[Any, ...], str] = {}  # shape -> statement
        self.seq = int(self._meta("seq") or 0)

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM _meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @property
    def complete(self) -> bool:
        """True once this version has caught up with the log at least once."""
        return self._meta("complete") == "1"

    def mark_complete(self) -> None:
        self.db.execute("INSERT OR REPLACE INTO _meta VALUES ('complete', '1')")

    def failed_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM _failed").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    # -- writing -------------------------------------------------------------------------------

    def apply_batch(self, items: Sequence[Item], *, notify: bool = True, through: int | None = None,
                    at: float | None = None) -> set[str]:
        """Apply the new items and move the checkpoint, in one transaction. Returns changed keys
        (none if ``notify`` is false: nobody is told, as in a replay). ``through`` moves the
        checkpoint that far even past the last item (messages no view reads, skipped unread);
        ``at`` is when the message at the new checkpoint was stored (epoch seconds), kept as
        ``_meta.at`` so readers can say how old the view's newest event is."""
        fresh = [i for i in items if i.seq > self.seq]
        last = max(fresh[-1].seq if fresh else 0, through or 0)
        if last <= self.seq:
            return set()
        proj = self.projection
        failed: list[tuple[int, str | None, str]] = []
        events: list[tuple[int, Event]] = []
        types = proj.types
        for item in fresh:
            event = item.event
            if event is None:
                failed.append((item.seq, item.event_id, item.error or "not a tether event"))
            elif types is None or event.type in types:
                events.append((item.seq, event))
        ops, refused = proj.fold(events)
        if refused:
            ids = {item.seq: item.event.id for item in fresh if item.event is not None}
            failed.extend((seq, ids.get(seq), f"{type(exc).__name__}: {exc}") for seq, exc in refused)
            failed.sort()
        db = self.db
        db.execute("BEGIN")
        try:
            self._execute(ops)
            if failed:
                now = time.time()
                db.executemany("INSERT OR REPLACE INTO _failed VALUES (?, ?, ?, ?)",
                               [(s, i, e, now) for s, i, e in failed])
            db.execute("INSERT OR REPLACE INTO _meta VALUES ('seq', ?)", (str(last),))
            if at is not None:
                db.execute("INSERT OR REPLACE INTO _meta VALUES ('at', ?)", (repr(at),))
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            if len(fresh) <= 1:
                raise
            # Find the event whose rows the database refuses: apply one by one.
            keys: set[str] = set()
            for item in fresh:
                keys |= self._apply_one(item)
            if last > self.seq:
                db.execute("INSERT OR REPLACE INTO _meta VALUES ('seq', ?)", (str(last),))
                self.seq = last
            return keys
        self.seq = last
        return {k for op in ops if (k := proj.notify_key(op)) is not None} if notify else set()

    def _apply_one(self, item: Item) -> set[str]:
        db = self.db
        try:
            ops = list(self.projection.apply(item.event, item.seq)) if item.event is not None else []
            db.execute("BEGIN")
            self._execute(ops)
            db.execute("INSERT OR REPLACE INTO _meta VALUES ('seq', ?)", (str(item.seq),))
            db.execute("COMMIT")
        except Exception as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.execute("BEGIN")
            db.execute("INSERT OR REPLACE INTO _failed VALUES (?, ?, ?, ?)",
                       (item.seq, item.event.id if item.event else item.event_id,
                        f"{type(exc).__name__}: {exc}", time.time()))
            db.execute("INSERT OR REPLACE INTO _meta VALUES ('seq', ?)", (str(item.seq),))
            db.execute("COMMIT")
            ops = []
        self.seq = item.seq
        return {k for op in ops if (k := self.projection.notify_key(op)) is not None}

    def _execute(self, ops: Sequence[Op]) -> None:
        """Run ops in order, grouping consecutive ones of the same shape into executemany.

        A shape is what an op's SQL depends on: its table and columns, and its merge rules
        in the order given (the same rules in another order are another, equivalent,
        statement: cheaper than sorting them per op)."""
        db = self.db
        cache = self._sql
        current: tuple[Any, ...] | None = None
        sql = ""
        rows: list[tuple[Any, ...]] = []
        for op in ops:
            if isinstance(op, Upsert):
                values, merge = op.values, op.merge
                shape: tuple[Any, ...] = (op.table, tuple(values), tuple(merge), tuple(merge.values()))
                params = tuple(values.values())
            else:
                shape = (op.table, tuple(op.key))
                params = tuple(op.key.values())
            if shape != current:
                if rows:
                    _run(db, sql, rows)
                    rows = []
                current = shape
                found = cache.get(shape)
                if found is None:
                    table = self.tables[op.table]
                    found = cache[shape] = compile_delete(table, shape[1]) if len(shape) == 2 \
                        else compile_upsert(table, shape[1], tuple(zip(shape[2], shape[3], strict=True)))
                sql = found
            rows.append(params)
        if rows:
            _run(db, sql, rows)

    # -- reading -------------------------------------------------------------------------------

    def checksum(self) -> str:
        """A digest of every view table's rows (sorted), for rebuilt == live checks."""
        digest = hashlib.sha256()
        for name in sorted(self.tables):
            table = self.tables[name]
            cols = ", ".join(f'"{c}"' for c in table.columns)
            digest.update(name.encode())
            for row in self.db.execute(f'SELECT {cols} FROM "{name}" ORDER BY {cols}'):
                digest.update(repr(row).encode())
        return digest.hexdigest()


def _run(db: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    if len(rows) == 1:
        db.execute(sql, rows[0])
    else:
        db.executemany(sql, rows)
