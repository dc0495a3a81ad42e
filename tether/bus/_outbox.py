"""The local durable outbox: where events wait, in order, while NATS is unreachable.

Each process writes its own SQLite file under ``<home>/outbox/`` and holds an exclusive
lock on it while it lives. A file whose lock is free belongs to a process that died:
the next process to start adopts it and flushes it. Rows keep the event's original
id (``Nats-Msg-Id``), so a row that reached the stream before its ack was lost is
dropped by JetStream's dedupe instead of stored twice.

WAL mode with ``synchronous=NORMAL``: a committed row survives the process being
killed (it is in the OS's hands); power loss may lose the last commits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tether.schemas import uuid7

__all__ = ["Outbox", "OutboxFull", "OutboxRow", "PendingMessage", "SetAside", "orphaned_outboxes", "set_aside"]


class OutboxFull(RuntimeError):
    """The outbox reached its size limit; the event was not accepted."""


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A message ready to publish: subject, headers and payload (before claim check)."""

    id: str
    subject: str
    headers: dict[str, str]
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    message: PendingMessage


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    subject TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    subject TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    error TEXT NOT NULL,
    created REAL NOT NULL
);
"""


class Outbox:
    """One process's outbox file. Not thread-safe: use it from one thread (the event loop)."""

    def __init__(self, path: Path, *, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock_file: IO[str] | None = None
        self._db: sqlite3.Connection | None = None
        self._bytes = 0
        self._count = 0

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, *, max_bytes: int = 512 * 1024 * 1024) -> Outbox:
        """A new outbox file in ``directory`` (named by a UUIDv7, so names sort by age)."""
        directory.mkdir(parents=True, exist_ok=True)
        box = cls(directory / f"{uuid7()}.db", max_bytes=max_bytes)
        if not box.try_lock():  # pragma: no cover - a fresh name cannot be locked
            raise RuntimeError(f"cannot lock new outbox {box.path}")
        return box

    def try_lock(self) -> bool:
        """Take the file's exclusive lock (non-blocking); False if a live process holds it."""
        handle = open(self.path.with_suffix(".lock"), "a+")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock_file = handle
        return True

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
            self._count, self._bytes = int(row[0]), int(row[1])
            self._db = db
        return self._db

    def close(self, *, remove_if_empty: bool = True) -> None:
        empty = self._db is not None and self.depth() == 0 and self.rejected_count() == 0
        if self._db is not None:
            self._db.close()
            self._db = None
        if remove_if_empty and (empty or not self.path.exists()):
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
        if self._lock_file is not None:
            if remove_if_empty and not self.path.exists():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path.with_suffix(".lock"))
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- rows --------------------------------------------------------------------------

    def add(self, messages: Iterable[PendingMessage]) -> int:
        """Append messages in order, in one transaction. ``OutboxFull`` if over the limit."""
        rows = [(m.id, m.subject, json.dumps(m.headers), m.payload, time.time()) for m in messages]
        if not rows:
            return 0
        size = sum(len(r[3]) for r in rows)
        db = self._conn()
        if self._bytes + size > self.max_bytes:
            raise OutboxFull(
                f"outbox {self.path} is full ({_size(self._bytes)} of {_size(self.max_bytes)}) "
                "and NATS is still unreachable: the event was "
                "NOT accepted. Restore NATS, or raise outbox_max_bytes"
            )
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO outbox (id, subject, headers, payload, created) VALUES (?,?,?,?,?)", rows
            )
        self._bytes += size
        self._count += len(rows)
        return len(rows)

    def peek(self, limit: int = 500) -> list[OutboxRow]:
        """The oldest rows, in order."""
        cur = self._conn().execute(
            "SELECT seq, id, subject, headers, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
        )
        return [
            OutboxRow(seq, PendingMessage(id_, subject, json.loads(headers), bytes(payload)))
            for seq, id_, subject, headers, payload in cur
        ]

    def remove_through(self, seq: int) -> None:
        """Delete every row up to and including ``seq`` (they reached the stream)."""
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            removed = db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox WHERE seq <= ?", (seq,)
            ).fetchone()
            db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))
        self._count -= int(removed[0])
        self._bytes -= int(removed[1])

    def add_rejected(self, message: PendingMessage, error: str) -> None:
        """Keep a message the server refused for good, for inspection."""
        db = self._conn()
        with db:
            db.execute(
                "INSERT INTO rejected (id, subject, headers, payload, error, created) VALUES (?,?,?,?,?,?)",
                (message.id, message.subject, json.dumps(message.headers), message.payload, error,
                 time.time()),
            )

    def reject(self, row: OutboxRow, error: str) -> None:
        """Move a row the server refused for good (not transient) to ``rejected``."""
        db = self._conn()
        m = row.message
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO rejected (id, subject, headers, payload, error, created) VALUES (?,?,?,?,?,?)",
                (m.id, m.subject, json.dumps(m.headers), m.payload, error, time.time()),
            )
            db.execute("DELETE FROM outbox WHERE seq = ?", (row.seq,))
        self._count -= 1
        self._bytes -= len(m.payload)

    def depth(self) -> int:
        if self._db is None and not self.path.exists():
            return 0
        self._conn()
        return self._count

    def size_bytes(self) -> int:
        return self._bytes

    def rejected_count(self) -> int:
        if self._db is None and not self.path.exists():
            return 0
        return int(self._conn().execute("SELECT count(*) FROM rejected").fetchone()[0])


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def orphaned_outboxes(directory: Path, *, own: Path | None = None) -> Iterator[Outbox]:
    """Outbox files whose owner died, oldest first, each locked for the caller."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.db")):
        if own is not None and path == own:
            continue
        box = Outbox(path)
        if box.try_lock():
            yield box


@dataclass(frozen=True, slots=True)
class SetAside:
    """An event NATS can never accept, moved out of the queue so it blocks nothing."""

    file: str
    id: str
    subject: str
    error: str
    created: float


def set_aside(directory: Path, *, limit: int = 20) -> list[SetAside]:
    """The newest events set aside (the ``rejected`` tables) across ``directory``, read-only."""
    found: list[SetAside] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.db")):
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT id, subject, error, created FROM rejected "
                                  "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
            finally:
                db.close()
            found.extend(SetAside(path.name, str(i), str(subj), str(err), float(when))
                         for i, subj, err, when in rows)
    return sorted(found, key=lambda r: r.created, reverse=True)[:limit]


def outbox_depth(directory: Path) -> tuple[int, int, int]:
    """(files, queued events, rejected events) across every outbox in ``directory``, read-only."""
    files = queued = rejected = 0
    if not directory.is_dir():
        return 0, 0, 0
    for path in sorted(directory.glob("*.db")):
        files += 1
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                queued += int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
                rejected += int(db.execute("SELECT count(*) FROM rejected").fetchone()[0])
            finally:
                db.close()
    return files, queued, rejected
