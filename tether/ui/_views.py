"""The dashboard's reads: the views' SQLite files, opened read-only (``mode=ro``) per request, in a thread.

A reader never writes, never holds a transaction between requests, and the views are in WAL
mode: the projector's writes and checkpoints never wait for the dashboard.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tether.projections import open_view

__all__ = ["VIEWS", "NoView", "ViewFiles"]

VIEWS = ("traces", "cost", "errors", "metrics")
T = TypeVar("T")


class NoView(LookupError):
    """A view has no file yet (no projector has run on this home)."""


class ViewFiles:
    """The views directory, read-only: :meth:`read` runs a query function on one view in a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._paths: dict[str, tuple[Path, float]] = {}

    def path(self, view: str) -> Path:
        """The file readers use (newest complete version), looked up again every 2 s (a rebuild
        may have made a new one)."""
        known = self._paths.get(view)
        now = time.monotonic()
        if known is not None and now - known[1] < 2.0 and known[0].exists():
            return known[0]
        path = open_view(self.directory, view) if self.directory.is_dir() else None
        if path is None:
            raise NoView(f"no {view} view yet in {self.directory}: run `tether up` (it runs the projector) "
                         "or `tether replay`")
        self._paths[view] = (path, now)
        return path

    def query(self, view: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on a read-only connection to ``view`` (blocking)."""
        db = sqlite3.connect(f"file:{self.path(view)}?mode=ro", uri=True, check_same_thread=False)
        try:
            return fn(db)
        finally:
            db.close()

    async def read(self, view: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`query` in a worker thread: the event loop (and a worker sharing it) never waits on SQLite."""
        return await asyncio.to_thread(self.query, view, fn)

    def checkpoint(self, view: str) -> dict[str, Any]:
        """The view's ``_meta``: the log sequence it has applied (``seq``), when that event was stored
        (``at``), and whether it is complete (a rebuild in progress is not)."""
        def meta(db: sqlite3.Connection) -> dict[str, Any]:
            values = dict(db.execute("SELECT key, value FROM _meta").fetchall())
            at = values.get("at")
            return {"seq": int(values.get("seq") or 0), "at": None if at is None else float(at),
                    "complete": values.get("complete") == "1"}

        try:
            return self.query(view, meta)
        except (NoView, sqlite3.Error):
            return {"seq": 0, "at": None, "complete": False, "missing": True}
