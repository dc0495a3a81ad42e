"""Rebuilding views from the start of the log: in this process (one :class:`Projector`) or with
the groups of views side by side in child processes (a :class:`ProjectorPool`).

Either way the views are built in a scratch directory beside the live ones, under the views
directory's lock, and swapped in once complete.
"""

from __future__ import annotations

import asyncio
import fcntl
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path

from tether.bus import Bus

from ._pool import ProjectorPool
from ._runner import Projector, _lock, view_versions
from ._store import Projection, view_path

__all__ = ["replay", "replay_in_processes"]


async def replay(bus: Bus, projections: Sequence[Projection], directory: Path, *, to_seq: int | None = None,
                 to_time: datetime | None = None, batch: int = 2000,
                 on_progress: Callable[[int, int], None] | None = None, processes: int = 1) -> dict[str, str]:
    """Rebuild views from the start of the log into ``directory`` (replacing what is there).

    With ``to_seq`` or ``to_time`` the views show the log as of that point. Only recorded
    outputs are folded: nothing calls a model or a provider. Returns each view's checksum.
    With ``processes`` > 1 the views are rebuilt in that many child processes side by side
    (:func:`~tether.projections.replay_in_processes`).
    """
    if processes > 1 and len(projections) > 1:
        return await replay_in_processes(bus, projections, directory, processes=processes, to_seq=to_seq,
                                         to_time=to_time, batch=batch, on_progress=on_progress)

    async def build_in(build: Path) -> dict[str, str]:
        projector = Projector(bus, projections, build, batch=batch, notify=False, durable=None)
        projector.stop_at = to_seq
        projector.stop_time = to_time
        projector.on_progress = on_progress
        await projector.start(lock=False)
        try:
            await projector.wait_done()
            sums = await projector._run(lambda: {n: s.checksum() for n, s in projector.stores.items()})
        finally:
            await projector.stop()
        return dict(sums)

    return await _rebuild(directory, projections, build_in)


async def replay_in_processes(bus: Bus, projections: Sequence[Projection], directory: Path, *, processes: int = 2,
                              to_seq: int | None = None, to_time: datetime | None = None, batch: int = 2000,
                              on_progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
    """:func:`replay`, the groups of views rebuilt side by side in child processes."""

    async def build_in(build: Path) -> dict[str, str]:
        pool = ProjectorPool(bus, projections, build, processes=processes, batch=batch, notify=False, durable=None)
        pool.on_progress = on_progress
        await pool.start(lock=False, stop_at=to_seq, stop_time=to_time, replay=True)
        try:
            return await pool.results()
        finally:
            await pool.stop()

    return await _rebuild(directory, projections, build_in)


async def _rebuild(directory: Path, projections: Sequence[Projection],
                   build_in: Callable[[Path], Awaitable[dict[str, str]]]) -> dict[str, str]:
    """Hold ``directory``'s lock, build the views in a scratch directory beside it, swap them in."""
    handle = _lock(directory)  # creates the directory
    build = directory / f".replay-{int(time.time() * 1000)}"
    try:
        sums = await build_in(build)
        await asyncio.to_thread(_swap_in, build, directory, projections)
        return sums
    finally:
        shutil.rmtree(build, ignore_errors=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _swap_in(build: Path, directory: Path, projections: Sequence[Projection]) -> None:
    """Replace each view in ``directory`` by its rebuilt file (a rename: atomic per view)."""
    for proj in projections:
        for _, old in view_versions(directory, proj.name):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{old}{suffix}").unlink(missing_ok=True)
        view_path(build, proj.name, proj.version).replace(view_path(directory, proj.name, proj.version))
