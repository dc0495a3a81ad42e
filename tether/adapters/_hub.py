"""Where adapters publish: a bus, the event loop it lives on, and the call engine on it.

The bus is asyncio and belongs to one loop. Adapters are called from that loop (an async
client on the bus's loop), from another loop, or from plain threads (sync clients, sync
tools). A :class:`Hub` makes all three work without ever blocking on the log:

* events go through one queue per hub, pumped by a task on the bus's loop: ``emit`` is
  non-blocking and thread-safe, and events leave in the order they were emitted;
* the policy engine's few awaited steps (breaker gate when not closed, budgets, dead
  letters) run on the bus's loop: awaited directly from it, through
  ``run_coroutine_threadsafe`` from anywhere else;
* with no bus given, tether keeps **one background thread per process** running its own
  loop and a bus connected with :func:`tether.connect` (``TETHER_NATS_URL``, else the
  local server): sync clients then never wait on an event loop they do not own.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from tether.bus import Bus, connect
from tether.middleware import (
    Breakers,
    CallEngine,
    DurableCalls,
    PolicySet,
    RateLimiter,
    RunawayTracker,
    SpendBook,
    ToolRegistry,
    load_worker_config,
)
from tether.schemas import Event

from ._asynciopriv import loop_thread_id, others_ready

__all__ = ["Hub", "LoopThreadError", "background_hub", "background_hub_nowait", "default_policies", "flush",
           "shutdown"]

log = logging.getLogger("tether.adapters")
T = TypeVar("T")
SOURCE = "urn:tether:adapter"
_DEFERRALS = 64
"""How many passes of the caller's loop a wake-up of the bus's waits at most for that loop to be idle."""
_STRANDED_S = 0.25
"""How often the bus's loop looks for events whose caller's loop stopped before waking it."""
_LINGER_S = 0.005
"""Two wake-ups for events handed over without waiting closer together than this make the bus's loop collect: what
other threads hand over without waiting then waits in the inbox at most this long, taken on that loop's own timer, and
makes no wake-up. 0: every hand-over wakes it (as before 7 December 2026's session 13)."""
_LINGER_IDLE = 1
"""Collections in a row that find the inbox empty before the bus's loop stops collecting (then a hand-over wakes it
again)."""


class LoopThreadError(RuntimeError):
    """A blocking adapter call was made on the thread that runs its bus's event loop."""


class Hub:
    """One bus and its loop, as adapters use it. Get one with :meth:`of` or :func:`background_hub`."""

    _hubs: WeakKeyDictionary[Bus, Hub] = WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, bus: Bus, loop: asyncio.AbstractEventLoop, thread_id: int | None) -> None:
        self.bus = bus
        self.loop = loop
        self.thread_id = thread_id
        self._queue: asyncio.Queue[Event | _Acked] | None = None
        self._queued = 0  # events put in the queue and not yet handed to the bus
        self._pump: asyncio.Task[None] | None = None
        self._engines: dict[int, tuple[PolicySet, CallEngine]] = {}
        self._shared: tuple[Breakers, RateLimiter, SpendBook] | None = None
        self._shared_lock: asyncio.Lock | None = None
        self._durable: DurableCalls | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.runaway = RunawayTracker()
        self.closed = False
        self.observers: list[Callable[[Event], None]] = []
        """Called on the bus's loop with every event as it is queued (the gateway reads its calls'
        events to infer tool spans): cheap and non-blocking, they run on the caller's path."""
        self._inbox: collections.deque[Callable[[], None]] = collections.deque()
        self._waking = False
        self._waker: asyncio.AbstractEventLoop | None = None  # the caller's loop that is to wake the bus's
        self._hand_offs = 0  # engine steps handed to the bus's loop: each takes the inbox along
        self._batching = False  # taking the inbox: events sent are written to NATS at its end
        self._unwritten = False
        self._watch: asyncio.TimerHandle | None = None  # _watch_stranded's next run
        self._collecting = False  # the bus's loop takes the inbox on its own timer (_collect): no wake-ups needed
        self._idle_collections = 0
        self._last_take = float("-inf")  # when a hand-over's wake-up last took events from the inbox (its clock)
        if self._on_loop():
            self._start_watching()

    @classmethod
    def of(cls, bus: Bus) -> Hub:
        """The hub of ``bus`` (created on first use). The bus's loop is the running loop if
        there is one, else the loop its publisher runs on (a bus connected in another thread)."""
        with cls._lock:
            hub = cls._hubs.get(bus)
            if hub is None:
                loop, thread_id = _loop_of(bus)
                hub = cls._hubs[bus] = Hub(bus, loop, thread_id)
            return hub

    # -- where am I ------------------------------------------------------------------------

    def on_loop_thread(self) -> bool:
        return self.thread_id is not None and threading.get_ident() == self.thread_id

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    # -- events ------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Queue ``event`` for publishing; never blocks, safe from any thread."""
        if self.closed:
            log.warning("event %s dropped: its hub is closed", event.type)
            return
        if self.on_loop_thread():
            self._put(event)
        else:
            self._from_thread(lambda: self._put(event))

    def _from_thread(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the bus's loop soon, from another thread. Each wake-up of the bus's loop is a
        write to its self-pipe, after which its thread competes with the caller for the GIL
        (milliseconds of the caller's wall time on a busy machine), so what is handed over waits in
        one inbox, taken at one wake-up; from a thread running an event loop, the wake-up is made when
        that loop has nothing else ready to run (:meth:`_wake_when_idle`: it is about to wait, usually
        on the network), so one agent step's events go over together. Engine steps
        (:meth:`call`, :meth:`call_sync`) take the inbox first, so order is kept. While the bus's loop
        is collecting (:meth:`_collect`), no wake-up is made at all: it takes the inbox on its own timer."""
        self._inbox.append(fn)
        if self._collecting:
            return  # taken at the bus's loop's next collection, at most _LINGER_S from now
        if self._waking:
            waker = self._waker
            if waker is None or waker.is_running():
                return
            # the loop that was to wake the bus's stopped before it did: wake it now
        self._waking = True
        try:
            caller: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # a plain thread
            caller = None
        if caller is not None and caller is not self.loop:
            self._waker = caller
            caller.call_soon(self._wake_when_idle, self._hand_offs)
            return
        self._waker = None
        self._wake(plain=True)

    def _wake_when_idle(self, hand_offs: int, deferred: int = 0) -> None:
        """On the caller's loop: :meth:`_wake`, once that loop has nothing else ready to run (it is about to
        wait: for the provider's answer, say), at most :data:`_DEFERRALS` passes later. What the rest of
        the agent's step hands over meanwhile (past its framework's checkpoints and tasks, which yield
        without waiting) goes in the same wake-up: a call's answer and the next call's request. Should
        that loop stop for good first, the bus's loop takes them itself (:meth:`_watch_stranded`)."""
        waker = self._waker
        if hand_offs == self._hand_offs and deferred < _DEFERRALS and waker is not None and others_ready(waker):
            waker.call_soon(self._wake_when_idle, hand_offs, deferred + 1)
            return
        self._wake(hand_offs, plain=True)

    def _watch_stranded(self) -> None:
        """On the bus's loop, every :data:`_STRANDED_S` seconds: what waits in the inbox for a wake-up that a
        caller's loop was to make and never will (it stopped, or closed, first) is taken now."""
        self._watch = None
        if self.closed:
            return
        waker = self._waker
        if self._waking and self._inbox and waker is not None and not waker.is_running():
            self._take_inbox()
        self._watch = self.loop.call_later(_STRANDED_S, self._watch_stranded)

    def _start_watching(self) -> None:
        """On the bus's loop: :meth:`_watch_stranded` from now on (started by the hub's first wake-up, or
        when the hub is made on its loop)."""
        if self._watch is None and not self.closed:
            self._watch = self.loop.call_later(_STRANDED_S, self._watch_stranded)

    def _wake(self, hand_offs: int | None = None, *, plain: bool = False) -> None:
        """Make the bus's loop take the inbox now; ``plain``: for events handed over without waiting (which
        may start it collecting), not for a caller that waits (an ack, a flush: it wakes the loop anyway)."""
        if hand_offs is not None and hand_offs != self._hand_offs:
            return  # an engine step was handed over since: it takes the inbox first (one wake-up, not two)
        self._waker = None
        try:
            self.loop.call_soon_threadsafe(self._take_inbox, plain)
        except RuntimeError:  # the bus's loop is closed
            self._waking = False
            if self._inbox:
                log.warning("%d adapter events or steps dropped: the bus's event loop is closed", len(self._inbox))
            self._inbox.clear()

    def _take_inbox(self, plain: bool = False) -> None:
        self._waking = False  # before taking: what is handed over from now on wakes the loop again
        if self._watch is None:
            self._start_watching()
        inbox = self._inbox
        if not inbox:
            return
        if plain:  # woken for events nobody waits for: if such wake-ups come fast, collect them from now on
            now = self.loop.time()
            if now - self._last_take < _LINGER_S and not self._collecting and not self.closed:
                self._collecting, self._idle_collections = True, 0
                self.loop.call_later(_LINGER_S, self._collect)
            self._last_take = now
        self._batching = True  # the events sent now are written to NATS together, at the end
        try:
            while inbox:
                fn = inbox.popleft()
                try:
                    fn()
                except Exception:
                    log.exception("tether: a step handed to the bus's loop failed")
        finally:
            self._batching = False
            if self._unwritten:
                self._unwritten = False
                try:
                    self.bus.write_now()
                except Exception:
                    log.exception("tether: writing the events handed over failed")

    def _collect(self) -> None:
        """On the bus's loop, every :data:`_LINGER_S` seconds while other threads hand events over faster than
        that: the inbox taken without their waking it. A wake-up of a thread that waits in ``epoll`` is a
        write to its self-pipe, which on a machine with idle cores costs the writer tens of microseconds
        (the kernel wakes another core); a timer costs the caller nothing, and takes the events of several
        calls in one batch (one write to NATS, their acks read together). But a timer that finds nothing
        wakes an idle core for nothing: so collecting starts only when two wake-ups for events nobody waits
        for come closer together than :data:`_LINGER_S` (an agent whose calls take a provider's tens of
        milliseconds or seconds never starts it, nor one whose every step waits for an ack, which wakes the
        loop anyway), and stops at the first collection that finds nothing (:data:`_LINGER_IDLE`); the
        next hand-over wakes the loop as before. What must not wait (an event whose ack a caller awaits,
        a flush, an engine step) wakes it at once either way."""
        if self.closed:
            self._collecting = False
            return
        if self._inbox:
            self._idle_collections = 0
            self._take_inbox()
        else:
            self._idle_collections += 1
            if self._idle_collections >= _LINGER_IDLE:
                self._collecting = False
                if not self._inbox:
                    return
                self._take_inbox()  # handed over as it stopped (its caller saw it collecting): taken now
                return
        self.loop.call_later(_LINGER_S, self._collect)

    async def aemit(self, event: Event) -> None:
        """Publish ``event`` from async code: handed to the bus before returning when called
        on the bus's loop with nothing queued (so closing the bus right after keeps it),
        queued otherwise (order is kept either way)."""
        if self._queued == 0 and not self.closed and self._on_loop():
            self._observe(event)
            try:
                await self.bus.emit(event)
            except Exception:
                log.exception("could not publish %s %s", event.type, event.id)
            return
        self.emit(event)

    async def apublish(self, event: Event) -> None:
        """Publish ``event`` after every event queued before it and wait for its ack (or the
        outbox), from any loop: what a journaled run's call returns only once the log has it.
        Cheaper than :meth:`flush`, which also waits for the background steps.

        From another loop than the bus's, the event is handed over with those before it (one
        wake-up, which sends them all, in order: the pump only for what must wait) and its ack
        settles the caller's future from the bus's loop: no engine step (a task, a drain, a
        future across threads) per call."""
        if self.closed:
            log.warning("event %s dropped: its hub is closed", event.type)
            return
        if not self._on_loop() and hasattr(self.bus, "publish_nowait"):
            caller = asyncio.get_running_loop()
            done: asyncio.Future[None] = caller.create_future()
            try:
                self._hand_over(partial(self._put_acked, event, partial(_settle_in, caller, done)))
                await done
            except Exception:  # the log is unreachable: the call's answer still reaches the caller
                log.exception("could not publish %s %s", event.type, event.id)
            return

        async def go() -> None:
            await self._drain()
            self._observe(event)
            await self.bus.publish(event)

        try:
            await self.call(go)
        except Exception:  # the log is unreachable: the call's answer still reaches the caller
            log.exception("could not publish %s %s", event.type, event.id)

    def publish_sync(self, event: Event) -> None:
        """:meth:`apublish` from a plain thread; queued (not waited for) on the bus's own loop thread.

        As from another loop: handed over with the events before it (one wake-up), its ack settling
        the caller from the bus's loop; no engine step (a task, a drain, a future across threads)."""
        if self.closed or self.on_loop_thread() or self._on_loop():
            self.emit(event)
            return
        if hasattr(self.bus, "publish_nowait"):
            done = threading.Event()
            outcome: list[BaseException | None] = []

            def settle(error: BaseException | None) -> None:
                outcome.append(error)
                done.set()

            try:
                self._hand_over(partial(self._put_acked, event, settle))
            except Exception:  # the bus's loop is closed
                log.exception("could not publish %s %s", event.type, event.id)
                return
            if not done.wait(60):
                log.error("could not publish %s %s: no ack within 60 s", event.type, event.id)
            elif outcome[0] is not None:  # the log is unreachable: the call's answer still reaches the caller
                log.error("could not publish %s %s", event.type, event.id, exc_info=outcome[0])
            return
        try:
            self.call_sync(lambda: self.apublish(event), timeout=60)
        except Exception:
            log.exception("could not publish %s %s", event.type, event.id)

    def _observe(self, event: Event) -> None:
        for observer in self.observers:
            try:
                observer(event)
            except Exception:  # an observer's bug must not lose the event
                log.exception("an observer of the adapters' events failed on %s", event.type)

    def _put(self, event: Event | _Acked) -> None:
        if self.observers:
            self._observe(event if isinstance(event, Event) else event.event)
        if self._queued == 0 and self._send_now(event):  # nothing ahead of it: sent in this iteration
            return
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._queued += 1
        self._queue.put_nowait(event)
        if self._pump is None or self._pump.done():
            self._pump = self.loop.create_task(self._pumping(), name="tether-adapter-events")

    def _put_acked(self, event: Event, settle: Callable[[BaseException | None], None]) -> None:
        """On the bus's loop: ``event`` queued behind those handed over before it; ``settle`` is
        called with its outcome at its ack (``None``) or failure."""
        if self.closed:
            settle(RuntimeError(f"event {event.type} dropped: its hub is closed"))
            return
        self._put(_Acked(event, settle))

    async def _pumping(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            item = await queue.get()
            try:
                if isinstance(item, _Acked):
                    await self._send_acked(item)
                else:
                    await self.bus.emit(item)
            except Exception:  # one bad event (too large, say) must not stop the others
                event = item.event if isinstance(item, _Acked) else item
                log.exception("could not publish %s %s", event.type, event.id)
            finally:
                self._queued -= 1
                queue.task_done()

    def _send_now(self, item: Event | _Acked) -> bool:
        """Hand ``item`` to NATS in this iteration of the bus's loop (no pump step), if the bus can
        without waiting; else ``False`` and the pump sends it."""
        send = getattr(self.bus, "send_now", None)
        if send is None:
            return False
        batching = self._batching  # in a wake-up: written with the others once the inbox is taken
        try:
            if isinstance(item, _Acked):
                waiter: asyncio.Future[Any] = self.loop.create_future()
                if not send(item.event, waiter, write=not batching):
                    return False
                waiter.add_done_callback(item.settled)
            elif not send(item, write=not batching):
                return False
            self._unwritten = self._unwritten or batching
            return True
        except Exception as exc:  # one bad event (too large, say) must not stop the others
            if isinstance(item, _Acked):
                item.settle(exc)
            else:
                log.exception("could not publish %s %s", item.type, item.id)
            return True

    async def _send_acked(self, acked: _Acked) -> None:
        try:
            waiter = await self.bus.publish_nowait(acked.event)
        except Exception as exc:  # the caller logs it, as when it published itself
            acked.settle(exc)
            return
        waiter.add_done_callback(acked.settled)

    async def _drain(self) -> None:
        if self._queue is not None:
            await self._queue.join()

    async def flush(self, timeout: float | None = None) -> None:
        """Every event emitted so far, and every background step started so far (spend,
        breaker bookkeeping, dead letters), is done and acked by NATS (or in the outbox).
        From any loop. From another loop than the bus's, with nothing queued and no background
        step running (a tool's start and end in a run), it is handed over with the events
        before it and settled when the publisher has nothing in flight: no engine step."""
        if not self.closed and not self._on_loop() and hasattr(self.bus, "when_flushed"):
            caller = asyncio.get_running_loop()
            done: asyncio.Future[None] = caller.create_future()
            self._hand_over(partial(self._flush_now, timeout, partial(_settle_in, caller, done)))
            await done
            return
        await self.call(partial(self._flushed, timeout))

    async def _flushed(self, timeout: float | None) -> None:
        await self._drain()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            await self._drain()
        await self.bus.flush(timeout)

    def _flush_now(self, timeout: float | None, settle: Callable[[BaseException | None], None]) -> None:
        """On the bus's loop, after the events handed over before: ``settle`` once all are acked."""
        try:
            if self._queued or self._tasks:  # queued events and background steps first, the awaited way
                waiter: asyncio.Future[Any] = self.loop.create_task(self._flushed(timeout))
            else:
                waiter = self.bus.when_flushed(timeout)
        except Exception as exc:
            settle(exc)
            return
        waiter.add_done_callback(lambda done: settle(_outcome(done)))

    def flush_sync(self, timeout: float | None = None) -> None:
        self.call_sync(lambda: self.flush(timeout))

    # -- running engine steps on the bus's loop ------------------------------------------------

    async def call(self, make: Callable[[], Awaitable[T]], *, drain: bool = False) -> T:
        """Await ``make()`` on the bus's loop (directly when already on it). ``drain`` first
        publishes every queued event, so what ``make`` publishes comes after them."""

        async def go() -> T:
            self._take_inbox()  # what other threads handed over before this call comes first
            if drain:
                await self._drain()
            return await make()

        if self._on_loop():
            return await go()
        future = self._hand_off(go())
        return await asyncio.wrap_future(future)

    def call_sync(self, make: Callable[[], Awaitable[T]], *, drain: bool = False,
                  timeout: float | None = None) -> T:
        """Run ``make()`` on the bus's loop and wait for it, from a thread that is not the loop's."""
        if self.on_loop_thread() or self._on_loop():
            raise LoopThreadError(
                "tether: a synchronous call would wait for the event loop it is running on (the loop of "
                "its bus). Use the async client (or an async tool) there, or let tether use its own "
                "background bus (bus=None, outside a run given a bus).")

        async def go() -> T:
            self._take_inbox()
            if drain:
                await self._drain()
            return await make()

        return self._hand_off(go()).result(timeout)

    def _hand_over(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the bus's loop at once, after what waits in the inbox, from another thread
        (a caller about to wait for what it starts): one wake-up, which takes the inbox along."""
        if self.loop.is_closed():
            raise RuntimeError("tether: the bus's event loop is closed")
        self._inbox.append(fn)
        self._hand_offs += 1  # a wake-up a caller's loop had scheduled is not made too
        self._waking = True
        self._wake()
        if self.loop.is_closed():  # closed meanwhile: _wake dropped it
            raise RuntimeError("tether: the bus's event loop is closed")

    def _hand_off(self, step: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``step`` (which takes the inbox first) on the bus's loop: its wake-up also takes what
        waits in the inbox, so a wake-up a caller's loop was to make for it is not made."""
        self._hand_offs += 1
        self._waker = None
        try:
            return asyncio.run_coroutine_threadsafe(step, self.loop)
        except RuntimeError:  # the bus's loop is closed: what waits in the inbox is dropped, as a wake-up would say
            step.close()
            self._wake()
            raise

    def spawn(self, make: Callable[[], Awaitable[Any]], *, drain: bool = False) -> None:
        """Start ``make()`` on the bus's loop without waiting for it (after the queued events
        when ``drain``)."""

        async def go() -> None:
            if drain:
                await self._drain()
            await make()

        def start() -> None:
            task = self.loop.create_task(_logged(go))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        if self.on_loop_thread():
            start()
        else:
            self._from_thread(start)

    # -- the engine ---------------------------------------------------------------------------

    def engine_nowait(self, policies: PolicySet) -> CallEngine | None:
        found = self._engines.get(id(policies))
        return found[1] if found is not None and found[0] is policies else None

    async def engine(self, policies: PolicySet) -> CallEngine:
        """The call engine for ``policies`` on this bus (breakers, rate limits and spend shared)."""
        found = self.engine_nowait(policies)
        if found is not None:
            return found
        if self._shared_lock is None:
            self._shared_lock = asyncio.Lock()
        async with self._shared_lock:
            if self._shared is None:
                self._shared = (await Breakers.open(self.bus), await RateLimiter.open(self.bus),
                                await SpendBook.open(self.bus))
        breakers, rates, spend = self._shared
        engine = CallEngine(self.bus, policies=policies, providers={}, tools=ToolRegistry(), breakers=breakers,
                            rates=rates, spend=spend, source=SOURCE)
        self._engines[id(policies)] = (policies, engine)
        return engine

    async def durable(self) -> DurableCalls:
        if self._durable is None:
            self._durable = await DurableCalls(self.bus).start()
        return self._durable

    async def aclose(self) -> None:
        """Publish what is queued, stop the engine's watchers (the bus stays open)."""
        self._take_inbox()
        await self._drain()
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        if self._shared is not None:
            await self._shared[0].close()
        if self._durable is not None:
            await self._durable.close()


@dataclasses.dataclass(slots=True)
class _Acked:
    """An event whose caller (on another loop) waits for its ack: ``settle`` tells it the outcome."""

    event: Event
    settle: Callable[[BaseException | None], None]

    def settled(self, waiter: asyncio.Future[Any]) -> None:
        self.settle(_outcome(waiter))


def _outcome(done: asyncio.Future[Any]) -> BaseException | None:
    """A finished future's error (``None``: it succeeded), for a caller on another loop."""
    return RuntimeError("tether: the bus's step was cancelled") if done.cancelled() else done.exception()


def _settle_in(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None], error: BaseException | None) -> None:
    """From the bus's loop: ``done`` (a future of ``loop``) given ``error``, or its result."""

    def settle() -> None:
        if done.done():  # its caller was cancelled meanwhile
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)


async def _logged(make: Callable[[], Awaitable[Any]]) -> None:
    try:
        await make()
    except Exception:
        log.exception("tether background step failed")


def _loop_of(bus: Bus) -> tuple[asyncio.AbstractEventLoop, int | None]:
    try:
        loop = asyncio.get_running_loop()
        return loop, threading.get_ident()
    except RuntimeError:
        pass
    # Connected on a loop running in another thread: the publisher's tasks run there.
    tasks: list[asyncio.Task[Any]] = getattr(bus.publisher, "_tasks", [])
    if not tasks:
        raise RuntimeError("tether: this bus is not connected (no publisher task); connect it first")
    loop = tasks[0].get_loop()
    return loop, loop_thread_id(loop)


# -- the process's background bus ------------------------------------------------------------

_background: tuple[threading.Thread, asyncio.AbstractEventLoop, Hub] | None = None
_background_lock = threading.Lock()


def background_hub(timeout: float = 60.0) -> Hub:
    """The process's own hub: a daemon thread with an event loop and a bus connected by
    :func:`tether.connect` (so ``TETHER_NATS_URL`` and ``TETHER_HOME`` apply). Started on
    first use; closed at exit or by :func:`shutdown`."""
    global _background
    with _background_lock:
        if _background is not None and _background[0].is_alive() and not _background[2].closed:
            return _background[2]
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[Hub] = concurrent.futures.Future()

        def main() -> None:
            asyncio.set_event_loop(loop)

            async def start() -> None:
                try:
                    bus = await connect()
                except BaseException as exc:
                    ready.set_exception(exc)
                    loop.stop()
                    return
                ready.set_result(Hub(bus, loop, threading.get_ident()))

            starting = loop.create_task(start())
            try:
                loop.run_forever()
            finally:
                del starting
                pending = asyncio.all_tasks(loop)  # nats-py leaves some of its own behind
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=main, name="tether-adapters", daemon=True)
        thread.start()
        hub = ready.result(timeout)
        _background = (thread, loop, hub)
        return hub


def background_hub_nowait() -> Hub | None:
    """The background hub if it is running (never starts it)."""
    current = _background
    if current is not None and current[0].is_alive() and not current[2].closed:
        return current[2]
    return None


def flush(bus: Bus | None = None, timeout: float | None = None) -> None:
    """Wait until every event adapters emitted on ``bus`` (default: the background bus) is
    acked by NATS or in the outbox. From a thread that is not the bus's loop; in async code,
    ``await Hub.of(bus).flush()``."""
    hub = Hub.of(bus) if bus is not None else background_hub_nowait()
    if hub is not None:
        hub.flush_sync(timeout)


def shutdown(timeout: float = 10.0) -> None:
    """Flush and close the background bus and stop its thread (tether does this at exit)."""
    global _background
    with _background_lock:
        current, _background = _background, None
    if current is None:
        return
    thread, loop, hub = current
    if thread.is_alive():
        async def stop() -> None:
            await hub.aclose()
            # Not the embedded server: at exit the loop can start no thread to stop it with.
            await hub.bus.close(timeout=timeout, stop_server=False)

        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout + 5)
        except Exception:
            log.exception("tether background bus did not close cleanly")
        if hub.bus.server is not None:
            hub.bus.server.stop()
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)


atexit.register(shutdown)

_policies: PolicySet | None = None


def default_policies() -> PolicySet:
    """The policies of ``tether.toml`` (or ``[tool.tether]``) in the working directory, loaded once."""
    global _policies
    if _policies is None:
        _policies = load_worker_config().policies
    return _policies
