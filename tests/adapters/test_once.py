"""``tether.once``: a tool's SQLite effect and its completion record commit together, so the call is
exactly-once however often it runs (no bus needed)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tether


def bank(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS moves (amount INTEGER)")
    db.commit()
    return db


def moved(db: sqlite3.Connection) -> list[int]:
    return [a for (a,) in db.execute("SELECT amount FROM moves")]


def test_the_effect_runs_once_per_key_and_the_recorded_result_comes_back(tmp_path: Path) -> None:
    db = bank(tmp_path / "bank.db")

    def move(amount: int) -> Callable[[sqlite3.Connection], Any]:
        return lambda conn: (conn.execute("INSERT INTO moves VALUES (?)", (amount,)), {"moved": amount, "t": (1, 2)})[1]

    assert tether.once(db, "run-1:0", move(5)) == {"moved": 5, "t": [1, 2]}  # as JSON reads it back
    assert tether.once(db, "run-1:0", move(7)) == {"moved": 5, "t": [1, 2]}
    again = bank(tmp_path / "bank.db")  # another process, after a crash
    assert tether.once(again, "run-1:0", move(9)) == {"moved": 5, "t": [1, 2]}
    assert tether.once(again, "run-1:1", move(9)) == {"moved": 9, "t": [1, 2]}
    assert moved(again) == [5, 9]


def test_an_effect_that_raises_leaves_nothing_and_runs_again_next_time(tmp_path: Path) -> None:
    db = bank(tmp_path / "bank.db")

    def half(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO moves VALUES (1)")
        raise RuntimeError("the second half failed")

    with pytest.raises(RuntimeError, match="second half"):
        tether.once(db, "k", half)
    assert moved(db) == [] and not db.in_transaction
    assert tether.once(db, "k", lambda conn: conn.execute("INSERT INTO moves VALUES (2)").rowcount) == 1
    assert moved(db) == [2]


def test_bad_calls_say_what_to_do(tmp_path: Path) -> None:
    db = bank(tmp_path / "bank.db")
    with pytest.raises(ValueError, match="idempotency key"):
        tether.once(db, "", lambda conn: None)
    db.execute("INSERT INTO moves VALUES (3)")
    with pytest.raises(ValueError, match="outside a transaction"):
        tether.once(db, "k", lambda conn: None)
    db.commit()
    assert moved(db) == [3]
