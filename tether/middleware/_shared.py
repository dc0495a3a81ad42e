"""State shared by every worker, in JetStream KV with compare-and-set.

* ``tether-breakers``: one circuit breaker per route. Every worker keeps a live copy
  (a KV watch), so a closed breaker costs no round trip; a breaker that is open or
  half-open is changed only by compare-and-set, so exactly one caller wins the
  half-open probe and each transition is published exactly once. Failures are counted
  per worker (streak and window) and the breaker opens for everyone when one worker's
  count trips it: healthy traffic writes nothing.
* ``tether-ratelimits``: requests and tokens per minute per provider, paced before
  the provider answers 429 (only for providers with limits configured).
* ``tether-spend``: spend and call counts per run, agent and tenant, and the
  reservations of the calls in flight (``_holds``), for budgets and the runaway guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from weakref import WeakValueDictionary

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tether.bus import Bus, open_bucket
from tether.schemas import CircuitClosed, CircuitHalfOpened, CircuitOpened, Event

from ._breaker import BreakerState, Transition, breaker_admit, breaker_record
from ._policy import BreakerPolicy, RateLimitPolicy
from ._ratelimit import RateState, rate_acquire

__all__ = ["BREAKERS_BUCKET", "RATES_BUCKET", "SPEND_BUCKET", "Breakers", "RateLimiter", "SpendBook", "kv_key",
           "open_bucket"]

log = logging.getLogger("tether.middleware")

BREAKERS_BUCKET = "tether-breakers"
RATES_BUCKET = "tether-ratelimits"
SPEND_BUCKET = "tether-spend"
T = TypeVar("T")


@functools.lru_cache(maxsize=4096)
def kv_key(value: str) -> str:
    """A KV-safe key for any id: readable prefix plus a hash, so distinct ids stay distinct
    (remembered: a route's key is looked up before and after every attempt)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", value)[:48]
    return f"{safe}.{hashlib.sha1(value.encode()).hexdigest()[:12]}"


Snapshot = tuple[bytes | None, int | None]
"""A key's value and revision as read earlier (``None, None``: no such key)."""


async def _cas(kv: KeyValue, key: str, change: Callable[[bytes | None], tuple[bytes | None, T]], *,
               locks: MutableMapping[str, asyncio.Lock], tries: int = 30, first: Snapshot | None = None,
               known: dict[str, Snapshot] | None = None) -> T:
    """Read, change, write with compare-and-set; retry on a concurrent writer.

    Writers of one key in this process take turns (``locks``, one lock per key), so a
    compare-and-set only ever races other processes, and those retries back off with
    jitter: many calls of one run in one worker must not fail each other's writes.
    ``first``, read ahead by the caller, stands in for the first read; if it is stale the
    write fails like any conflict and the next try reads afresh. A change that writes
    nothing (a refusal, a hold already gone) is decided again on a fresh read: a stale
    value may hold a reservation released since, or miss one taken since. ``known`` remembers what
    this process last wrote to each key: newer than ``first`` (read before our own write
    landed), or instead of a read, it is the first try's value; another writer since makes
    that try fail like any conflict.
    """
    lock = locks.get(key)
    if lock is None:
        lock = locks[key] = asyncio.Lock()
    async with lock:
        if known is not None:
            mine = known.get(key)
            if mine is not None and (first is None or first[1] is None or (mine[1] or 0) > first[1]):
                first = mine
        for n in range(tries):
            fresh = not (n == 0 and first is not None)
            if not fresh:
                assert first is not None
                current, revision = first
            else:
                try:
                    entry = await kv.get(key)
                    current, revision = entry.value, entry.revision
                except KeyNotFoundError:
                    current, revision = None, None
            new, result = change(current)
            if new is None or new == current:
                if fresh:
                    return result
                continue  # a decision to write nothing is only taken on a fresh read
            try:
                if revision is None:
                    written = await kv.create(key, new)
                else:
                    written = await kv.update(key, new, last=revision)
            except KeyWrongLastSequenceError:
                if known is not None:
                    known.pop(key, None)
                if n > 0 or first is None:  # a first try on a read-ahead value retries at once
                    await asyncio.sleep(random.uniform(0.0, min(0.05, 0.001 * 2**n)))
                continue
            if known is not None:
                if len(known) >= _KNOWN_MAX:
                    known.clear()
                known[key] = (new, written)
            return result
    raise RuntimeError(f"compare-and-set on {key} kept conflicting")


_KNOWN_MAX = 10_000  # keys whose last write a process remembers (then it starts afresh)

_EVENTS = {"opened": CircuitOpened, "half_opened": CircuitHalfOpened, "closed": CircuitClosed}


@dataclass
class Breakers:
    """Circuit breakers per route, shared through KV, with transitions as events."""

    bus: Bus
    kv: KeyValue
    shared: dict[str, BreakerState] = field(default_factory=dict)
    local: dict[str, BreakerState] = field(default_factory=dict)
    _watch: asyncio.Task[None] | None = None
    locks: WeakValueDictionary[str, asyncio.Lock] = field(default_factory=WeakValueDictionary, repr=False)
    _local_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """``local`` is folded into from the callers' threads (:meth:`record_closed`) and the bus's loop."""

    @classmethod
    async def open(cls, bus: Bus) -> Breakers:
        kv = await open_bucket(bus.js, BREAKERS_BUCKET, replicas=bus.config.replicas)
        self = cls(bus, kv)
        watcher = await kv.watchall()
        self._watch = asyncio.create_task(self._follow(watcher), name="tether-breaker-watch")
        return self

    async def _follow(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None or entry.value is None:
                continue
            with contextlib.suppress(Exception):
                self.shared[entry.key] = BreakerState.from_json(entry.value)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch

    def state(self, route: str) -> BreakerState:
        return self.shared.get(kv_key(route), BreakerState())

    async def admit(self, route: str, policy: BreakerPolicy, *, call_id: str, now: float | None = None) -> bool:
        if not policy.enabled or self.state(route).state == "closed":
            return True
        at = time.time() if now is None else now

        def change(raw: bytes | None) -> tuple[bytes | None, tuple[bool, Transition | None]]:
            state = BreakerState.from_json(raw) if raw else BreakerState()
            allowed, new, transition = breaker_admit(policy, state, now=at, call_id=call_id)
            return (new.to_json() if new != state else None), (allowed, transition)

        allowed, transition = await _cas(self.kv, kv_key(route), change, locks=self.locks)
        await self._announce(route, transition, policy, probe=call_id)
        return allowed

    def record_closed(self, route: str, policy: BreakerPolicy, *, ok: bool, counts: bool, call_id: str) -> bool:
        """:meth:`record` in the caller, without I/O, when it has nothing to write: the breaker is
        closed and this outcome does not trip it (an agent's every call, while its provider is
        healthy). False when :meth:`record` has work to do (and nothing was counted here)."""
        if not policy.enabled:
            return True
        if self.state(route).state != "closed":
            return False
        with self._local_lock:
            local = self.local.get(route, BreakerState())
            new, transition = breaker_record(policy, local, ok=ok, counts=counts, now=time.time(), call_id=call_id)
            if transition is not None:
                return False
            self.local[route] = new
        return True

    async def record(self, route: str, policy: BreakerPolicy, *, ok: bool, counts: bool, call_id: str,
                     now: float | None = None) -> None:
        if not policy.enabled:
            return
        at = time.time() if now is None else now
        shared = self.state(route)
        if shared.state != "closed":
            with self._local_lock:
                self.local.pop(route, None)  # counting starts afresh once it closes again

            def settle(raw: bytes | None) -> tuple[bytes | None, Transition | None]:
                # the stored state, not the watched copy: that may not show yet that this
                # call was just admitted as the probe
                state = BreakerState.from_json(raw) if raw else BreakerState()
                if state.state == "closed" or state.probe != call_id:
                    return None, None  # only the probe's outcome moves an open or half-open breaker
                new, transition = breaker_record(policy, state, ok=ok, counts=counts, now=at, call_id=call_id)
                return (new.to_json() if new != state else None), transition

            await self._announce(route, await _cas(self.kv, kv_key(route), settle, locks=self.locks), policy)
            return
        with self._local_lock:
            local = self.local.get(route, BreakerState())
            new, transition = breaker_record(policy, local, ok=ok, counts=counts, now=at, call_id=call_id)
            self.local[route] = new if transition is None else BreakerState()
        if transition is not None and transition.to == "opened":

            def trip(raw: bytes | None) -> tuple[bytes | None, Transition | None]:
                state = BreakerState.from_json(raw) if raw else BreakerState()
                if state.state != "closed":
                    return None, None  # another worker opened it first: one event only
                return new.to_json(), transition

            await self._announce(route, await _cas(self.kv, kv_key(route), trip, locks=self.locks), policy)

    async def _announce(self, route: str, transition: Transition | None, policy: BreakerPolicy,
                        probe: str | None = None) -> None:
        if transition is None:
            return
        if transition.to == "opened":
            payload: Any = CircuitOpened(route=route, reason=transition.reason, failures=transition.failures,
                                         failure_rate=transition.failure_rate, cooldown_s=policy.cooldown_s)
        elif transition.to == "half_opened":
            payload = CircuitHalfOpened(route=route, probe_call_id=probe)
        else:
            payload = CircuitClosed(route=route, open_for_s=transition.open_for_s)
        log.warning("circuit %s %s: %s", route, transition.to, transition.reason)
        await self.bus.emit(Event.of(payload, source="urn:tether:worker"))


@dataclass
class RateLimiter:
    """Requests and tokens per minute per provider, shared by all workers."""

    kv: KeyValue
    locks: WeakValueDictionary[str, asyncio.Lock] = field(default_factory=WeakValueDictionary, repr=False)

    @classmethod
    async def open(cls, bus: Bus) -> RateLimiter:
        return cls(await open_bucket(bus.js, RATES_BUCKET, replicas=bus.config.replicas))

    async def acquire(self, provider: str, policy: RateLimitPolicy, *, tokens: int,
                      now: float | None = None) -> float:
        """0 when the call may go now (and is counted); else seconds to wait first."""
        if policy.requests_per_minute is None and policy.tokens_per_minute is None:
            return 0.0
        at = time.time() if now is None else now

        def change(raw: bytes | None) -> tuple[bytes | None, float]:
            state = RateState.from_json(raw) if raw else None
            wait, new = rate_acquire(policy, state, now=at, tokens=tokens)
            return (None if wait > 0 else new.to_json()), wait

        return await _cas(self.kv, kv_key(provider), change, locks=self.locks)


@dataclass
class SpendBook:
    """Spend, tokens and calls per run, agent and tenant; fingerprints per run."""

    kv: KeyValue
    locks: WeakValueDictionary[str, asyncio.Lock] = field(default_factory=WeakValueDictionary, repr=False)
    known: dict[str, Snapshot] = field(default_factory=dict, repr=False)

    @classmethod
    async def open(cls, bus: Bus) -> SpendBook:
        return cls(await open_bucket(bus.js, SPEND_BUCKET, replicas=bus.config.replicas))

    async def get(self, scope: str, scope_id: str) -> dict[str, Any]:
        try:
            entry = await self.kv.get(kv_key(f"{scope}/{scope_id}"))
        except KeyNotFoundError:
            return {}
        return json.loads(entry.value or b"{}")  # type: ignore[no-any-return]

    async def snapshot(self, scope: str, scope_id: str) -> Snapshot:
        """The record as it is now, for :meth:`update`: read alongside other reads, it saves
        the update a round trip of its own (a stale one costs only that round trip back)."""
        try:
            entry = await self.kv.get(kv_key(f"{scope}/{scope_id}"))
        except KeyNotFoundError:
            return None, None
        return entry.value, entry.revision

    async def update(self, scope: str, scope_id: str, fn: Callable[[dict[str, Any]], T], *,
                     snapshot: Snapshot | None = None) -> T:
        def change(raw: bytes | None) -> tuple[bytes | None, T]:
            doc = json.loads(raw) if raw else {}
            result = fn(doc)
            return json.dumps(doc, separators=(",", ":")).encode(), result

        return await _cas(self.kv, kv_key(f"{scope}/{scope_id}"), change, locks=self.locks, first=snapshot,
                          known=self.known)

