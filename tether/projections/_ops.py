"""What a projection's fold returns: row operations, as data, with no I/O.

A projection's ``apply(event, seq)`` is a pure function of the event: it returns
:class:`Upsert` and :class:`Delete` operations on its :class:`Table` s, and the runner
executes them (in order, in the same SQLite transaction as the checkpoint). Merge rules
let an upsert fold into what is already there without reading it first: ``add`` a count,
keep the ``min``/``max`` of a time, fill a column only if it is still empty (``keep``),
or overwrite only with a value that is set (``coalesce``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Delete", "Index", "Merge", "Op", "Table", "Upsert", "combine_upserts", "compile_delete", "compile_upsert",
           "create_sql"]

Merge = Literal["set", "add", "max", "min", "keep", "coalesce"]


@dataclass(frozen=True)
class Index:
    """An index on some rows only: those ``where`` holds for (SQLite's partial index). Every
    index costs each write to its table; one that only some queries use, over rows they name
    (the traces view's circuit transitions by route), costs only those rows' writes. A query
    uses it when its ``WHERE`` implies ``where`` (in practice: contains it, word for word)."""

    columns: tuple[str, ...]
    where: str
    name: str


@dataclass(frozen=True)
class Table:
    """A view table: columns (name → SQLite type), primary key, extra indexes."""

    name: str
    columns: Mapping[str, str]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...] | Index, ...] = ()
    retired_indexes: tuple[str, ...] = ()
    """Indexes earlier code made on this table and this code no longer wants: dropped when a
    view file is opened. An index is not the view's content, so changing one needs no new
    version (nor a rebuild from the log): only these are dropped, never one someone else
    made on the file."""

    def __post_init__(self) -> None:
        missing = [k for k in self.key if k not in self.columns]
        if missing:
            raise ValueError(f"table {self.name}: key column(s) {missing} not in columns")


@dataclass(frozen=True, slots=True)
class Upsert:
    """Insert a row, or fold ``values`` into the existing one by ``merge`` (default ``set``)."""

    table: str
    values: Mapping[str, Any]
    merge: Mapping[str, Merge] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delete:
    table: str
    key: Mapping[str, Any]


Op = Upsert | Delete


def create_sql(table: Table) -> list[str]:
    cols = ", ".join(f'"{c}" {t}' for c, t in table.columns.items())
    key = ", ".join(f'"{k}"' for k in table.key)
    out = [f'CREATE TABLE IF NOT EXISTS "{table.name}" ({cols}, PRIMARY KEY ({key}))']
    for idx in table.indexes:
        columns = idx.columns if isinstance(idx, Index) else idx
        name = f"{table.name}_{idx.name if isinstance(idx, Index) else '_'.join(idx)}"
        cols = ", ".join(f'"{c}"' for c in columns)
        where = f" WHERE {idx.where}" if isinstance(idx, Index) else ""
        out.append(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table.name}" ({cols}){where}')
    out.extend(f'DROP INDEX IF EXISTS "{name}"' for name in table.retired_indexes)
    return out


_EXPR = {
    "set": "excluded.{c}",
    "add": "coalesce({t}.{c}, 0) + coalesce(excluded.{c}, 0)",
    "max": "max(coalesce({t}.{c}, excluded.{c}), coalesce(excluded.{c}, {t}.{c}))",
    "min": "min(coalesce({t}.{c}, excluded.{c}), coalesce(excluded.{c}, {t}.{c}))",
    "keep": "coalesce({t}.{c}, excluded.{c})",
    "coalesce": "coalesce(excluded.{c}, {t}.{c})",
}


def compile_upsert(table: Table, columns: tuple[str, ...], merge: tuple[tuple[str, Merge], ...]) -> str:
    """``INSERT ... ON CONFLICT(key) DO UPDATE`` for these columns and merge rules."""
    rules = dict(merge)
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" for _ in columns)
    key = ", ".join(f'"{k}"' for k in table.key)
    updates = [f'"{c}" = ' + _EXPR[rules.get(c, "set")].format(t=f'"{table.name}"', c=f'"{c}"')
               for c in columns if c not in table.key]
    conflict = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    return f'INSERT INTO "{table.name}" ({names}) VALUES ({marks}) ON CONFLICT({key}) {conflict}'


def compile_delete(table: Table, columns: tuple[str, ...]) -> str:
    where = " AND ".join(f'"{c}" = ?' for c in columns)
    return f'DELETE FROM "{table.name}" WHERE {where}'


# -- combining a batch's upserts of one row -------------------------------------------------------
#
# Within a batch, the upserts of one row can run as one when that leaves exactly the row the
# two would have: ``b`` after ``a`` is ``(value, rule)`` per column such that, for any row
# there before (or none), SQLite's rules give the same result. Rules compose only in the
# cases below; any other pair, a float ``add`` (the sum's rounding depends on the order), or
# values of unlike types under ``max``/``min`` stay two statements. Keys combine only when
# every key value is a str or an int (SQLite keys NULL apart, and may key 1 and 1.0 alike).

_KEY_TYPES = (str, int)
_ORDERED = (int, float, str)  # types SQLite and Python order alike (bool is not among them)


def _coalesce(a: Any, b: Any) -> Any:
    return b if a is None else a


def _extreme(pick: Any, a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return pick(a, b)


def _alike(a: Any, b: Any) -> bool:
    """Values SQLite and Python order alike: None, or both numbers, or both strings."""
    if a is None or b is None:
        return True
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return False
    return (ta is str and tb is str) or (ta in (int, float) and tb in (int, float) and ta is tb)


def _compose(ra: Merge, va: Any, rb: Merge, vb: Any) -> tuple[Any, Merge] | None:
    """``(value, rule)`` doing what ``(va, ra)`` then ``(vb, rb)`` do to one column, or None."""
    if rb == "set":
        return vb, "set"
    if rb == "add":
        if ra in ("add", "set") and type(va) in (int, type(None)) and type(vb) in (int, type(None)):
            return (va or 0) + (vb or 0), ra
        return None
    if rb in ("max", "min"):
        if ra in (rb, "set") and _alike(va, vb):
            return _extreme(max if rb == "max" else min, va, vb), ra
        return None
    if rb == "keep":
        if ra in ("keep", "set"):
            return _coalesce(va, vb), ra
        if ra == "coalesce":
            return (va, "set") if va is not None else (vb, "keep")
        return None
    if rb == "coalesce":
        if ra in ("coalesce", "set"):
            return _coalesce(vb, va), ra
        if ra == "keep":
            return (vb, "set") if vb is not None else (va, "keep")
        return None
    return None


def _merge_into(values: dict[str, Any], merge: dict[str, Merge], b: Upsert, key: tuple[str, ...]) -> bool:
    """Fold ``b`` into a row's combined (``values``, ``merge``) in place; False (and nothing
    changed) if some column's rules do not compose."""
    changes: list[tuple[str, Any, Merge]] = []
    b_merge = b.merge
    for column, vb in b.values.items():
        if column in key:
            continue
        rb = b_merge.get(column, "set")
        if column in values:
            va = values[column]
            ra = merge.get(column, "set")
            # The usual cases first, inline: a plain overwrite, or the same rule again.
            if rb == "set":
                changes.append((column, vb, "set"))
            elif ra == rb == "keep":
                changes.append((column, vb if va is None else va, "keep"))
            elif ra == rb == "coalesce":
                changes.append((column, va if vb is None else vb, "coalesce"))
            elif ra == rb and (rb == "max" or rb == "min") and (va is None or vb is None or (
                    type(va) is type(vb) and type(va) in _ORDERED)):
                if va is None or vb is None:
                    changes.append((column, vb if va is None else va, rb))
                else:
                    changes.append((column, (va if va >= vb else vb) if rb == "max" else (va if va <= vb else vb), rb))
            else:
                done = _compose(ra, va, rb, vb)
                if done is None:
                    return False
                changes.append((column, done[0], done[1]))
            continue
        # the row's earlier upserts left this column alone: on a new row it is NULL when b runs
        if rb == "add":
            if type(vb) not in (int, type(None)):
                return False
            vb = vb or 0
        changes.append((column, vb, rb))
    for column, value, rule in changes:
        values[column] = value
        if rule == "set":
            merge.pop(column, None)
        else:
            merge[column] = rule
    return True


def combine_upserts(ops: list[Op], tables: Mapping[str, Table]) -> list[Op]:
    """The same batch with each row's consecutive upserts run as one where that is exact.

    A combined upsert takes the place of the row's first one; statements on other rows keep
    their order (none of them reads another row). A delete on a table starts afresh for it."""
    out: list[Op] = []
    at: dict[tuple[str, tuple[Any, ...]], int] = {}
    combined: dict[int, tuple[dict[str, Any], dict[str, Merge]]] = {}  # rows merged into, built up in place
    for op in ops:
        if isinstance(op, Delete):
            at = {k: i for k, i in at.items() if k[0] != op.table}
            out.append(op)
            continue
        table = tables.get(op.table)
        values = op.values
        if table is None:
            out.append(op)
            continue
        try:
            key_values = tuple(values[k] for k in table.key)
        except KeyError:
            out.append(op)
            continue
        if not all(type(v) in _KEY_TYPES for v in key_values):
            out.append(op)
            continue
        row = (op.table, key_values)
        i = at.get(row)
        if i is not None:
            into = combined.get(i)
            if into is None:
                first = out[i]
                assert isinstance(first, Upsert)
                into = combined[i] = (dict(first.values), dict(first.merge))
            if _merge_into(into[0], into[1], op, table.key):
                continue
        at[row] = len(out)
        out.append(op)
    for i, (merged_values, merged_rules) in combined.items():
        out[i] = Upsert(out[i].table, merged_values, merged_rules)
    return out
