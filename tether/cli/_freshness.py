"""How far behind the event log a view is, said in words a newcomer reads without the docs.

The decisions (:func:`catch_up_words`, :func:`lag_note`) are pure; :func:`view_freshness`
gathers what they need: the view's checkpoint, whether a projector holds the views directory,
and (if a NATS server answers) the head of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tether.bus import EVENTS_STREAM, BusConfig, find_cluster, find_running, server_urls

from ._format import Style

__all__ = ["Freshness", "ago", "catch_up_words", "lag_note", "log_head", "note_lag", "projector_running",
           "view_freshness"]


def catch_up_words(applied: int, head: int) -> str:
    """Where a starting projector stands, e.g. ``catching up on 40 of the log's 120 events``."""
    if head <= 0:
        return "the log is empty so far"
    if applied >= head:
        return f"up to date with the log's {_events(head)}"
    if applied <= 0:
        return f"folding the log's {_events(head)} from the start"
    return f"catching up on {head - applied:,} of the log's {_events(head)}"


def ago(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h``, ``2 days``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


@dataclass(frozen=True)
class Freshness:
    """What is known of a view's place in the log."""

    view: str
    seq: int
    """The view's checkpoint: the last stream sequence it has applied."""
    at: float | None
    """When that last applied event was stored in the stream (epoch seconds), if known."""
    running: bool
    """Whether a projector (``tether up``, ``tether projector``) holds the views directory."""
    head: int | None
    """The log's last stream sequence, None when no NATS server answered."""


def lag_note(f: Freshness, *, now: float | None = None) -> str | None:
    """The note a view command prints before its figures, or None when the view is current."""
    behind = None if f.head is None else max(0, f.head - f.seq)
    if not behind and (f.running or behind == 0):
        return None  # kept current, or nothing new to apply
    newest = (f"its newest event is from {ago((time.time() if now is None else now) - f.at)} ago" if f.at
              else f"it has {_events(f.seq)}")
    fix = "`tether up` (or `tether projector`) brings it up to date"
    if behind is None:
        return (f"note: no projector is running and no NATS server answers, so the {f.view} view shows the log "
                f"as it was when last updated ({newest}); newer events, if any, are missing: {fix}")
    where = f"note: the {f.view} view is {_events(behind)} behind the log ({newest})"
    return f"{where}; the projector is catching up" if f.running else f"{where} and no projector is running: {fix}"


def _events(n: int) -> str:
    return f"{n:,} event" + ("" if n == 1 else "s")


def projector_running(directory: Path) -> bool:
    """Whether a projector holds ``directory``'s lock (it takes it exclusively while it runs).

    The probe takes a shared lock for an instant; a projector starting in that instant waits
    for it (see ``tether.projections._runner._lock``)."""
    return lock_held(directory)


def lock_held(directory: Path, *, exclusive_only: bool = True) -> bool:
    """Whether a process holds ``directory/.lock``: only an exclusive holder (a projector)
    with ``exclusive_only``, probed by a shared lock, else any holder (a memory client's
    shared lock too), probed by an exclusive one. No lock file, or one that cannot be read:
    no holder is said."""
    try:
        handle = open(directory / ".lock")  # noqa: SIM115 - closed below
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if exclusive_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _checkpoint(path: Path) -> tuple[int, float | None]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM _meta WHERE key IN ('seq', 'at')").fetchall())
    finally:
        db.close()
    at = meta.get("at")
    return int(meta.get("seq") or 0), None if at is None else float(at)


async def log_head(url: str | None, home: Path | None, timeout: float = 2.0) -> int | None:
    """The EVENTS stream's last sequence, or None if no server answers.

    A bare NATS connection: never starts a server, and (unlike ``connect()``) starts no
    publisher, so reading a view never touches the outbox."""
    import nats

    config = BusConfig.from_env(url=url, home=home, connect_timeout=timeout)
    target = config.url
    if not target:
        running = find_running(config.home)
        cluster = find_cluster(config.home) if running is None else None
        if running is None and cluster is None:
            return None
        target = running.url if running is not None else cluster.url  # type: ignore[union-attr]

    async def quiet(_exc: Exception) -> None:  # not nats-py's default, which logs every error
        return None

    try:
        nc = await asyncio.wait_for(nats.connect(servers=server_urls(target), allow_reconnect=False,
                                                 max_reconnect_attempts=0, error_cb=quiet,
                                                 **config.nats_options()), timeout)
    except Exception:  # unreachable, refused, bad credentials: the head is unknown
        return None
    try:
        info = await asyncio.wait_for(nc.jetstream().stream_info(EVENTS_STREAM), timeout)
        return int(info.state.last_seq)
    except Exception:  # no EVENTS stream yet, or the server went away
        return None
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def note_lag(directory: Path, view: str, *, url: str | None, home: Path | None) -> None:
    """Print to stderr how far behind the log ``view`` (in ``directory``) is, if it is."""
    from tether.projections import open_view

    path = open_view(directory, view)
    if path is None:
        return
    try:
        note = lag_note(await view_freshness(path, view, url=url, home=home))
    except sqlite3.Error:
        return  # the command itself says what is wrong with the file
    if note:
        print(Style(sys.stderr).yellow(note), file=sys.stderr, flush=True)


async def view_freshness(path: Path, view: str, *, url: str | None, home: Path | None) -> Freshness:
    """A view file's place in the log: its checkpoint, the projector, the log's head."""
    seq, at = await asyncio.to_thread(_checkpoint, path)
    running = projector_running(path.parent)
    return Freshness(view=view, seq=seq, at=at, running=running, head=await log_head(url, home))
