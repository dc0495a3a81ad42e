"""The runs every gateway on one bus follows, shared: one key per run in a KV bucket.

Each change to a run (a call began or ended, an answer asked for tools, a request carried
their results, the agent reported something, the run went idle) is a compare-and-set on the
run's key, deciding with the pure functions of ``_runbook``; whoever wins a transition (the
run's end, a tool span) publishes its events, under ids every gateway derives alike. On a
call's path the gateway waits only when it has not seen the run running (its first call
here, or after an end); everything else happens beside the calls. Each gateway follows the
bucket's new writes (a consumer from now on, not a KV watch that would first deliver every run)
to keep its copy of the runs it serves fresh: a decision to write nothing is taken on that
copy, without a read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from weakref import WeakValueDictionary

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tether.bus import TRANSIENT_PUBLISH_ERRORS, Bus, open_bucket, until_answered

from ._runbook import Followed, Out, begin, forget_early, idle, touch

__all__ = ["RUNS_BUCKET", "RUNS_TTL_S", "RunStore", "run_key"]

log = logging.getLogger("tether.gateway")
RUNS_BUCKET = "tether-gateway-runs"
RUNS_TTL_S = 86_400.0
"""A run no gateway changed for this long is forgotten (a later call starts it afresh)."""
TRANSIENT_FOR_S = 30.0
"""How long a read of a run is asked again while its bucket has no leader (a cluster node restarting), and a
write that conflicts while reads answer an old revision."""
Decide = Callable[[Followed | None], tuple[Followed | None, list[Out]]]


def run_key(run_id: str) -> str:
    """The run's key in :data:`RUNS_BUCKET` (any run id: KV keys allow few characters)."""
    return "run." + hashlib.sha256(run_id.encode()).hexdigest()[:40]


@dataclass(slots=True)
class _Known:
    """A run as this gateway last read or wrote it."""

    raw: bytes
    revision: int
    running: bool
    last_at: float


class RunStore:
    """The shared runs, with what this gateway last saw of each (the newest ``limit``) and
    its own calls in flight per run."""

    def __init__(self, bus: Bus, *, idle_s: float, limit: int = 50_000) -> None:
        self.bus = bus
        self.idle_s = idle_s
        self.touch_s = min(1.0, idle_s / 100)
        """``last_at`` is written when a call moves it by more than this (idle ends are that precise)."""
        self.limit = limit
        self.kv: KeyValue | None = None
        self.known: OrderedDict[str, _Known] = OrderedDict()
        self.busy: dict[str, int] = {}
        self._runs_of: dict[str, str] = {}  # key -> run id, for the runs in ``known``
        self._following: Any = None
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    async def open(self) -> RunStore:
        if self.kv is None:
            self.kv = await open_bucket(self.bus.js, RUNS_BUCKET, replicas=self.bus.config.replicas, ttl=RUNS_TTL_S)
            try:
                self._following = await self.bus.js.subscribe(
                    f"$KV.{RUNS_BUCKET}.run.>", stream=f"KV_{RUNS_BUCKET}", cb=self._written, ordered_consumer=True,
                    deliver_policy=DeliverPolicy.NEW)
            except Exception as exc:  # every decision then reads the run first
                log.warning("cannot follow the gateways' writes to %s (%s): reading each run before deciding",
                            RUNS_BUCKET, exc)
        return self

    async def aclose(self) -> None:
        following, self._following = self._following, None
        if following is not None:
            with contextlib.suppress(Exception):
                await following.unsubscribe()

    async def _written(self, msg: Msg) -> None:
        """Another gateway's write (or ours) to a run this gateway knows: its copy moves on."""
        run_id = self._runs_of.get(msg.subject.removeprefix(f"$KV.{RUNS_BUCKET}."))
        if run_id is None:
            return
        seen = self.known.get(run_id)
        revision = msg.metadata.sequence.stream
        if seen is not None and seen.revision >= revision:
            return
        if not msg.data or (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            self.known.pop(run_id, None)
            return
        with contextlib.suppress(Exception):
            run = Followed.from_json(msg.data)
            self.known[run_id] = _Known(msg.data, revision, run.running, run.last_at)

    # -- on a call's path ----------------------------------------------------------------------

    async def call_started(self, run_id: str, agent: str | None, trace_id: str, traceparent: str | None, now: float,
                           *, derived: bool) -> list[Out]:
        """A call of the run came here: what to publish before its own events (``run.started``
        when it starts or resumes). No wait when this gateway last saw the run running."""
        self.busy[run_id] = self.busy.get(run_id, 0) + 1
        seen = self.known.get(run_id)
        if seen is not None and seen.running:
            return []

        def start(run: Followed | None) -> tuple[Followed | None, list[Out]]:
            return begin(run, run_id, agent, trace_id, traceparent, now, derived=derived, touch_s=self.touch_s)

        try:
            return await asyncio.wait_for(self.change(run_id, start), 5.0)
        except Exception as exc:  # KV unreachable: the call goes on; its run.started is derived, sent once
            log.warning("could not read run %s from KV (%s): following it here only", run_id, exc)
            return begin(None, run_id, agent, trace_id, traceparent, now, derived=derived)[1]

    def call_done(self, run_id: str) -> None:
        count = self.busy.get(run_id, 0) - 1
        if count > 0:
            self.busy[run_id] = count
        else:
            self.busy.pop(run_id, None)

    # -- beside the calls ----------------------------------------------------------------------

    async def change(self, run_id: str, decide: Decide) -> list[Out]:
        """Decide on the run's current state and write the result with compare-and-set; the
        events of the decision that was written. A decision to write nothing is taken on a
        fresh read only."""
        kv = self.kv
        assert kv is not None, "open() the store first"
        key = run_key(run_id)
        lock = self._locks.get(run_id)
        if lock is None:
            lock = self._locks[run_id] = asyncio.Lock()
        async with lock:  # this gateway's writers of a run take turns: a conflict is another gateway's
            seen = self.known.get(run_id)
            # Conflicts are asked again for as long as a read is (a node restarting: a lagging replica's reads
            # answer an old revision until it has caught up), at least 30 times.
            deadline = time.monotonic() + TRANSIENT_FOR_S
            n = 0
            while n < 30 or time.monotonic() < deadline:
                n += 1
                fresh = n > 1 or seen is None
                if fresh:
                    raw, revision = await self._read(kv, key)
                else:
                    assert seen is not None
                    raw, revision = seen.raw, seen.revision
                run = Followed.from_json(raw) if raw else None
                new, out = decide(run)
                written = new.to_json() if new is not None else None
                if written is None or written == raw:
                    if not fresh and self._following is None:
                        continue  # without following the writes, "nothing to write" is decided on a read
                    if raw is not None and revision is not None and run is not None:
                        self._remember(run_id, raw, revision, run)
                    return out
                try:
                    if revision is None:
                        revision = await kv.create(key, written)
                    else:
                        revision = await kv.update(key, written, last=revision)
                except KeyWrongLastSequenceError:
                    await asyncio.sleep(random.uniform(0.0, min(0.25, 0.001 * 2**n)))
                    continue
                except TRANSIENT_PUBLISH_ERRORS:
                    # No answer (a cluster electing the bucket's leader): the write may have landed.
                    # If the run now holds exactly what was written, it did; otherwise decide again.
                    raw, landed = await self._read(kv, key)
                    if raw != written or landed is None:
                        continue
                    revision = landed
                assert new is not None
                self._remember(run_id, written, revision, new)
                return out
        raise RuntimeError(f"compare-and-set on run {run_id} kept conflicting")

    async def _read(self, kv: KeyValue, key: str) -> tuple[bytes | None, int | None]:
        """The key's value and revision (``None``, ``None`` if absent), asked again while the bucket has
        no leader to answer (a node restarting), for up to :data:`TRANSIENT_FOR_S` seconds."""

        async def get() -> tuple[bytes | None, int | None]:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                return None, None
            return entry.value, entry.revision

        return await until_answered(get, for_s=TRANSIENT_FOR_S)

    async def apply(self, run_id: str, steps: list[Callable[[Followed], list[Out]]]) -> list[Out]:
        """Apply ``steps`` in order to a run (none for a run no gateway has started)."""

        def decide(run: Followed | None) -> tuple[Followed | None, list[Out]]:
            if run is None:
                return None, []
            out: list[Out] = []
            for step in steps:
                out.extend(step(run))
            forget_early(run, run.last_at)
            return run, out

        return await self.change(run_id, decide)

    async def sweep(self, now: float, every: float) -> list[Out]:
        """Keep the runs with calls in flight here fresh (another gateway must not end them),
        and end the runs that look idle (on a fresh read: another gateway may have seen a call)."""
        out: list[Out] = []
        for run_id in list(self.busy):
            out.extend(await self.apply(run_id, [lambda run: _touched(run, now, every / 2)]))
        for run_id, seen in list(self.known.items()):
            if seen.running and run_id not in self.busy and now - seen.last_at >= self.idle_s:
                out.extend(await self.apply(run_id, [lambda run: idle(run, now, self.idle_s)]))
        return out

    async def read(self, run_id: str) -> Followed | None:
        """The run as the bucket holds it now."""
        assert self.kv is not None
        try:
            entry = await self.kv.get(run_key(run_id))
        except KeyNotFoundError:
            return None
        return Followed.from_json(entry.value) if entry.value else None

    def followed(self) -> list[Followed]:
        """The runs this gateway saw, newest first, as it last saw them."""
        return [Followed.from_json(k.raw) for k in reversed(self.known.values())]

    def _remember(self, run_id: str, raw: bytes, revision: int, run: Followed) -> None:
        seen = self.known.get(run_id)
        if seen is not None and seen.revision > revision:
            return  # the follower brought a newer one meanwhile
        self.known[run_id] = _Known(raw, revision, run.running, run.last_at)
        self.known.move_to_end(run_id)
        self._runs_of[run_key(run_id)] = run_id
        if len(self.known) > self.limit:
            gone, _ = self.known.popitem(last=False)
            self._runs_of.pop(run_key(gone), None)


def _touched(run: Followed, now: float, touch_s: float) -> list[Any]:
    if run.running:
        touch(run, now, touch_s)
    return []
