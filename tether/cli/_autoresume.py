"""``tether worker --resume-interrupted``: the worker resumes interrupted runs itself, every few seconds.

Each pass is ``tether resume --interrupted`` (the same code): the runs the traces view shows as interrupted,
each resumed under its lease, so two workers never resume one run at once. A failure is logged, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from tether.bus import Bus

from ._resume import interrupted_runs, resume_one

__all__ = ["AutoResume"]

_OUTCOME = {1: "failed: it stays as it is (interrupted, or finished with an error); this worker does not try it "
               "again, `tether resume {run}` does",
            2: "has no entry point it can call: it stays interrupted; this worker does not try it again",
            3: "needs attention: `tether runs resolve {run}`, then `tether resume {run}`"}


class AutoResume:
    """Resume what the views in ``views`` show as interrupted (no event for ``heartbeat_s``), every ``every_s``."""

    def __init__(self, bus: Bus, views: Path, *, every_s: float, heartbeat_s: float,
                 entrypoints: dict[str, str], named: str | None = None) -> None:
        self.bus = bus
        self.views = views
        self.every_s = every_s
        self.heartbeat_s = heartbeat_s
        self.entrypoints = entrypoints
        self.named = named
        self.given_up: set[str] = set()
        self._no_views_said = False

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop``; a resume under way finishes first."""
        while not stop.is_set():
            try:
                await self.once(stop)
            except Exception as exc:  # the worker's calls go on whatever a pass meets
                print(f"worker: resuming interrupted runs failed: {type(exc).__name__}: {exc}", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)

    async def once(self, stop: asyncio.Event | None = None) -> list[tuple[str, int]]:
        """One pass: each interrupted run resumed in turn; (run, exit status as `tether resume RUN`'s) each."""
        runs = interrupted_runs(self.views, self.heartbeat_s)
        if runs is None:
            if not self._no_views_said:
                print(f"worker: no traces view in {self.views}, so no interrupted runs to resume: run the projector "
                      "(`tether up` or `tether projector`) with this TETHER_HOME, or pass --resume-views DIR",
                      flush=True)
                self._no_views_said = True
            return []
        self._no_views_said = False
        done = []
        for run_id in runs:
            if stop is not None and stop.is_set():
                break
            if run_id in self.given_up:
                continue
            try:
                code = await resume_one(self.bus, run_id, self.named, self.entrypoints, skip_held=True,
                                        skip_finished=True)
            except Exception as exc:
                print(f"worker: resuming run {run_id} failed: {type(exc).__name__}: {exc}", flush=True)
                code = 1
            if code:
                self.given_up.add(run_id)
                print(f"worker: interrupted run {run_id} " + _OUTCOME.get(code, _OUTCOME[1]).format(run=run_id),
                      flush=True)
            done.append((run_id, code))
        return done
