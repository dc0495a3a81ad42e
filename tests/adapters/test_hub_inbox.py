"""The hub's inbox: events and steps handed to the bus's loop from other threads wake that loop once
per batch (each wake-up is a self-pipe write, then a fight for the GIL), in order, and an engine step
run on the loop after them sees them first. While the bus's loop is collecting (it took a hand-over
lately), what is handed over without waiting makes no wake-up at all: the loop takes it on its own timer.
The tests of the wake-ups themselves run with collecting off (``_LINGER_S = 0``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tether.adapters import Hub, _hub
from tether.schemas import Event, RunStarted


class StubBus:
    """What a hub needs of a bus to publish: ``emit`` and ``flush``."""

    def __init__(self) -> None:
        self.published: list[str] = []

    async def emit(self, event: Event) -> None:
        self.published.append(event.runid or "")

    async def flush(self, timeout: float | None = None) -> None:
        pass


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Hub, StubBus, list[int]]]:
    """A hub on a loop in a thread of its own; the third item counts that loop's wake-ups. Collecting
    is off: a test of it sets ``_LINGER_S`` (and ``_LINGER_IDLE``) before its first event."""
    monkeypatch.setattr(_hub, "_LINGER_S", 0)
    loop = asyncio.new_event_loop()
    wakes = [0]
    write = loop._write_to_self  # type: ignore[attr-defined]

    def counted() -> None:
        wakes[0] += 1
        write()

    loop._write_to_self = counted  # type: ignore[attr-defined]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    bus = StubBus()
    yield Hub(bus, loop, thread.ident), bus, wakes  # type: ignore[arg-type]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    pending = asyncio.all_tasks(loop)  # the hub's pump, still waiting for work: ended, not destroyed
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def event(n: int) -> Event:
    return Event.of(RunStarted(name="bot"), runid=f"run-{n}", source="urn:test")


def blocking_work(seconds: float) -> None:
    """An agent step's own work, which holds its loop (and lets other threads run)."""
    time.sleep(seconds)


def published(bus: StubBus, count: int) -> list[str]:
    deadline = time.monotonic() + 20
    while len(bus.published) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    return bus.published


def test_one_step_of_an_async_caller_wakes_the_bus_loop_once(hub: tuple[Hub, StubBus, list[int]]) -> None:
    h, bus, wakes = hub

    async def agent() -> None:
        for n in range(5):  # one step: no await between the events
            h.emit(event(n))
        await asyncio.sleep(0.05)  # the caller's loop waits: it makes the wake-up first

    asyncio.run(agent())
    assert published(bus, 5) == [f"run-{n}" for n in range(5)], "all of them, in order"
    assert wakes[0] == 1


def test_the_wake_up_waits_until_the_callers_loop_has_nothing_else_ready(hub: tuple[Hub, StubBus, list[int]]) -> None:
    """An agent step that yields to its loop without waiting (a framework's checkpoints, a callback it
    schedules) before its next event: one wake-up for both, made once the loop is about to wait (for
    the provider's answer): a call's completion and the next call's request go over together."""
    h, bus, wakes = hub

    async def agent() -> None:
        h.emit(event(0))  # a call's completion
        for _ in range(3):
            await asyncio.sleep(0)  # ready again at once: the loop is not idle
            blocking_work(0.01)  # the step's work (the bus's thread may take the GIL meanwhile)
        h.emit(event(1))  # the next call's request
        await asyncio.sleep(0.05)  # the loop waits (for the provider): now the bus's loop is woken

    asyncio.run(agent())
    assert published(bus, 2) == ["run-0", "run-1"]
    assert wakes[0] == 1


def test_a_loop_that_never_idles_still_wakes_the_bus_loop(hub: tuple[Hub, StubBus, list[int]]) -> None:
    """The wake-up waits a bounded number of the caller's iterations: an event gets out while the
    caller's loop stays busy."""
    h, bus, _ = hub
    seen: list[str] = []

    async def agent() -> None:
        h.emit(event(0))
        for _ in range(10_000):  # never idle
            await asyncio.sleep(0)
            if bus.published:
                seen.extend(bus.published)
                return
            blocking_work(0.0005)  # room for the bus's thread to take the GIL

    asyncio.run(agent())
    assert seen == ["run-0"]


def test_events_whose_callers_loop_closed_before_waking_the_bus_loop_get_out(
        hub: tuple[Hub, StubBus, list[int]]) -> None:
    """A caller's loop that stops for good while it puts the wake-up off (busy to its last pass): the
    bus's loop takes the events itself, within a quarter of a second, with no later event to wake it."""
    h, bus, _ = hub
    h.emit(event(-1))  # the hub's first wake-up: its loop watches from then on
    assert published(bus, 1) == ["run--1"]
    loop = asyncio.new_event_loop()

    async def emit_and_end() -> None:
        h.emit(event(0))
        loop.call_soon(lambda: None)  # more ready: the wake-up is put off past the loop's end

    loop.run_until_complete(emit_and_end())
    loop.close()
    assert published(bus, 2) == ["run--1", "run-0"]


def test_a_plain_thread_and_a_stopped_callers_loop_still_get_their_events_out(
        hub: tuple[Hub, StubBus, list[int]]) -> None:
    h, bus, _ = hub
    for n in range(3):  # no loop in this thread: the bus's loop is woken at once
        h.emit(event(n))
    assert published(bus, 3) == ["run-0", "run-1", "run-2"]
    loop = asyncio.new_event_loop()

    async def emit_and_stop() -> None:
        h.emit(event(3))  # its wake-up waits for this loop, which stops before getting to it
        loop.stop()

    task = loop.create_task(emit_and_stop())
    loop.run_forever()
    assert task.done()
    loop.close()
    h.emit(event(4))  # the loop that was to wake the bus's stopped: this wakes it
    assert published(bus, 5) == [f"run-{n}" for n in range(5)]


def test_an_engine_step_sees_what_was_handed_over_before_it(hub: tuple[Hub, StubBus, list[int]]) -> None:
    h, bus, _ = hub
    seen: list[Any] = []

    async def agent() -> None:
        h.emit(event(0))  # waits in the inbox: this step has not yielded

        async def step() -> None:
            seen.extend(bus.published)

        await h.call(step, drain=True)

    asyncio.run(agent())
    assert seen == ["run-0"]


def test_an_engine_step_right_after_an_event_wakes_the_bus_loop_once(hub: tuple[Hub, StubBus, list[int]]) -> None:
    """The step's own hand-off takes the inbox along: the wake-up the caller's loop had scheduled for
    the event is not made as well (a tool's start and the flush that waits for its ack, a call's
    answer published after its breaker's bookkeeping)."""
    h, bus, wakes = hub

    async def agent() -> None:
        h.emit(event(0))

        async def step() -> None:
            pass

        await h.call(step)
        await asyncio.sleep(0.05)  # the caller's loop waits: the wake-up it had scheduled for the event is not made
        h.emit(event(1))  # a later event still wakes the bus's loop
        await asyncio.sleep(0.05)

    asyncio.run(agent())
    assert published(bus, 2) == ["run-0", "run-1"]
    assert wakes[0] == 2  # the step's hand-off (with run-0), then run-1's own


class AckingBus(StubBus):
    """A bus that acks an event published with :meth:`publish_nowait` when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.acks: list[asyncio.Future[Any]] = []

    async def publish_nowait(self, event: Event) -> asyncio.Future[Any]:
        self.published.append(event.runid or "")
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]


@pytest.fixture
def acking(hub: tuple[Hub, StubBus, list[int]]) -> tuple[Hub, AckingBus, list[int]]:
    h, _, wakes = hub
    bus = AckingBus()
    h.bus = bus  # type: ignore[assignment]
    return h, bus, wakes


async def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


def test_a_caller_waiting_for_an_ack_hands_the_event_over_with_those_before_it(
        acking: tuple[Hub, AckingBus, list[int]]) -> None:
    """A journaled call's completion (``apublish`` from the agent's loop) goes over in the wake-up
    that takes the events before it, is sent after them by the hub's pump without an engine step,
    and the caller returns once the bus acks it, not before."""
    h, bus, wakes = acking
    seen: dict[str, Any] = {}

    def acker() -> None:  # the bus's ack, once the event is there
        deadline = time.monotonic() + 20
        while not bus.acks and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
        seen["published"], seen["wakes"] = list(bus.published), wakes[0]
        seen["acked"] = True  # before the ack: the caller may resume at once
        h.loop.call_soon_threadsafe(bus.acks[0].set_result, None)

    async def agent() -> None:
        threading.Thread(target=acker, daemon=True).start()
        h.emit(event(0))
        async with asyncio.timeout(20):  # in this task: the event and the acked one in one step
            await h.apublish(event(1))
        seen["returned after the ack"] = seen.get("acked", False)

    asyncio.run(agent())
    assert seen["published"] == ["run-0", "run-1"]
    assert seen["wakes"] == 1, "one wake-up took both"
    assert seen["returned after the ack"]


def test_a_failed_acked_publish_is_logged_and_the_caller_goes_on(acking: tuple[Hub, AckingBus, list[int]],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    h, bus, _ = acking

    async def agent() -> None:
        waiting = asyncio.create_task(h.apublish(event(0)))
        await until(lambda: len(bus.acks) == 1 or waiting.done(), "the acked event reached the bus")
        h.loop.call_soon_threadsafe(bus.acks[0].set_exception, RuntimeError("the outbox is full"))
        await asyncio.wait_for(waiting, 20)

    asyncio.run(agent())
    assert "could not publish tether.run.started" in caplog.text and "the outbox is full" in caplog.text


class SendingBus(AckingBus):
    """A bus that can hand an event to NATS at once (``send_now``), as tether's can."""

    def __init__(self) -> None:
        super().__init__()
        self.sent_now: list[str] = []
        self.unwritten = 0
        self.writes: list[int] = []  # events written to NATS together, write by write

    def send_now(self, event: Event, waiter: asyncio.Future[Any] | None = None, *, write: bool = True) -> bool:
        self.sent_now.append(event.runid or "")
        self.published.append(event.runid or "")
        if waiter is not None:
            self.acks.append(waiter)
        self.unwritten += not write
        return True

    def write_now(self) -> None:
        self.writes.append(self.unwritten)
        self.unwritten = 0


def test_events_handed_over_are_sent_in_the_wake_up_that_takes_them(
        hub: tuple[Hub, StubBus, list[int]]) -> None:
    """The wake-up that takes the inbox hands each event (and an acked one) to the bus itself: no
    pump task, no queue, no second iteration of the bus's loop before they are on their way."""
    h, _, _ = hub
    bus = SendingBus()
    h.bus = bus  # type: ignore[assignment]

    def acker() -> None:
        deadline = time.monotonic() + 20
        while not bus.acks and time.monotonic() < deadline:
            time.sleep(0.005)
        h.loop.call_soon_threadsafe(bus.acks[0].set_result, None)

    async def agent() -> None:
        threading.Thread(target=acker, daemon=True).start()
        for n in range(3):
            h.emit(event(n))
        async with asyncio.timeout(20):
            await h.apublish(event(3))

    asyncio.run(agent())
    assert bus.sent_now == ["run-0", "run-1", "run-2", "run-3"]
    assert h._pump is None, "nothing went through the pump"
    assert bus.writes == [4], "written to NATS together, once the inbox was taken"


class FlushingBus(SendingBus):
    """A bus whose flush (every event in flight acked) is done when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes: list[asyncio.Future[None]] = []

    def when_flushed(self, timeout: float | None = None) -> asyncio.Future[None]:
        self.flushes.append(asyncio.get_running_loop().create_future())
        return self.flushes[-1]


def test_a_flush_from_the_agents_loop_is_settled_when_the_bus_has_nothing_in_flight(
        hub: tuple[Hub, StubBus, list[int]]) -> None:
    """A tool's start and end in a run (``Hub.flush`` from the agent's loop): the event and the flush
    go over in one wake-up, and the caller returns once the bus says everything is acked, not before;
    a background step still running is waited for first, the awaited way."""
    h, _, wakes = hub
    bus = FlushingBus()
    h.bus = bus  # type: ignore[assignment]
    seen: dict[str, Any] = {}

    def flusher() -> None:
        deadline = time.monotonic() + 20
        while not bus.flushes and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
        seen["sent"], seen["wakes"] = list(bus.sent_now), wakes[0]
        seen["flushed"] = True  # before the flush is done: the caller may resume at once
        h.loop.call_soon_threadsafe(bus.flushes[0].set_result, None)

    async def agent() -> None:
        threading.Thread(target=flusher, daemon=True).start()
        h.emit(event(0))
        async with asyncio.timeout(20):
            await h.flush()
        seen["returned after the flush"] = seen.get("flushed", False)
        step = asyncio.Event()

        async def background() -> None:
            await step.wait()

        h.spawn(background)  # a background step: the flush waits for it
        waiting = asyncio.create_task(h.flush())
        await asyncio.sleep(0.05)
        seen["waited for the step"] = not waiting.done()
        h.loop.call_soon_threadsafe(step.set)
        await asyncio.wait_for(waiting, 20)

    asyncio.run(agent())
    assert seen["sent"] == ["run-0"] and seen["wakes"] == 1
    assert seen["returned after the flush"] and seen["waited for the step"]


# -- collecting: the bus's loop takes the inbox on its own timer -----------------------------------


def test_hand_overs_in_quick_succession_make_the_bus_loop_collect_with_no_more_wake_ups(
        hub: tuple[Hub, StubBus, list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two takes closer together than ``_LINGER_S`` (agent steps a fake provider answers at once): from then
    on the bus's loop collects, and the events of the next steps and of a plain thread get out, in order,
    with no wake-up."""
    h, bus, wakes = hub
    monkeypatch.setattr(_hub, "_LINGER_S", 0.5)  # "quick succession" and the collection period: room for load
    monkeypatch.setattr(_hub, "_LINGER_IDLE", 100)

    async def agent() -> None:
        for n in range(2):  # two steps, each waiting for its provider: two wake-ups, close together
            h.emit(event(n))
            await asyncio.sleep(0.01)
            await until(lambda n=n: len(bus.published) == n + 1, "the step's event out")
        assert h._collecting
        for n in range(2, 5):  # three more steps
            h.emit(event(n))
            await asyncio.sleep(0.01)

    asyncio.run(agent())
    h.emit(event(5))  # from a plain thread (a sync client's)
    assert published(bus, 6) == [f"run-{n}" for n in range(6)]
    assert wakes[0] == 2, "only the first two hand-overs woke the bus's loop"


def test_hand_overs_further_apart_never_start_collecting(hub: tuple[Hub, StubBus, list[int]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent whose provider takes longer than ``_LINGER_S`` a call: each step's events wake the bus's loop
    as before, and no timer wakes it for nothing."""
    h, bus, wakes = hub
    monkeypatch.setattr(_hub, "_LINGER_S", 0.005)
    for n in range(3):
        h.emit(event(n))
        assert published(bus, n + 1)[-1] == f"run-{n}"
        time.sleep(0.05)
        assert not h._collecting
    assert wakes[0] == 3


def test_collecting_stops_once_nothing_comes_and_the_next_hand_over_wakes_the_loop(
        hub: tuple[Hub, StubBus, list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    h, bus, wakes = hub
    monkeypatch.setattr(_hub, "_LINGER_S", 0.2)
    h.emit(event(0))
    assert published(bus, 1) == ["run-0"]
    h.emit(event(1))  # taken well within 0.2 s of the first: collecting
    assert published(bus, 2) == ["run-0", "run-1"]
    assert h._collecting
    deadline = time.monotonic() + 20
    while h._collecting and time.monotonic() < deadline:  # the first collection that finds nothing stops it
        time.sleep(0.01)
    assert not h._collecting, "it stopped collecting"
    assert wakes[0] == 2
    h.emit(event(2))
    assert published(bus, 3) == ["run-0", "run-1", "run-2"]
    assert wakes[0] == 3, "an idle bus's loop is woken as before"


def test_a_caller_waiting_for_an_ack_does_not_wait_for_the_next_collection(
        acking: tuple[Hub, AckingBus, list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """An event whose ack the caller awaits (a journaled call's completion) wakes the bus's loop at once,
    collecting or not, and takes the events waiting for the collection along, before it."""
    h, bus, wakes = acking
    monkeypatch.setattr(_hub, "_LINGER_S", 30.0)  # a collection would come too late for the test's timeout
    monkeypatch.setattr(_hub, "_LINGER_IDLE", 100)
    before_ack: list[int] = []

    def acker() -> None:
        deadline = time.monotonic() + 20
        while len(bus.acks) < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        before_ack.append(wakes[0])  # the test's own ack below is a wake-up too
        h.loop.call_soon_threadsafe(bus.acks[0].set_result, None)

    async def agent() -> None:
        for n in range(2):  # two takes: collecting from then on
            h.emit(event(n))
            await asyncio.sleep(0.01)
            await until(lambda n=n: len(bus.published) == n + 1, "the step's event out")
        assert h._collecting
        h.emit(event(2))  # waits for a collection thirty seconds away
        threading.Thread(target=acker, daemon=True).start()
        async with asyncio.timeout(20):
            await h.apublish(event(3))

    started = time.monotonic()
    asyncio.run(agent())
    assert bus.published == ["run-0", "run-1", "run-2", "run-3"], "the waiting event went with the acked one, before it"
    assert time.monotonic() - started < 20
    assert before_ack == [3], "the two first events' wake-ups, then the acked one's"


def test_a_plain_thread_waiting_for_an_ack_is_settled_by_the_ack_itself(
        acking: tuple[Hub, AckingBus, list[int]]) -> None:
    """A sync client's journaled call (``publish_sync`` from a thread with no loop): the event goes over
    after those handed over before it, with no engine step, and the caller returns once it is acked."""
    h, bus, _ = acking
    returned: list[bool] = []
    steps: list[Any] = []
    hand_off = h._hand_off
    h._hand_off = lambda step: steps.append(step) or hand_off(step)  # type: ignore[method-assign, func-returns-value]

    def caller() -> None:
        h.emit(event(0))
        h.publish_sync(event(1))
        returned.append(True)

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while len(bus.acks) < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    assert bus.published == ["run-0", "run-1"] and not returned, "not before its ack"
    assert not steps, "no engine step"
    h.loop.call_soon_threadsafe(bus.acks[0].set_result, None)
    thread.join(20)
    assert returned == [True]


def test_a_plain_thread_whose_acked_publish_fails_goes_on(acking: tuple[Hub, AckingBus, list[int]],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    h, bus, _ = acking
    thread = threading.Thread(target=h.publish_sync, args=(event(0),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while len(bus.acks) < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    h.loop.call_soon_threadsafe(bus.acks[0].set_exception, RuntimeError("the outbox is full"))
    thread.join(20)
    assert not thread.is_alive()
    assert "could not publish tether.run.started" in caplog.text and "the outbox is full" in caplog.text


def test_callers_waiting_for_acks_in_quick_succession_do_not_start_collecting(
        acking: tuple[Hub, AckingBus, list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose calls and tools each wait for an ack wakes the bus's loop for each anyway: a timer
    collecting between them would find nothing and wake an idle core for nothing."""
    h, bus, _ = acking
    monkeypatch.setattr(_hub, "_LINGER_S", 0.5)

    def acker() -> None:
        deadline = time.monotonic() + 20
        for n in range(3):
            while len(bus.acks) <= n and time.monotonic() < deadline:
                time.sleep(0.002)
            h.loop.call_soon_threadsafe(bus.acks[n].set_result, None)

    async def agent() -> None:
        threading.Thread(target=acker, daemon=True).start()
        async with asyncio.timeout(20):
            for n in range(3):
                await h.apublish(event(n))

    asyncio.run(agent())
    assert bus.published == ["run-0", "run-1", "run-2"]
    assert not h._collecting
