"""Keeping the memory view current, in this process or by following another one.

The view lives in one directory (default ``TETHER_HOME/memory``). Whoever holds the
directory's lock *leads*: it reads ``memory.*`` events from EVENTS on its own filtered
consumer and applies each batch and its checkpoint in one SQLite transaction
(:class:`~tether.projections.ViewStore`). Everyone else *follows*: it reads the same
file and waits on its checkpoint. A follower whose leader went away takes the lock
and leads. So a process using ``tether.memory`` gets read-your-writes whether or not
``tether up`` runs, and the main projector can be the leader instead (give it
:class:`MemoryView` and point the memory clients at its views directory). With
``namespaces``, the leader follows those only (:mod:`._scopedfeed`), in a directory of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError

from tether.bus import EVENTS_STREAM, Bus, PermissionDenied
from tether.projections import Item, open_view, view_path
from tether.schemas import MemoryDeleted

from ._scopedfeed import ScopedFollow
from ._view import MemoryStore, MemoryView

__all__ = ["MEMORY_SUBJECTS", "MemoryStore", "ViewFeed", "last_memory_seq"]

log = logging.getLogger("tether.memory")

MEMORY_SUBJECTS = "tether.evt.*.*.memory.>"


async def last_memory_seq(bus: Bus, subject: str = MEMORY_SUBJECTS) -> int:
    """The stream sequence of the last memory event on ``subject`` (0 if none)."""
    try:
        msg = await bus.js.get_last_msg(EVENTS_STREAM, subject)
    except NotFoundError:
        return 0
    return int(msg.seq or 0)


def _try_lock(directory: Path) -> IO[str] | None:
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / ".lock", "a+")  # noqa: SIM115 - held while leading
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


class ViewFeed:
    """Leads or follows the memory view in ``directory``; see the module docstring."""

    def __init__(self, bus: Bus, view: MemoryView, directory: Path, *, batch: int = 1000,
                 poll_s: float = 0.004, namespaces: Sequence[str] | None = None) -> None:
        self.bus = bus
        self.view = view
        self.namespaces = None if namespaces is None else sorted(set(namespaces))
        if self.namespaces is not None:  # a view of some namespaces only: never mixed with a whole one
            scope = hashlib.sha256("\n".join(self.namespaces).encode()).hexdigest()[:16]
            directory = directory / f"namespaces-{scope}"
        self.directory = directory
        self.batch = batch
        self.poll_s = poll_s
        self.store: MemoryStore | None = None
        self.applied_seq = 0
        self.error: BaseException | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tether-memory-view")
        self._lock: IO[str] | None = None
        self._sub: Any = None
        self._scoped: ScopedFollow | None = None
        self._task: asyncio.Task[None] | None = None
        self._applied = asyncio.Condition()
        self._probe: sqlite3.Connection | None = None
        self._stopping = False
        self._stopped = False

    @property
    def leading(self) -> bool:
        return self._lock is not None

    @property
    def path(self) -> Path:
        """The view file readers should open."""
        if self.leading:
            return view_path(self.directory, MemoryView.name, MemoryView.version)
        return open_view(self.directory, MemoryView.name) or view_path(self.directory, MemoryView.name,
                                                                       MemoryView.version)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def start(self) -> ViewFeed:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not await self._lead():
            log.info("memory view in %s is fed by another process: following it", self.directory)
            self.applied_seq = self._checkpoint()
        return self

    async def _lead(self) -> bool:
        handle = _try_lock(self.directory)
        if handle is None:
            return False
        self._lock = handle
        try:
            self.store = await self._run(MemoryStore, self.view,
                                         view_path(self.directory, MemoryView.name, MemoryView.version))
            assert self.store is not None
            start = self.store.seq + 1
            self.applied_seq = self.store.seq
            if self.namespaces is not None:
                self._scoped = ScopedFollow(self.bus, self.namespaces)
                await self._scoped.start(start)
                self._task = asyncio.create_task(self._scoped_loop(), name="tether-memory-feed")
                log.info("memory view: leading from seq %d, namespaces %s", start, ", ".join(self.namespaces))
                return True
            await self._subscribe(start)
        except BaseException:
            await self._release()
            raise
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        self._task = asyncio.create_task(self._loop(), name="tether-memory-feed")
        log.info("memory view: leading from seq %d", start)
        return True

    async def _subscribe(self, start: int) -> None:
        """An ephemeral consumer of the memory subjects from ``start`` (the server deletes it after a
        minute without a pull: :meth:`_loop` makes another if that happens)."""
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=start, inactive_threshold=60.0)
        self._sub = await self._refused_or(self.bus.js.pull_subscribe(
            MEMORY_SUBJECTS, durable=None, stream=EVENTS_STREAM, config=config))

    async def _resubscribe(self) -> None:
        """The consumer is gone (deleted, or dropped by the server after a minute without a pull, as
        when applying a batch took that long on a loaded machine): another from the next sequence."""
        old = self._sub
        await self._subscribe(self.applied_seq + 1)  # if this fails, the next pull fails again and retries
        with contextlib.suppress(Exception):
            await old.unsubscribe()
        log.warning("memory feed: its consumer was gone; reading again from seq %d", self.applied_seq + 1)

    async def _refused_or(self, creating: Any) -> Any:
        """``creating`` (the consumer on every namespace), or at once ``PermissionDenied`` when the
        server refuses it (an agent confined by ``tether auth``), saying what it may do instead."""
        before = set(self.bus.denials)
        task = asyncio.ensure_future(creating)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.02)
                refused = [s for s in set(self.bus.denials) - before if s.startswith("$js.api.consumer.")]
                if refused:
                    raise PermissionDenied(
                        f"NATS refused the memory view's consumer on every namespace ({MEMORY_SUBJECTS}): this "
                        f"identity may not read them all ({self.bus.denials[refused[0]]}). An agent confined by "
                        "`tether auth` follows the namespaces it may read: AsyncMemory(bus, namespaces=[...])")
            return task.result()
        finally:
            if not task.done():
                task.cancel()

    async def _release(self) -> None:
        if self._scoped is not None:
            await self._scoped.stop()
            self._scoped = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self.store is not None:
            await self._run(self.store.close)
            self.store = None
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopping = True
        if self._task is not None:
            # nats-py may turn a cancellation inside fetch() into a timeout: hence the flag, and the retries.
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.5)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self._task.result()
            self._task = None
        await self._release()
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        self._stopped = True
        self._pool.shutdown(wait=True)

    # -- waiting -------------------------------------------------------------------------------

    def _checkpoint(self) -> int:
        """A follower's view of the leader's checkpoint (0 while there is no file)."""
        if self._probe is None:
            path = self.path
            if not path.exists():
                return 0
            self._probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        try:
            row = self._probe.execute("SELECT value FROM _meta WHERE key = 'seq'").fetchone()
        except sqlite3.Error:
            return 0
        return int(row[0]) if row else 0

    async def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        """Until the view has applied the log up to ``seq`` (read-your-writes)."""
        if self.error is not None:
            raise self.error
        if self.applied_seq >= seq:
            return
        if self.leading:
            if self._scoped is not None:
                self._scoped.arrived.set()  # a round now, not at the next idle tick
            async with self._applied:
                await asyncio.wait_for(self._applied.wait_for(
                    lambda: self.applied_seq >= seq or self.error is not None), timeout)
            if self.error is not None:
                raise self.error
            return
        deadline = time.monotonic() + timeout
        stalled_since = time.monotonic()
        last = self.applied_seq
        while True:
            self.applied_seq = max(self.applied_seq, self._checkpoint())
            if self.applied_seq >= seq:
                return
            now = time.monotonic()
            if self.applied_seq != last:
                last, stalled_since = self.applied_seq, now
            elif now - stalled_since > 1.0 and await self._lead():  # the leader is gone: take over
                await self.wait_for(seq, max(0.1, deadline - now))
                return
            if now > deadline:
                raise TimeoutError(f"the memory view in {self.directory} has not reached seq {seq} "
                                   f"(it is at {self.applied_seq}); is its projector running?")
            await asyncio.sleep(self.poll_s)

    async def head(self) -> int:
        """The log's position of the last memory event right now (what a read must wait for to see it)."""
        if self.namespaces is not None:  # may not read the last message of memory.>: the log's head will do
            return int((await self.bus.js.stream_info(EVENTS_STREAM)).state.last_seq)
        return await last_memory_seq(self.bus)

    async def catch_up(self, timeout: float = 30.0) -> int:
        """Until the view has every memory event in the log right now. Returns that seq."""
        head = await self.head()
        await self.wait_for(head, timeout)
        return head

    # -- leading -------------------------------------------------------------------------------

    async def _items(self, msgs: Sequence[Any]) -> list[Item]:
        out = []
        for m in msgs:
            meta = m.metadata
            result = await self.bus.reader.read_safe(m.subject, m.headers, m.data, meta.sequence.stream)
            out.append(Item(meta.sequence.stream, result.event, event_id=(m.headers or {}).get("Nats-Msg-Id"),
                            error=str(result.error) if result.error else None,
                            stream_time=meta.timestamp.timestamp() if isinstance(meta.timestamp, datetime)
                            else None))
        return out

    def _apply(self, items: Sequence[Item], through: int | None = None) -> None:
        assert self.store is not None
        failed = self.store.failed_count()
        self.store.apply_batch(items, through=through)
        if self.store.failed_count() > failed:
            row = self.store.db.execute("SELECT seq, error FROM _failed ORDER BY seq DESC LIMIT 1").fetchone()
            log.warning("memory view skipped %d event(s) it cannot fold (recorded in _failed), the last at seq %s: "
                        "%s", self.store.failed_count() - failed, row[0], row[1])
        if any(isinstance(i.event.data, MemoryDeleted) and i.event.data.reason == "erased"
               for i in items if i.event is not None):
            self.store.scrub()

    async def _finish(self, pending: asyncio.Future[None], last: int) -> bool:
        """Wait for an applied batch and wake the readers waiting for it; False if the view broke."""
        try:
            await pending
        except Exception as exc:
            log.error("memory view stopped: %s", exc)
            async with self._applied:
                self.error = exc
                self._applied.notify_all()
            return False
        async with self._applied:
            self.applied_seq = last
            self._applied.notify_all()
        return True

    async def _loop(self) -> None:
        """Fetch, decode, apply. While full batches keep coming (a backlog), decoding the next
        batch overlaps applying the previous one; a short batch is applied at once (latency)."""
        pending: asyncio.Future[None] | None = None
        pending_last = 0
        while not self._stopping:
            try:
                msgs = await self._sub.fetch(self.batch, timeout=0.5 if pending is None else 0.05)
            except (TimeoutError, asyncio.TimeoutError):  # noqa: UP041 - nats raises both
                msgs = []
            except asyncio.CancelledError:
                raise
            except (ServiceUnavailableError, NotFoundError) as exc:  # no consumer answers the pull
                if pending is not None:
                    if not await self._finish(pending, pending_last):
                        return
                    pending = None
                try:
                    await self._resubscribe()
                except Exception as again:
                    log.warning("memory feed fetch failed: %r, and a new consumer too: %r; retrying", exc, again)
                    await asyncio.sleep(0.5)
                continue
            except Exception as exc:
                log.warning("memory feed fetch failed: %r; retrying", exc)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                if pending is not None:
                    if not await self._finish(pending, pending_last):
                        return
                    pending = None
                continue
            items = await self._items(msgs)
            if pending is not None and not await self._finish(pending, pending_last):
                return
            pending = asyncio.get_running_loop().run_in_executor(self._pool, self._apply, items)
            pending_last = items[-1].seq
            if len(msgs) < self.batch:
                if not await self._finish(pending, pending_last):
                    return
                pending = None

    async def _scoped_loop(self) -> None:
        """Rounds of :class:`ScopedFollow`: as messages arrive, when a reader waits, else 4 a second."""
        scoped = self._scoped
        assert scoped is not None
        while not self._stopping:
            scoped.arrived.clear()
            try:
                msgs, head = await scoped.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("memory feed round failed: %r; following again from seq %d", exc, self.applied_seq)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await scoped.reset()
                continue
            if head > self.applied_seq:
                items = await self._items(msgs)
                pending = asyncio.get_running_loop().run_in_executor(self._pool, self._apply, items, head)
                if not await self._finish(pending, head):
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(scoped.arrived.wait(), 0.25)
