"""The exporter: reads the traces view, sends what is due, remembers what it sent."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._runner import open_view
from ._content import DEFAULT_CONTENT_LIMIT, ContentSource, content_attributes, content_events
from ._sinks import SpanSink
from ._spans import DEFAULT_TIMING, FINAL, Mode, OtelSpan, RunState, Timing, otel_span, span_id_of, trace_id_of, verdict

__all__ = ["ExportReport", "OtelExporter"]

log = logging.getLogger("tether.projections.otel")


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What one pass did."""

    sent: int = 0
    """Spans the receiver accepted (all modes)."""
    unfinished: int = 0
    """Of which sent unfinished (still running after their run went silent)."""
    late: int = 0
    """Of which the late children of spans that had been sent unfinished."""
    waiting: int = 0
    """Spans not due yet (running, or settling), looked at again next pass."""
    failed: int = 0
    """Spans the receiver did not accept; sent again next pass."""
    view_seq: int | None = None
    """The traces view's applied log sequence this pass read; None: no view yet."""
    error: str | None = None
    """Why the pass could not read or record (a view being swapped, a full disk); tried again next pass."""


class _NoContent(Exception):
    """Content capture is on and the log could not be read."""


@dataclass
class _Tally:
    sent: int = 0
    unfinished: int = 0
    late: int = 0
    failed: int = 0


_STATE = """
CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS exported (span_id TEXT PRIMARY KEY, state TEXT NOT NULL, trace_id TEXT NOT NULL,
                                     otel_span_id TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pending (span_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS traces (key TEXT PRIMARY KEY, trace_id TEXT NOT NULL);
"""

_RUNS = """
SELECT r.run_id, r.trace_id, r.parent_run_id, r.last_at, r.tenant,
       (SELECT count(*) FROM spans s WHERE s.run_id = r.run_id AND s.kind IN ('llm', 'tool')
                                         AND coalesce(s.status, 'running') = 'running') AS running_calls,
       (SELECT count(*) FROM spans s WHERE s.run_id = r.run_id AND s.kind IN ('llm', 'tool')
                                         AND s.status = 'error') AS failed_calls,
       (SELECT max(s.ended_at) FROM spans s WHERE s.run_id = r.run_id) AS last_end
FROM runs r WHERE r.run_id IN ({marks})
"""


_FAILED = """
SELECT s.run_id, s.name, s.error_type, s.error_message,
       EXISTS (SELECT 1 FROM spans d WHERE d.span_id = s.span_id || '#dead_letter') AS dead
FROM spans s WHERE s.run_id IN ({marks}) AND s.kind IN ('llm', 'tool') AND s.status = 'error'
ORDER BY s.started_at, s.span_id
"""


def _failure(row: Mapping[str, Any], mixed: bool) -> str:
    error = ": ".join(str(x) for x in (row["error_type"], row["error_message"]) if x) or "failed"
    return f"{error} ({row['name']}" + (", dead-lettered)" if mixed and row["dead"] else ")")


def _tagged(attributes: str | None, prefix: str) -> str | None:
    """The value of the first ``prefix:<value>`` tag in a run span's attributes."""
    tags = json.loads(attributes or "{}").get("tether.run.tags") or []
    return next((t[len(prefix):] for t in tags if isinstance(t, str) and t.startswith(prefix)), None)


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _rows(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cursor = db.execute(sql, params)
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def _where_in(db: sqlite3.Connection, sql: str, ids: Iterable[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for chunk in _chunks(sorted(set(ids))):
        out += _rows(db, sql.format(marks=", ".join("?" for _ in chunk)), chunk)
    return out


class OtelExporter:
    """Sends the spans of the traces view in ``views`` to ``sink``, each once (see the module doc).

    ``export()`` runs one pass (blocking: SQLite and HTTP); ``aexport()`` runs it in a thread;
    ``follow()`` repeats it until stopped. ``state`` is the file remembering what was sent.
    ``content``: where to read prompts, completions, tool arguments and results from (off
    when None, the default), each attribute cut at ``content_limit`` characters.
    """

    def __init__(self, views: Path, sink: SpanSink, *, state: Path, timing: Timing = DEFAULT_TIMING,
                 batch: int = 512, clock: Callable[[], float] = time.time, content: ContentSource | None = None,
                 content_limit: int = DEFAULT_CONTENT_LIMIT) -> None:
        if content_limit < 1:
            raise ValueError(f"content_limit must be at least 1 character, got {content_limit}")
        self.views = views
        self.sink = sink
        self.content = content
        self.content_limit = content_limit
        self.timing = timing
        self.batch = batch
        self.clock = clock
        state.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(state, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_STATE)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> OtelExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exported(self) -> dict[str, str]:
        """Tether span id → how it was sent (``ended``, ``unfinished``, ``late``)."""
        with self._lock:
            return dict(self._db.execute("SELECT span_id, state FROM exported").fetchall())

    # -- the shells ----------------------------------------------------------------------------

    async def aexport(self) -> ExportReport:
        return await asyncio.to_thread(self.export)

    async def follow(self, stop: asyncio.Event, *, interval: float = 2.0, wake: asyncio.Event | None = None,
                     on_report: Callable[[ExportReport], None] | None = None) -> None:
        """Export, then again every ``interval`` seconds or as soon as ``wake`` is set, until ``stop``.

        Set ``wake`` from the projector's change notifications (``tether.proj.traces.>``) to
        send runs as soon as they finish. After a refused batch, waits longer (up to 30 s).
        """
        delay = interval
        while not stop.is_set():
            if wake is not None:
                wake.clear()
            report = await self.aexport()
            if on_report is not None:
                on_report(report)
            trouble = bool(report.failed or report.error)
            delay = min(30.0, max(delay * 2, interval)) if trouble else interval
            waiters = [asyncio.ensure_future(stop.wait())]
            if wake is not None and not trouble:
                waiters.append(asyncio.ensure_future(wake.wait()))
            try:
                await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
            if wake is not None and wake.is_set() and not stop.is_set():
                await asyncio.sleep(min(0.2, interval))  # let a burst of notifications settle

    # -- one pass --------------------------------------------------------------------------------

    def export(self) -> ExportReport:
        """Send what is due now; record it. Blocking."""
        with self._lock:
            path = open_view(self.views, "traces") if self.views.is_dir() else None
            if path is None:
                return ExportReport()
            try:
                view = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
                try:
                    view.execute("BEGIN")  # one snapshot of the view for the whole pass
                    return self._pass(view)
                finally:
                    view.close()
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                log.warning("otel export: cannot read %s or record what was sent: %r; trying again next pass",
                            path, exc)
                return ExportReport(error=f"{type(exc).__name__}: {exc}")
            except _NoContent as exc:  # nothing was sent or recorded: the same spans go next pass, with it
                log.warning("otel export: %s; trying again next pass", exc)
                return ExportReport(error=str(exc))

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM _meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _pass(self, view: sqlite3.Connection) -> ExportReport:
        head_row = view.execute("SELECT value FROM _meta WHERE key = 'seq'").fetchone()
        head = int(head_row[0]) if head_row else 0
        mark = int(self._meta("view_seq") or 0)
        if head < mark:  # the view was rebuilt from another log: look at everything again
            mark = 0
        now = self.clock()
        tally = _Tally()
        for page in self._pages(view, mark):
            if not self._page(view, page, now, tally):
                break  # the receiver refused: stop here, and read from the same point next time
        else:
            self._db.execute("INSERT OR REPLACE INTO _meta VALUES ('view_seq', ?)", (str(head),))
        waiting = int(self._db.execute("SELECT count(*) FROM pending").fetchone()[0]) - tally.failed
        return ExportReport(sent=tally.sent, unfinished=tally.unfinished, late=tally.late, waiting=max(0, waiting),
                            failed=tally.failed, view_seq=head)

    def _pages(self, view: sqlite3.Connection, mark: int, size: int = 2000) -> Iterator[list[dict[str, Any]]]:
        """The spans to look at, a page at a time: those still waiting, then those changed since ``mark``."""
        waiting = [sid for (sid,) in self._db.execute("SELECT span_id FROM pending ORDER BY span_id")]
        for chunk in _chunks(waiting, size):
            found = _where_in(view, "SELECT * FROM spans WHERE span_id IN ({marks})", chunk)
            gone = set(chunk) - {r["span_id"] for r in found}  # not in the view any more (rebuilt by another fold)
            if gone:
                self._db.executemany("DELETE FROM pending WHERE span_id = ?", [(g,) for g in gone])
            yield found
        after = 0
        while True:
            page = _rows(view, "SELECT rowid AS _rowid, * FROM spans WHERE rowid > ? AND last_seq > ? "
                               "ORDER BY rowid LIMIT ?", (after, mark, size))
            if not page:
                return
            after = page[-1]["_rowid"]
            yield page

    def _page(self, view: sqlite3.Connection, rows: Sequence[dict[str, Any]], now: float, tally: _Tally) -> bool:
        """Decide, send and record one page of spans. False if the receiver refused a batch."""
        done = {r["span_id"]: r["state"] for r in _where_in(
            self._db, "SELECT span_id, state FROM exported WHERE span_id IN ({marks})", [r["span_id"] for r in rows])}
        runs = self._runs(view, {r["run_id"] for r in rows if r["run_id"]})
        due: list[tuple[dict[str, Any], Mode]] = []
        waiting: list[str] = []
        settled: list[str] = []
        for row in rows:
            sid = row["span_id"]
            state = done.get(sid)
            if state in ("ended", "late") or (row["kind"] == "circuit" and row["run_id"] is None):
                settled.append(sid)
            elif state == "unfinished":
                if row["status"] in FINAL:
                    due.append((row, "late"))
                else:
                    settled.append(sid)  # still open: it changes (and is read again) when its outcome arrives
            else:
                run = runs.get(row["run_id"]) if row["run_id"] else None
                decided = verdict(row, run[1] if run else None, now, self.timing)
                if decided == "wait":
                    waiting.append(sid)
                else:
                    due.append((row, "finished" if decided == "finished" else "unfinished"))
        spans = self._build(view, due, runs)
        db = self._db
        db.execute("BEGIN")  # what is still to send: waiting, or due until recorded as sent
        db.executemany("DELETE FROM pending WHERE span_id = ?", [(sid,) for sid in settled])
        db.executemany("INSERT OR IGNORE INTO pending VALUES (?)",
                       [(sid,) for sid in (*waiting, *(r["span_id"] for r, _ in due))])
        db.execute("COMMIT")
        for i in range(0, len(spans), self.batch):
            batch = spans[i:i + self.batch]
            if not self.sink.send([s for s, _ in batch]):
                tally.failed += len(spans) - i
                return False
            self._record(batch)
            tally.sent += len(batch)
            tally.unfinished += sum(mode == "unfinished" for _, mode in batch)
            tally.late += sum(mode == "late" for _, mode in batch)
        return True

    def _record(self, batch: Sequence[tuple[OtelSpan, Mode]]) -> None:
        at = time.time()
        db = self._db
        db.execute("BEGIN")
        db.executemany("UPDATE exported SET state = 'late', at = ? WHERE span_id = ?",
                       [(at, s.source) for s, mode in batch if mode == "late"])
        db.executemany("INSERT OR REPLACE INTO exported VALUES (?, ?, ?, ?, ?)",
                       [(s.source, "ended" if mode == "finished" else "unfinished", f"{s.trace_id:032x}",
                         f"{s.span_id:016x}", at) for s, mode in batch if mode != "late"])
        db.executemany("DELETE FROM pending WHERE span_id = ?", [(s.source,) for s, _ in batch])
        db.execute("COMMIT")

    def _runs(self, view: sqlite3.Connection, ids: Iterable[str]) -> dict[str, tuple[dict[str, Any], RunState]]:
        rows = _where_in(view, _RUNS, ids)
        failed: dict[str, list[dict[str, Any]]] = {}
        for f in _where_in(view, _FAILED, [r["run_id"] for r in rows if r["failed_calls"]]):
            failed.setdefault(f["run_id"], []).append(f)
        out = {}
        for r in rows:
            fails = failed.get(r["run_id"], [])
            root, root_attributes = _root(view, r["run_id"], r["parent_run_id"])
            out[r["run_id"]] = (r, RunState(
                last_at=r["last_at"], running_calls=int(r["running_calls"] or 0),
                failed_calls=int(r["failed_calls"] or 0), last_end=r["last_end"],
                failures=tuple(_failure(f, mixed=0 < sum(bool(g["dead"]) for g in fails) < len(fails))
                               for f in fails[:3]) + ((f"and {len(fails) - 3} more",) if len(fails) > 3 else ()),
                dead_lettered=sum(bool(f["dead"]) for f in fails),
                first_error_type=next((f["error_type"] for f in fails if f["error_type"]), None),
                session_id=_tagged(root_attributes, "session:") or root,
                user_id=_tagged(root_attributes, "user:") or r["tenant"]))
        return out

    # -- ids and parents ----------------------------------------------------------------------------

    def _build(self, view: sqlite3.Connection, due: Sequence[tuple[dict[str, Any], Mode]],
               runs: dict[str, tuple[dict[str, Any], RunState]]) -> list[tuple[OtelSpan, Mode]]:
        parents = {r["parent_id"] for r, _ in due if r["parent_id"]}
        present = {r["span_id"] for r in _where_in(view, "SELECT span_id FROM spans WHERE span_id IN ({marks})",
                                                   parents)}
        traces = _Traces(self._db, view, runs)
        events: Mapping[int, Any] = {}
        if self.content is not None:
            seqs = [r[k] for r, _ in due if r["kind"] in ("run", "llm", "tool") for k in ("first_seq", "last_seq")
                    if r[k] is not None]
            try:
                events = self.content.events(seqs) if seqs else {}
            except Exception as exc:
                raise _NoContent(f"cannot read the captured content from the log: {type(exc).__name__}: {exc}") \
                    from exc
        out: list[tuple[OtelSpan, Mode]] = []
        for row, mode in due:
            trace_id = traces.of(row)
            parent = row["parent_id"] if row["parent_id"] in present else None
            if row["kind"] == "run":
                if parent is not None and traces.of_run(parent) != trace_id:
                    parent = None  # a sub-agent's run in a trace of its own: no parent across traces
            elif parent is None and row["run_id"] and row["run_id"] != row["span_id"]:
                parent = row["run_id"]  # its parent is not in the log (yet): under the run, as `tether trace` shows
            run = runs.get(row["run_id"]) if row["run_id"] else None
            content = None
            if self.content is not None:
                content = content_attributes(row["kind"], *content_events(row, events), limit=self.content_limit)
            out.append((otel_span(row, trace_id=trace_id, parent_id=None if parent is None else span_id_of(parent),
                                  mode=mode, run=run[1] if run else None, content=content), mode))
        traces.save()
        return out


def _root(view: sqlite3.Connection, run_id: str, parent: str | None) -> tuple[str, str | None]:
    """A run's root run (up its parents, as far as the view knows them) and that run span's attributes."""
    root, seen = run_id, {run_id}
    while parent and parent not in seen and len(seen) < 32:
        found = view.execute("SELECT parent_run_id FROM runs WHERE run_id = ?", (parent,)).fetchone()
        if found is None:
            break
        root, parent = parent, found[0]
        seen.add(root)
    row = view.execute("SELECT attributes FROM spans WHERE span_id = ?", (root,)).fetchone()
    return root, None if row is None else row[0]


class _Traces:
    """Trace ids by run (or, outside any run, by call), pinned in the state file at first use."""

    def __init__(self, state: sqlite3.Connection, view: sqlite3.Connection,
                 runs: dict[str, tuple[dict[str, Any], RunState]]) -> None:
        self.state = state
        self.view = view
        self.runs = {k: v[0] for k, v in runs.items()}
        self.new: dict[str, int] = {}

    def _pinned(self, key: str) -> int | None:
        if key in self.new:
            return self.new[key]
        row = self.state.execute("SELECT trace_id FROM traces WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0], 16)

    def of(self, span: Mapping[str, Any]) -> int:
        if span["run_id"]:
            return self.of_run(span["run_id"])
        key = f"call:{span['call_id'] or span['span_id']}"
        pinned = self._pinned(key)
        if pinned is None:
            pinned = self.new[key] = trace_id_of(key, span["trace_id"])
        return pinned

    def of_run(self, run_id: str, depth: int = 0) -> int:
        key = f"run:{run_id}"
        pinned = self._pinned(key)
        if pinned is not None:
            return pinned
        run = self.runs.get(run_id)
        if run is None:
            found = _rows(self.view, "SELECT run_id, trace_id, parent_run_id FROM runs WHERE run_id = ?", (run_id,))
            run = self.runs[run_id] = found[0] if found else {"run_id": run_id, "trace_id": None,
                                                             "parent_run_id": None}
        parent = run["parent_run_id"]
        if run["trace_id"]:
            trace_id = trace_id_of(run_id, run["trace_id"])
        elif parent and parent != run_id and depth < 32 and self.view.execute(
                "SELECT 1 FROM runs WHERE run_id = ?", (parent,)).fetchone():
            trace_id = self.of_run(parent, depth + 1)  # a sub-agent's run continues its parent's trace
        else:
            trace_id = trace_id_of(run_id)
        self.new[key] = trace_id
        return trace_id

    def save(self) -> None:
        if self.new:
            self.state.execute("BEGIN")
            self.state.executemany("INSERT OR IGNORE INTO traces VALUES (?, ?)",
                                   [(k, f"{v:032x}") for k, v in self.new.items()])
            self.state.execute("COMMIT")
            self.new.clear()
