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

__all__ = ["Delete", "Merge", "Op", "Table", "Upsert", "compile_delete", "compile_upsert", "create_sql"]

Merge = Literal["set", "add", "max", "min", "keep", "coalesce"]


@dataclass(frozen=True)
class Table:
    """A view table: columns (name → SQLite type), primary key, extra indexes."""

    name: str
    columns: Mapping[str, str]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

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
        name = f"{table.name}_{'_'.join(idx)}"
        cols = ", ".join(f'"{c}"' for c in idx)
        out.append(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table.name}" ({cols})')
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
