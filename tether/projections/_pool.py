"""Views folded in several processes: one :class:`Projector` per group of views, each in a
child process with its own consumer, so the folds use every core."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import fcntl
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from tether._loop import run as run_loop
from tether.bus import Bus, BusConfig, connect

from ._runner import PROJECTOR_DURABLE, Projector, _lock
from ._store import Projection

__all__ = ["ProjectorPool", "default_processes", "partition"]

log = logging.getLogger("tether.projections")

_START_TIMEOUT_S = 60.0
_RESTART_DELAY_S = 1.0  # then doubling, up to _RESTART_MAX_DELAY_S, for a process that keeps dying
_RESTART_MAX_DELAY_S = 30.0
_HEALTHY_S = 60.0


def default_processes() -> int:
    """Processes to fold the views in when not told: two where there are two cores or more."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def partition(projections: Sequence[Projection], processes: int) -> list[list[Projection]]:
    """Groups of views of about equal cost (each view's ``weight``), heaviest first."""
    bins: list[tuple[float, list[Projection]]] = [(0.0, []) for _ in range(max(1, min(processes, len(projections))))]
    for proj in sorted(projections, key=lambda p: -p.weight):
        i = min(range(len(bins)), key=lambda k: bins[k][0])
        bins[i] = (bins[i][0] + proj.weight, [*bins[i][1], proj])
    return [group for _, group in bins if group]


# -- the child ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    config: BusConfig
    projections: list[Projection]
    directory: Path
    durable: str | None
    batch: int
    notify: bool
    stop_at: int | None = None
    stop_time: datetime | None = None
    replay: bool = False


def _child_main(fd: int) -> None:
    """The view process (``python -m tether.projections._child FD``): its job arrives on FD."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID`: where a stuck view process is, on stderr
    conn = Connection(fd)
    job = conn.recv()
    try:
        run_loop(_child(conn, job))  # uvloop, as the CLI runs
    except BaseException as exc:  # the parent must hear why, whatever it was
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None


async def _child(conn: Connection, job: _Job) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def from_parent() -> None:
        with contextlib.suppress(EOFError, OSError):  # EOF: the parent is gone
            conn.recv()  # "stop"
        loop.remove_reader(conn.fileno())
        stop.set()

    loop.add_reader(conn.fileno(), from_parent)
    bus = await connect(config=job.config)
    gc.collect()
    gc.freeze()  # a process of its own: what import and connect built is never garbage; stop walking it
    try:
        projector = Projector(bus, job.projections, job.directory, batch=job.batch, notify=job.notify,
                              durable=job.durable)
        projector.stop_at = job.stop_at
        projector.stop_time = job.stop_time
        projector.on_progress = lambda seq, head: conn.send(("applied", seq, head))
        await projector.start(lock=False)
        try:
            conn.send(("started", projector.applied_seq, projector.head_seq))
            if job.replay:
                done = asyncio.create_task(projector.wait_done())
                stopped = asyncio.create_task(stop.wait())
                await asyncio.wait([done, stopped], return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if done.done():
                    sums = await projector._run(lambda: {n: s.checksum() for n, s in projector.stores.items()})
                    conn.send(("done", sums))
                else:
                    done.cancel()
            else:
                # Until told to stop, or until the fold itself dies (a view's database refusing
                # writes, say): then exit with the reason, and the parent starts this process again.
                folding = projector._task
                stopped = asyncio.create_task(stop.wait())
                waiting: list[asyncio.Future[Any]] = [stopped, *([folding] if folding is not None else [])]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if folding is not None and folding.done() and not folding.cancelled() and folding.exception():
                    raise RuntimeError(f"the fold stopped: {folding.exception()!r}")
        finally:
            await projector.stop()
    finally:
        await bus.close()


# -- the parent ---------------------------------------------------------------------------------


@dataclass
class _Child:
    index: int
    job: _Job
    process: Any = None
    conn: Connection | None = None
    applied: int = 0
    head: int = 0
    started: asyncio.Future[None] | None = None
    done: asyncio.Future[dict[str, str]] | None = None
    error: str | None = None
    restarts: int = 0
    spawned: float = 0.0
    last_error: str | None = None
    names: list[str] = field(default_factory=list)


class ProjectorPool:
    """The views in ``processes`` child processes, one :class:`Projector` per group.

    Every view already keeps its own checkpoint in its own SQLite file, so views need nothing
    from each other: a group is just the views one child owns. The parent holds the views
    directory's lock, starts the children (fresh interpreters running this module, handed
    their job over a socket: nothing of the parent's event loop, connections or ``__main__``
    leaks into them), follows their progress over a pipe, and stops them; a child
    that dies is started again from its views' checkpoints (live), or fails the rebuild (replay).
    A child whose parent is gone (SIGKILLed, say) notices the pipe closing and stops.

    :class:`ProjectorPool` answers what :class:`Projector` does for the CLI (``start``,
    ``stop``, ``wait_for``, ``catch_up``, ``applied_seq``, ``head_seq``, the view names);
    :func:`replay_in_processes` is :func:`replay` with the groups rebuilt side by side.
    """

    def __init__(self, bus: Bus, projections: Sequence[Projection], directory: Path, *, processes: int = 2,
                 batch: int = 1000, notify: bool = True, durable: str | None = PROJECTOR_DURABLE) -> None:
        self.bus = bus
        self.projections = list(projections)
        self.directory = directory
        self.groups = partition(self.projections, processes)
        self.batch = batch
        self.notify = notify
        self.durable = durable
        self.on_progress: Callable[[int, int], None] | None = None
        self._children: list[_Child] = []
        self._lock: IO[str] | None = None
        self._changed = asyncio.Condition()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def stores(self) -> list[str]:
        """The views' names (what :attr:`Projector.stores` is keyed by)."""
        return [p.name for group in self.groups for p in group]

    @property
    def applied_seq(self) -> int:
        return min((c.applied for c in self._children), default=0)

    @property
    def head_seq(self) -> int:
        return max((c.head for c in self._children), default=0)

    def lag(self) -> int:
        return max(0, self.head_seq - self.applied_seq)

    def _job(self, i: int, group: list[Projection], **extra: Any) -> _Job:
        config = self.bus.config.with_(url=self.bus.url, embedded=False, provision=False)
        durable = f"{self.durable}-{i}" if self.durable else None
        return _Job(config, group, self.directory, durable, self.batch, self.notify, **extra)

    async def start(self, *, lock: bool = True, **extra: Any) -> ProjectorPool:
        if lock:
            self._lock = _lock(self.directory)
        if self.durable:  # a single-process projector's consumer, left from an earlier run
            with contextlib.suppress(Exception):
                await self.bus.js.delete_consumer("EVENTS", self.durable)
        self._children = [_Child(i, self._job(i, g, **extra), names=[p.name for p in g])
                          for i, g in enumerate(self.groups)]
        try:
            for child in self._children:
                self._spawn(child)
            await asyncio.wait_for(asyncio.gather(*(c.started for c in self._children if c.started)),
                                   _START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise
        if not extra.get("replay"):
            self._supervisor = asyncio.create_task(self._supervise(), name="tether-views-supervisor")
        log.info("projector: %d view process(es): %s", len(self._children),
                 "; ".join(", ".join(c.names) for c in self._children))
        return self

    def _spawn(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        parent_sock, child_sock = socket.socketpair()
        with child_sock:
            process = subprocess.Popen([sys.executable, "-m", "tether.projections._child", str(child_sock.fileno())],
                                       pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL)
        parent_end = Connection(parent_sock.detach())
        parent_end.send(child.job)
        child.process, child.conn, child.error = process, parent_end, None
        child.spawned = time.monotonic()
        child.started = loop.create_future()
        child.done = loop.create_future()
        loop.add_reader(parent_end.fileno(), self._receive, child)

    def _receive(self, child: _Child) -> None:
        conn = child.conn
        assert conn is not None
        try:
            message = conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()
            child.conn = None
            failure = RuntimeError(f"view process {child.index} ({', '.join(child.names)}) exited"
                                   + (f": {child.error}" if child.error else ""))
            for fut in (child.started, child.done):
                if fut is not None and not fut.done():
                    fut.set_exception(failure)
                    fut.exception()  # retrieved here; whoever awaits it sees it too
            asyncio.get_running_loop().create_task(self._notify())
            return
        kind = message[0]
        if kind in ("started", "applied"):
            child.applied, child.head = message[1], max(child.head, message[2])
            if kind == "started" and child.started is not None and not child.started.done():
                child.started.set_result(None)
            if self.on_progress is not None and kind == "applied":
                self.on_progress(self.applied_seq, self.head_seq)
            asyncio.get_running_loop().create_task(self._notify())
        elif kind == "done" and child.done is not None and not child.done.done():
            child.done.set_result(message[1])
        elif kind == "error":
            child.error = child.last_error = message[1]
            log.error("view process %d (%s) failed: %s", child.index, ", ".join(child.names), message[1])

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _supervise(self) -> None:
        """Start a child again if it dies (its views resume from their checkpoints)."""
        while not self._stopping:
            await asyncio.sleep(0.5)
            for child in self._children:
                if child.conn is None and not self._stopping:
                    if time.monotonic() - child.spawned > _HEALTHY_S:
                        child.restarts = 0  # it ran well for a while: this is a new failure, not a loop
                    child.restarts += 1
                    delay = min(_RESTART_MAX_DELAY_S, _RESTART_DELAY_S * 2 ** min(child.restarts - 1, 10))
                    log.warning("view process %d (%s) is gone%s; starting it again in %.0fs (restart %d)",
                                child.index, ", ".join(child.names), f" ({child.error})" if child.error else "",
                                delay, child.restarts)
                    await asyncio.sleep(delay)
                    if not self._stopping:
                        self._spawn(child)

    async def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        """Until every view has applied the log up to ``seq``."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.applied_seq >= seq), timeout)

    async def catch_up(self, timeout: float = 30.0) -> int:
        head = (await self.bus.js.stream_info("EVENTS")).state.last_seq
        await self.wait_for(head, timeout)
        return int(head)

    async def results(self, timeout: float | None = None) -> dict[str, str]:
        """(Replay) each view's checksum, once every child has rebuilt its views."""
        sums: dict[str, str] = {}
        for part in await asyncio.wait_for(asyncio.gather(*(c.done for c in self._children if c.done)), timeout):
            sums.update(part)
        return sums

    async def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        loop = asyncio.get_running_loop()
        for child in self._children:
            if child.conn is not None:
                with contextlib.suppress(Exception):
                    child.conn.send("stop")
        deadline = time.monotonic() + timeout
        for child in self._children:
            process = child.process
            if process is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                log.warning("view process %d did not stop in %.0fs; killing it", child.index, timeout)
                process.kill()
                await asyncio.to_thread(process.wait, 5)
            if child.conn is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(child.conn.fileno())
                child.conn.close()
                child.conn = None
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    async def __aenter__(self) -> ProjectorPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
