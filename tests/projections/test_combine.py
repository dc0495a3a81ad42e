"""combine_upserts is exact: a batch run with each row's upserts combined leaves the same rows.

A randomised check against SQLite itself: random upserts (every merge rule, ints, floats,
strings, None, keys of several types) and deletes, over rows that may or may not be there
before, run op by op and combined, in two databases; the tables must be identical.
"""

from __future__ import annotations

import random
import sqlite3
from typing import Any

from tether.projections._ops import (
    Delete,
    Op,
    Table,
    Upsert,
    combine_upserts,
    compile_delete,
    compile_upsert,
    create_sql,
)

T = Table("t", {"k": "TEXT", "k2": "INTEGER", "a": "INTEGER", "b": "REAL", "c": "TEXT", "d": "", "e": "INTEGER"},
          key=("k", "k2"))
RULES = ("set", "add", "max", "min", "keep", "coalesce")
COLUMNS = ("a", "b", "c", "d", "e")


def _value(rng: random.Random, column: str) -> Any:
    pick = rng.random()
    if pick < 0.2:
        return None
    if column == "a" or column == "e":
        return rng.randint(-5, 5)
    if column == "b":
        return rng.choice((0.1, 0.2, 1.5, -3.25, 7.0))
    if column == "c":
        return rng.choice(("x", "y", "zz", ""))
    return rng.choice((1, 2.5, "s", True, None))  # a column without type: anything goes


def _op(rng: random.Random) -> Op:
    key = {"k": rng.choice(("r1", "r2", "r3", 4, None, 4.0)), "k2": rng.choice((1, 2))}
    if rng.random() < 0.05:
        return Delete("t", key)
    columns = rng.sample(COLUMNS, rng.randint(1, len(COLUMNS)))
    values = {**key, **{c: _value(rng, c) for c in columns}}
    merge = {c: rng.choice(RULES) for c in columns if rng.random() < 0.85}
    return Upsert("t", values, {c: r for c, r in merge.items() if r != "set"})


def _run(db: sqlite3.Connection, ops: list[Op]) -> None:
    for op in ops:
        if isinstance(op, Upsert):
            sql = compile_upsert(T, tuple(op.values), tuple(op.merge.items()))
            db.execute(sql, tuple(op.values.values()))
        else:
            db.execute(compile_delete(T, tuple(op.key)), tuple(op.key.values()))


def _rows(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    cols = ", ".join(T.columns)
    return sorted((tuple((type(v).__name__, v) for v in row) for row in db.execute(f"SELECT {cols} FROM t")),
                  key=repr)


def _fresh(before: list[Op]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    for sql in create_sql(T):
        db.execute(sql)
    _run(db, before)
    return db


def test_combined_batches_leave_exactly_the_same_rows() -> None:
    rng = random.Random(2026)
    combined_any = 0
    for _ in range(3_000):
        before = [_op(rng) for _ in range(rng.randint(0, 6))]
        batch = [_op(rng) for _ in range(rng.randint(1, 12))]
        one_by_one, together = _fresh(before), _fresh(before)
        _run(one_by_one, batch)
        combined = combine_upserts(batch, {"t": T})
        combined_any += len(combined) < len(batch)
        _run(together, combined)
        assert _rows(together) == _rows(one_by_one), (before, batch, combined)
    assert combined_any > 600  # and it does combine, often


def test_float_adds_and_unlike_types_stay_apart() -> None:
    a = Upsert("t", {"k": "r", "k2": 1, "b": 0.1}, {"b": "add"})
    b = Upsert("t", {"k": "r", "k2": 1, "b": 0.2}, {"b": "add"})
    assert combine_upserts([a, b], {"t": T}) == [a, b]
    c = Upsert("t", {"k": "r", "k2": 1, "c": "x"}, {"c": "max"})
    d = Upsert("t", {"k": "r", "k2": 1, "c": 3}, {"c": "max"})
    assert combine_upserts([c, d], {"t": T}) == [c, d]
    e = Upsert("t", {"k": None, "k2": 1, "a": 1}, {})
    assert combine_upserts([e, e], {"t": T}) == [e, e]  # NULL keys are distinct rows in SQLite


def test_a_run_of_one_rows_upserts_becomes_one_statement() -> None:
    ops: list[Op] = [Upsert("t", {"k": "r", "k2": 1, "a": i, "e": i, "c": "x" if i == 2 else None},
                            {"a": "max", "e": "min", "c": "keep"}) for i in range(5)]
    [one] = combine_upserts(ops, {"t": T})
    assert isinstance(one, Upsert)
    assert one.values == {"k": "r", "k2": 1, "a": 4, "e": 0, "c": "x"}
