"""What the views' queries share: rows as dicts, and a time argument as epoch seconds."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["epoch", "rows"]


def rows(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """The result of ``sql``, one dict per row, keyed by column name."""
    cursor = db.execute(sql, params)
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def epoch(value: datetime | float | None) -> float | None:
    """A datetime (naive means UTC) or epoch seconds, as epoch seconds; None stays None."""
    if value is None or isinstance(value, float | int):
        return value
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
