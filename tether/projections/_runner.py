"""The projector: feeds every view from one consumer on EVENTS, in batches.

Each view's checkpoint lives in its own SQLite file (see ``_store``); the projector
starts its durable consumer (``tether-projector``) just after the lowest checkpoint, so
a view that is behind (new, or rebuilding after a version bump) catches up while the
others skip what they already have. Decoding the next batch overlaps with writing the
previous one (the SQLite work runs in one dedicated thread). After each batch, compact
change notifications go out on ``tether.proj.<view>.<key>``.

A version bump builds ``<view>.v<N>.db`` from the start of the log while the previous
version keeps serving readers (:func:`open_view` picks the newest *complete* version);
once the new one has caught up it is marked complete and the old file is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from tether._gcpace import pace
from tether.bus import EVENT_SUBJECTS, EVENTS_STREAM, Bus, FeedMessage, PullFeed, encode_token
from tether.schemas import Event, EventError, InvalidEvent, catalogue

from ._store import Item, Projection, ViewStore, view_path

__all__ = ["PROJECTOR_DURABLE", "Projector", "ProjectorBusy", "open_view", "view_versions"]

log = logging.getLogger("tether.projections")

PROJECTOR_DURABLE = "tether-projector"


# (kind, action) of an event subject (tether.evt.<agent>.<run>.<kind>.<action>.<key>) -> the event type.
_SUBJECT_TYPES = {(model.kind, model.action): event_type for event_type, model in catalogue().items()}


class ProjectorBusy(RuntimeError):
    """Another projector holds this views directory."""


def _catching_up(projector: object, behind: bool) -> None:
    """Rarer garbage collections while ``projector`` is behind: its batches of decoded events stay
    alive until every view has folded them (see ``tether._gcpace``)."""
    pace(projector, behind)


def _behind(msgs: Sequence[FeedMessage], batch: int) -> bool | None:
    """Whether a fetch says the projector is behind: True for a full batch, or a batch's worth
    still waiting on the server; False once the last message is the head (or none came); None
    (no change) in between: a partial fetch while catching up, as a buffer is drained mid-request,
    is no reason to restore the usual thresholds, which would run a young collection over every
    batch in flight."""
    if not msgs:
        return False
    waiting = msgs[-1].pending
    if len(msgs) >= batch or waiting >= batch:
        return True
    return False if waiting == 0 else None


def view_versions(directory: Path, name: str) -> list[tuple[int, Path]]:
    out = []
    for path in directory.glob(f"{name}.v*.db"):
        with contextlib.suppress(ValueError):
            out.append((int(path.stem.rsplit(".v", 1)[1]), path))
    return sorted(out)


def open_view(directory: Path, name: str) -> Path | None:
    """The file readers should use: the newest complete version, else the newest one."""
    import sqlite3

    versions = view_versions(directory, name)
    for _, path in reversed(versions):
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT value FROM _meta WHERE key = 'complete'").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            continue
        if row and row[0] == "1":
            return path
    return versions[-1][1] if versions else None


def _lock(directory: Path) -> IO[str]:
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / ".lock", "a+")  # noqa: SIM115 - held while the projector runs
    for wait in (0.01, 0.05, 0.2, None):  # a view command's probe holds it shared for an instant
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if wait is not None:
                time.sleep(wait)
    else:
        handle.close()
        raise ProjectorBusy(f"another projector is running on {directory} (tether up or tether projector); "
                            "stop it, or replay into another directory with --out") from None
    return handle


class Projector:
    """Runs projections from the EVENTS stream into SQLite views under ``directory``."""

    def __init__(self, bus: Bus, projections: Sequence[Projection], directory: Path, *, batch: int = 1000,
                 notify: bool = True, durable: str | None = PROJECTOR_DURABLE) -> None:
        self.bus = bus
        self.projections = list(projections)
        self.directory = directory
        self.batch = batch
        self.notify = notify
        self.durable = durable
        self.stores: dict[str, ViewStore] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tether-views")
        self._lock: IO[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._feed: PullFeed | None = None
        self._applied = asyncio.Condition()
        self.applied_seq = 0
        self.head_seq = 0
        self.events_applied = 0
        self.notices_dropped = 0
        """Change notices not sent because NATS was away (the views themselves are unaffected)."""
        self.stop_at: int | None = None
        self.stop_time: datetime | None = None
        self.on_progress: Callable[[int, int], None] | None = None
        self._done = asyncio.Event()
        types = [p.types for p in self.projections]
        self._wanted: frozenset[str] | None = None if any(t is None for t in types) else frozenset().union(
            *(t for t in types if t is not None))

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def start(self, *, lock: bool = True) -> Projector:
        if lock:
            self._lock = _lock(self.directory)

        def open_all() -> None:
            for proj in self.projections:
                self.stores[proj.name] = proj.open_store(view_path(self.directory, proj.name, proj.version))

        await self._run(open_all)
        start = min((s.seq for s in self.stores.values()), default=0) + 1
        self.applied_seq = start - 1
        info = await self.bus.js.stream_info(EVENTS_STREAM)
        self.head_seq = info.state.last_seq
        # The SQLite checkpoints are the truth: the consumer (re)starts right after them.
        self._feed = await PullFeed(self.bus.nc, self.bus.js, EVENTS_STREAM, EVENT_SUBJECTS, start_seq=start,
                                    durable=self.durable, batch=self.batch).start()
        self._task = asyncio.create_task(self._loop(), name="tether-projector")
        self._task.add_done_callback(_said_if_failed)
        log.info("projector: %d view(s) from seq %d (head %d)", len(self.stores), start, self.head_seq)
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        _catching_up(self, False)
        if self._feed is not None:
            with contextlib.suppress(Exception):
                await self._feed.close()
        def close_all() -> None:
            for store in self.stores.values():
                store.close()

        await self._run(close_all)
        self._pool.shutdown(wait=True)
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    async def __aenter__(self) -> Projector:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        """Until every view has applied the log up to ``seq`` (read-your-writes)."""
        async with self._applied:
            await asyncio.wait_for(self._applied.wait_for(lambda: self.applied_seq >= seq), timeout)

    async def catch_up(self, timeout: float = 30.0) -> int:
        """Until the views have applied everything in the log right now. Returns that seq."""
        head = (await self.bus.js.stream_info(EVENTS_STREAM)).state.last_seq
        await self.wait_for(head, timeout)
        return head

    def lag(self) -> int:
        return max(0, self.head_seq - self.applied_seq)

    async def _items(self, msgs: Sequence[FeedMessage]) -> list[Item]:
        """The messages as events, but for those of types no view here reads (told by their
        subject: no need to decode them). An event on a subject of another type is refused:
        the subject decides what is skipped, so the two must agree for every way of splitting
        the views into processes to give the same views."""
        out = []
        reader = self.bus.reader
        read = reader.read_block_now
        wanted = self._wanted
        for m in msgs:
            tokens = m.subject.split(".")
            said = _SUBJECT_TYPES.get((tokens[4], tokens[5])) if len(tokens) == 7 else None
            if said is not None and wanted is not None and said not in wanted:
                continue
            try:
                event = read(m.header_block, m.data)
                if not isinstance(event, Event):  # its data is in the object store
                    event = await reader.finish(event)
                if said is not None and event.type != said:
                    raise InvalidEvent(event.type, [{"loc": ("type",), "msg": f"published on {m.subject}, a subject "
                                                     f"of {said}"}], what="message")
            except EventError as exc:
                headers = m.headers or {}
                out.append(Item(m.seq, None, event_id=headers.get("ce-id") or headers.get("Nats-Msg-Id"),
                                error=str(exc), stream_time=m.time))
                continue
            out.append(Item(m.seq, event, event_id=event.id, stream_time=m.time))
        return out

    def _apply(self, items: Sequence[Item], through: int, at: float | None = None) -> dict[str, set[str]]:
        return {name: store.apply_batch(items, notify=self.notify, through=through, at=at)
                for name, store in self.stores.items()}

    def _finish(self) -> None:
        target = self.head_seq if self.stop_at is None else min(self.head_seq, self.stop_at)
        for name, store in self.stores.items():
            if not store.complete and store.seq >= target:
                store.mark_complete()
                for version, path in view_versions(self.directory, name):
                    if version != store.projection.version:
                        for suffix in ("", "-wal", "-shm"):
                            Path(f"{path}{suffix}").unlink(missing_ok=True)
                        log.info("view %s v%d is complete; removed v%d", name, store.projection.version, version)

    async def _loop(self) -> None:
        pending: asyncio.Future[dict[str, set[str]]] | None = None
        pending_last = 0
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():  # a cancel something below swallowed: stop anyway
                raise asyncio.CancelledError
            assert self._feed is not None
            try:
                # While a batch is being written, wait for the next messages (to decode them
                # meanwhile) only as long as the writing takes: a longer wait would hold that
                # batch's checkpoint, notifications and progress back until more came or the
                # wait timed out (the last batch of a catch-up, and every event once caught up,
                # would wait 0.5 s).
                writing = pending
                msgs = await self._feed.fetch(timeout=0.5, until=writing)
            except Exception as exc:
                log.warning("projector fetch failed: %r; retrying", exc)
                await asyncio.sleep(0.5)
                continue
            # (an empty fetch that ended as the last batch was written says nothing of the server)
            behind = _behind(msgs, self.batch) if msgs or writing is None else None
            if behind is not None:
                _catching_up(self, behind)
            self.head_seq = max(self.head_seq, self._feed.head_hint)
            fetched = bool(msgs)
            if self.stop_at is not None or self.stop_time is not None:
                msgs = [m for m in msgs if (self.stop_at is None or m.seq <= self.stop_at)
                        and (self.stop_time is None or m.time <= self.stop_time.timestamp())]
            items = await self._items(msgs) if msgs else []
            if pending is not None:
                changed = await pending
                await self._after(changed, pending_last)
                pending = None
            if msgs:
                through = msgs[-1].seq  # the checkpoint moves past messages no view here reads, too
                pending = asyncio.get_running_loop().run_in_executor(self._pool, self._apply, items, through,
                                                                     msgs[-1].time)
                pending_last = through
                continue
            if writing is not None and not fetched:  # the wait ended as the last batch was written: wait again
                continue
            # Nothing to write (idle, or all past stop_at): ask where the head is now.
            with contextlib.suppress(Exception):
                self.head_seq = (await self.bus.js.stream_info(EVENTS_STREAM)).state.last_seq
            if self.applied_seq >= self.head_seq or (self.stop_at is not None and self.applied_seq
                                                     >= self.stop_at) or fetched:
                await self._run(self._finish)
                self._done.set()

    async def _after(self, changed: dict[str, set[str]], last: int) -> None:
        self.events_applied += max(0, last - self.applied_seq)
        if last >= self.head_seq or (self.stop_at is not None and last >= self.stop_at):
            await self._run(self._finish)  # before anyone waiting for this seq is woken
            if self.stop_at is not None and last >= self.stop_at:
                self._done.set()
        async with self._applied:
            self.applied_seq = last
            self._applied.notify_all()
        if self.on_progress is not None:
            self.on_progress(last, self.head_seq)
        if not self.notify:
            return
        try:
            for view, keys in changed.items():
                if not keys:
                    continue
                if len(keys) > 200:
                    await self.bus.nc.publish(f"tether.proj.{view}._", json.dumps(
                        {"view": view, "keys": None, "count": len(keys), "seq": last}).encode())
                    continue
                for key in keys:
                    await self.bus.nc.publish(f"tether.proj.{view}.{encode_token(key)}", json.dumps(
                        {"view": view, "key": key, "seq": last}).encode())
        except Exception as exc:  # NATS reconnecting: a change notice is a hint, the view is already right
            self.notices_dropped += 1
            log.debug("projector: change notices up to seq %d not sent (%r)", last, exc)

    async def wait_done(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._done.wait(), timeout)


def _said_if_failed(task: asyncio.Task[None]) -> None:
    """A projector that stops folding says so, loudly: its views would fall behind the log in silence."""
    if not task.cancelled() and task.exception() is not None:
        log.error("projector stopped folding: %r; the views stay behind the log until it is restarted",
                  task.exception(), exc_info=task.exception())
