"""The demo behind ``tether up --demo``: a small research agent making real durable calls
against tether's own fake provider, and the lines ``tether up`` prints while it plays."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from tether.bus import Bus
from tether.middleware import (
    BreakerPolicy,
    CallFailed,
    DurableCalls,
    FallbackPolicy,
    Policy,
    PolicySet,
    ProviderConfig,
    RetryPolicy,
    RunawayGuard,
    Target,
    ToolRegistry,
)
from tether.schemas import Event, MemoryWritten, Payload, RunFinished, RunStarted, uuid7
from tether.testing.fake_provider import FakeProvider

from ._format import Style, result_line

__all__ = ["AGENT", "demo_policies", "demo_providers", "demo_tools", "logs_as_notes", "play_demo", "run_demo"]

AGENT = "demo-researcher"
PROVIDER = "openai"  # the fake provider, under a real provider's name so calls are priced
SMALL, LARGE, STRICT = "gpt-4o-mini", "gpt-4o", "o3-mini"
BREAKER_STREAK = 2  # the large model's circuit opens on its second failure: in the demo's second run
QUESTIONS = [
    "Which JetStream retention suits a work queue?",
    "How do I dedupe messages in NATS?",
    "What is a CloudEvents claim check?",
    "When should a circuit breaker half-open?",
]


def demo_policies() -> PolicySet:
    quick = RetryPolicy(max_attempts=3, base_delay_s=0.2, max_delay_s=1.0)
    return PolicySet(
        routes={
            "*": Policy(retry=quick, timeout_s=10.0, deadline_s=60.0,
                        breaker=BreakerPolicy(failure_streak=50, cooldown_s=5.0)),
            f"{PROVIDER}:{LARGE}": Policy(
                retry=RetryPolicy(max_attempts=1), timeout_s=10.0, deadline_s=60.0,
                breaker=BreakerPolicy(failure_streak=BREAKER_STREAK, cooldown_s=5.0),
                fallback=FallbackPolicy(targets=(Target(PROVIDER, SMALL),), max_fallbacks=1)),
        },
        runaway=RunawayGuard(max_calls_per_run=50, max_identical_calls=5),
    )


def demo_providers(fake: FakeProvider) -> dict[str, ProviderConfig]:
    return {PROVIDER: ProviderConfig(name=PROVIDER, kind="openai", base_url=fake.url)}


def demo_tools() -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool("web_search", idempotent=True)
    async def web_search(q: str) -> dict[str, object]:
        await asyncio.sleep(0.05)
        return {"hits": 3, "top": "docs.nats.io", "query": q}

    return registry


async def demo_run(bus: Bus, calls: DurableCalls, fake: FakeProvider, n: int,
                   note: Callable[[str], None] | None = None) -> str:
    """One run; returns its run id.

    Every call really goes through the WORK stream, a worker, the policy engine and HTTP:

    * the first model call hits a scripted 429 with ``Retry-After``, and is retried;
    * the web-search tool runs in the worker;
    * the large model (gpt-4o) is down (503), so its call falls back to the small one; after
      two such failures its circuit opens, and its calls go straight to the fallback (every
      five seconds one probe tries it again);
    * every third run sends a request the provider rejects (400, on o3-mini): it is
      not retried but dead-lettered, and ``tether dlq ls`` shows it with its attempts and error.

    Run and memory events are published by the agent itself.
    """
    run_id = f"demo-{n}-{uuid7()[-6:]}"
    question = QUESTIONS[n % len(QUESTIONS)]
    started = time.monotonic()
    say = note or (lambda _: None)

    async def emit(payload: Payload) -> None:
        await bus.publish(Event.of(payload, runid=run_id, agentid=AGENT, source="urn:tether:demo"))

    await emit(RunStarted(name="answer a question", input={"question": question}, tags=("demo",)))
    # Scripted faults for this run: the small model's first request is rate limited; the
    # large model is down for the whole run; every third run, a request is rejected.
    fake.set_faults(f"429(0.4s)#1={SMALL},503={LARGE},400={STRICT}")  # MODEL is an exact glob
    body: dict[str, object] = {"messages": [{"role": "user", "content": question}], "max_tokens": 60}
    first = await calls.llm(PROVIDER, SMALL, body, runid=run_id, agentid=AGENT)
    search = await calls.tool("web_search", {"q": question}, runid=run_id, agentid=AGENT)
    await emit(MemoryWritten(namespace=f"agent:{AGENT}", key=f"q{n % len(QUESTIONS)}", version=n // 4 + 1,
                             text=f"Looked up: {question} → {search.response}", source_call_id=search.call_id))
    follow_up = [{"role": "user", "content": question},
                 {"role": "assistant", "content": str(first.response)[:200]},
                 {"role": "user", "content": "Summarise in one line."}]
    answer = await calls.llm(PROVIDER, LARGE, {**body, "messages": follow_up}, runid=run_id, agentid=AGENT)
    status = "ok"
    if n % 3 == 2:
        try:
            await calls.llm(PROVIDER, STRICT, {**body, "temperature": 7}, runid=run_id, agentid=AGENT)
        except CallFailed as exc:
            status = "error"
            say(f"call {exc.call_id} was dead-lettered ({exc.error.type}); see `tether dlq ls`")
    await emit(RunFinished(status=status, duration_ms=(time.monotonic() - started) * 1000,
                           output={"answer": str(answer.response)[:200]}))
    return run_id


async def run_demo(bus: Bus, calls: DurableCalls, fake: FakeProvider, *, runs: int | None = None,
                   interval: float = 2.0, on_run: Callable[[int, str], None] | None = None,
                   note: Callable[[str], None] | None = None) -> int:
    """Play runs until cancelled (or ``runs`` of them). Returns how many completed."""
    n = 0
    while runs is None or n < runs:
        run_id = await demo_run(bus, calls, fake, n, note)
        n += 1
        if on_run is not None:
            on_run(n, run_id)
        if runs is None or n < runs:
            await asyncio.sleep(interval)
    return n


class _AsNotes(logging.Handler):
    """Log records as the demo's own note lines. A circuit's transitions are left out: the
    demo prints their events (``circuit.opened`` ...) already."""

    def __init__(self, note: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.note = note

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "tether.middleware" and str(record.msg).startswith("circuit "):
            return
        try:
            self.note(f"{record.levelname.lower()}: {record.getMessage()}")
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def logs_as_notes(note: Callable[[str], None]) -> Iterator[None]:
    """While inside, warnings go through ``note`` instead of the root logger's raw lines on
    stderr, which would interleave with the demo's event lines."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [_AsNotes(note)]
    try:
        yield
    finally:
        root.handlers = saved


async def play_demo(args: argparse.Namespace, bus: Bus, fake: Any, stop: asyncio.Event, s: Style) -> int:
    print(s.dim(f"demo: a research agent makes real durable calls every {args.interval:g}s against the "
                "fake provider: a rate limit retried, a tool, a fallback (and the circuit breaker of the model "
                "that is down), and every third run a dead letter"), flush=True)

    async def show(msg: Any) -> None:
        result = await bus.reader.read_safe(msg.subject, msg.headers, msg.data)
        print("  " + result_line(result, s), flush=True)

    subs = [await bus.nc.subscribe(f"tether.evt.{AGENT}.>", cb=show),
            await bus.nc.subscribe("tether.evt.*.*.circuit.>", cb=show)]

    def on_run(n: int, run_id: str) -> None:
        print(s.dim(f"run {n} done. Try: tether tail --run {run_id} --all   |   tether tail --kind llm   "
                    "|   tether dlq ls   |   tether status"), flush=True)

    def note(text: str) -> None:
        print(s.yellow(f"  ! {text}"), flush=True)

    # Warnings (a failed worker fetch, say) print as the demo's notes, not as raw log lines on
    # stderr between its event lines; with -v the raw log, as asked.
    with contextlib.nullcontext() if args.verbose else logs_as_notes(note):
        async with DurableCalls(bus) as calls:
            demo = asyncio.create_task(run_demo(bus, calls, fake, runs=args.runs, interval=args.interval,
                                                on_run=on_run, note=note))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({demo, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (demo, stopper):
                if task not in done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if demo in done:
                demo.result()
        await bus.flush()
        await asyncio.sleep(0.05)  # let the last events print
    for sub in subs:
        await sub.unsubscribe()
    return 0
