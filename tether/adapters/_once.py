"""Exactly once, for a tool whose effect lives in its own SQLite database: the effect and a completion
record under the call's idempotency key commit in one transaction, so running the call again (a retry,
a resumed run) returns the recorded result instead of repeating the effect.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["COMPLETIONS_TABLE", "once"]

T = TypeVar("T")
COMPLETIONS_TABLE = "tether_completions"
_CREATE = (f"CREATE TABLE IF NOT EXISTS {COMPLETIONS_TABLE} "
           "(key TEXT PRIMARY KEY, result TEXT NOT NULL, completed_at REAL NOT NULL)")


def once(db: sqlite3.Connection, key: str, effect: Callable[[sqlite3.Connection], T]) -> Any:
    """``effect(db)``, committed together with a record of its result under ``key``; if ``key`` was
    recorded before, that result, and ``effect`` does not run.

    Pass the tool's ``idempotency_key`` (tether gives a tool in a run ``<run id>:<position>``) and
    mark the tool ``idempotent=True``: a call the process died in is then run again on resume,
    and either its effect had committed (the recorded result comes back) or nothing of it had.
    The result is stored as JSON and returned as JSON reads it back, both times. ``effect`` must
    write through ``db`` only and must not commit; if it raises, nothing of it is kept.
    """
    if not key:
        raise ValueError("once() needs the call's idempotency key (a tool's idempotency_key parameter)")
    if db.in_transaction:
        raise ValueError("once() commits the effect with its completion record: call it outside a transaction "
                         "(commit or roll back first)")
    db.execute(_CREATE)
    db.commit()
    db.execute("BEGIN IMMEDIATE")  # no other writer between the look-up and the record
    try:
        row = db.execute(f"SELECT result FROM {COMPLETIONS_TABLE} WHERE key = ?", (key,)).fetchone()
        if row is not None:
            db.rollback()
            return json.loads(row[0])
        text = json.dumps(effect(db), separators=(",", ":"), sort_keys=True)
        db.execute(f"INSERT INTO {COMPLETIONS_TABLE} (key, result, completed_at) VALUES (?, ?, ?)",
                   (key, text, time.time()))
        db.commit()
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise
    return json.loads(text)
