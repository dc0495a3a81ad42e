"""Who runs a run right now: a lease per run in a KV bucket, so a run is resumed at most once at a time.

A holder creates the run's key (a create fails when someone holds it), renews it with a compare-and-set
well inside the bucket's TTL, and deletes it when done; a holder that dies stops renewing and the key
expires with the TTL, which is when someone else may take the run, unless the holder was a process on
this machine that is gone: then it is taken over at once (compare-and-set, so by one taker only).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import time
from typing import Any

from nats.js.errors import KeyWrongLastSequenceError

from tether.bus import Bus, open_bucket

__all__ = ["LEASE_BUCKET", "LEASE_TTL_S", "LeaseHeld", "RunLease"]

log = logging.getLogger("tether.adapters")
LEASE_BUCKET = "tether_run_leases"
LEASE_TTL_S = 30.0


class LeaseHeld(RuntimeError):
    """Someone else runs (or resumes) this run now."""

    def __init__(self, run_id: str, holder: Any) -> None:
        self.run_id = run_id
        self.holder = holder
        super().__init__(f"run {run_id} is being run by {holder} (its lease in KV bucket {LEASE_BUCKET!r} is "
                         f"renewed; it expires {LEASE_TTL_S:g} s after its holder stops): try again later")


def _gone(holder: Any) -> bool:
    """The holder was a process on this machine that no longer runs (it died: no need to wait for the TTL)."""
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, as another user
        return False
    return False


class RunLease:
    """The lease on one run, held and renewed on the bus's loop until :meth:`release`."""

    def __init__(self, kv: Any, key: str, run_id: str, revision: int) -> None:
        self._kv = kv
        self.key = key
        self.run_id = run_id
        self.revision = revision
        self._renewing: asyncio.Task[None] | None = None

    @classmethod
    async def take(cls, bus: Bus, run_id: str, *, ttl_s: float = LEASE_TTL_S) -> RunLease:
        """Take the run's lease and keep it renewed; :class:`LeaseHeld` when someone holds it."""
        kv = await open_bucket(bus.js, LEASE_BUCKET, ttl=ttl_s)
        key = "r" + base64.urlsafe_b64encode(run_id.encode()).decode().rstrip("=")  # a KV key: [A-Za-z0-9_-]
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        value = json.dumps(holder).encode()
        try:
            revision = await kv.create(key, value)
        except KeyWrongLastSequenceError:
            entry = None
            with contextlib.suppress(Exception):
                entry = await kv.get(key)
            held = json.loads(entry.value) if entry is not None and entry.value else {}
            if entry is None or not _gone(held):
                raise LeaseHeld(run_id, held or "?") from None
            try:  # its holder was a process on this machine that is gone: take it over now
                revision = await kv.update(key, value, last=entry.revision)
            except KeyWrongLastSequenceError:
                raise LeaseHeld(run_id, "another process, which took it over just now") from None
        lease = cls(kv, key, run_id, revision)
        lease._renewing = asyncio.get_running_loop().create_task(lease._renew(holder, ttl_s / 3))
        return lease

    async def _renew(self, holder: dict[str, Any], every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                self.revision = await self._kv.update(self.key, json.dumps(holder).encode(), last=self.revision)
            except Exception:  # lost (expired while the loop stalled, or taken): stop claiming it
                log.warning("tether: lost the lease on run %s", self.run_id)
                return

    async def release(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
        with contextlib.suppress(Exception):
            await self._kv.purge(self.key)
