"""Projection throughput: tether's projector (all four views) against a plain pull consumer,
and a rebuild of a 1M-event log, in one run.

What is measured, in one run against one ``nats-server -js`` started here (free loopback
port, temporary store, stopped at the end):

* the log: ``--events`` (200,000) events published with ``bus.emit`` and one ``flush``, a
  mix like the executor's: runs (``run.started``/``finished``) of an agent, each with LLM
  calls (``requested``, sometimes a failed attempt and a retry, ``completed`` with usage,
  request and response bodies), tool calls (some retried), memory writes, now and then a
  call that gives up (three failed attempts, ``llm.call.failed``, ``call.dead_lettered``)
  and circuit-breaker transitions; five models, one of them unknown to genai-prices.
* **raw**: plain nats-py on its own connection, a pull consumer on EVENTS fetching batches
  of 500, once **acking each message** (the issue's baseline; ack floor checked at the
  end) and once with ``AckPolicy.NONE`` and no acks: events/s from seq 1 to the head.
* **tether**: a :class:`~tether.projections.Projector` with the four views ``tether
  projector`` runs (traces, cost, errors, metrics), into a fresh views directory, timed
  from ``start()`` until every view has applied the head: decoding and validating every
  event, folding it, writing the rows and the checkpoint, and the change notifications.
  The ratio tether / raw-with-acks is the figure the target is set on (>= 0.7).
* **rebuild**: the log is topped up to ``--rebuild-events`` (1,000,000) with more of the
  same mix, then :func:`tether.projections.replay` rebuilds all four views into a fresh
  directory, in a **child process** of its own (``tether replay`` is one too), so its
  peak RSS (``ru_maxrss``) is the rebuild's and not the publisher's. RSS is read from
  ``/proc/self/status`` at every 10 % of the log, so it shows whether memory grows with
  the log. Targets: <= 120 s wall time, memory flat.

Each round runs raw-with-acks, raw-without-acks, tether, in that order (fresh consumer,
fresh views each time); the report gives every round and the median of each side.
Verification, or the run fails: the stream holds exactly what was published (sent = acked,
no duplicate, nothing outboxed); raw consumed every message once and its ack floor is the
head; every view's checkpoint equals the head (the rebuild's: ``--rebuild-events``), no
event was recorded as failed, the cost ledger has one row per ``llm.call.completed``
published and the traces view one run per ``run.started``.

Run it::

    .venv/bin/python bench/projections.py
    .venv/bin/python bench/projections.py --events 50000 --rebuild-events 0   # no rebuild
    .venv/bin/python bench/projections.py --json      # machine-readable results on stdout
    .venv/bin/python bench/projections.py --profile /tmp/proj.prof --events 50000
                                                      # cProfile of the projector only

The exit status is 1 if the verification fails, 0 otherwise (whatever the targets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import io
import json
import os
import pstats
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tether.bus import EVENT_SUBJECTS, EVENTS_STREAM, Bus, PublisherStats, connect
from tether.cli._projector import default_views
from tether.projections import Item, Projector, ProjectorPool, default_processes, open_view, replay
from tether.schemas import (
    CallDeadLettered,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    MemoryWritten,
    Payload,
    RunFinished,
    RunStarted,
    ToolCallAttemptFailed,
    ToolCallCompleted,
    ToolCallRequested,
    Usage,
)
from tether.testing import NatsServer

Side = Literal["raw_ack", "raw_noack", "tether", "tether_pool"]
SIDES: tuple[Side, ...] = ("raw_ack", "raw_noack", "tether", "tether_pool")

TARGET_RATIO = 0.70
TARGET_REBUILD_S = 120.0
RAW_BATCH = 500
RSS_POINTS = tuple(range(10, 101, 10))  # % of the log at which the rebuild reads its RSS

# -- the event mix ------------------------------------------------------------------------------

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
RUN_SPACING_S = 2.0
AGENTS = ("researcher", "writer", "support", "planner")
# (provider, model, weight): one model genai-prices does not know, so some calls are unpriced.
MODELS = (("openai", "gpt-4o-mini", 40), ("openai", "gpt-4o", 20), ("anthropic", "claude-sonnet-4-5", 20),
          ("google", "gemini-2.5-flash", 15), ("local", "llama-bench", 5))
TOOLS = ("search", "fetch_page", "run_sql", "send_email")
WORDS = ("the", "stream", "agent", "call", "retry", "budget", "trace", "ledger", "memory", "model", "tool", "event",
         "replay", "view", "provider", "token", "latency", "cost", "breaker", "sequence")
RESULT: dict[str, Any] = {
    "query": "jetstream consumer throughput",
    "hits": [
        {"title": "JetStream pull consumers", "url": "https://docs.nats.io/js/pull", "score": 0.93},
        {"title": "Acknowledgement models", "url": "https://docs.nats.io/js/acks", "score": 0.71},
    ],
    "took_ms": 12,
}
RATE_LIMIT = ErrorInfo(type="RateLimitError", message="Rate limit reached for requests in org-abc123: retry in 20ms",
                       status_code=429, code="rate_limit_exceeded", retryable=True)
OVERLOADED = ErrorInfo(type="APIStatusError", message="The server is overloaded (request req_8f2a91)",
                       status_code=529, retryable=True)
TOOL_TIMEOUT = ErrorInfo(type="Timeout", message="tool did not answer within 10s", retryable=True)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


@dataclass
class Counts:
    """What the published prefix of the log must give in the views."""

    events: int = 0
    runs: int = 0
    llm_completed: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str) -> None:
        self.events += 1
        self.by_type[kind] = self.by_type.get(kind, 0) + 1
        if kind == RunStarted.event_type:
            self.runs += 1
        elif kind == LlmCallCompleted.event_type:
            self.llm_completed += 1


Lazy = tuple[str, Callable[[], Event]]


def run_events(r: int) -> Iterator[Lazy]:
    """The events of run ``r``, deterministic in ``r``, each built only when asked for."""
    rng = random.Random(r)
    agent = AGENTS[r % len(AGENTS)]
    run_id = f"run-{r:08d}"
    traceparent = f"00-{r + 1:032x}-{rng.getrandbits(64) or 1:016x}-01"
    tenant = {"tenant": f"t{r % 7}"} if r % 3 == 0 else None
    clock = T0 + timedelta(seconds=r * RUN_SPACING_S)

    def ev(payload: Payload, *, runid: str | None = run_id) -> Callable[[], Event]:
        when = clock
        return lambda: Event.of(payload, runid=runid, agentid=agent if runid else None,
                                traceparent=traceparent if runid else None, time=when, extensions=tenant)

    def later(ms: float) -> None:
        nonlocal clock
        clock += timedelta(milliseconds=ms)

    # Breaker transitions are about a route, not a run: every 40 runs one opens, half-opens, closes.
    if r % 40 in (0, 1, 2):
        route = "openai:gpt-4o"
        payload: Payload = (CircuitOpened(route=route, reason="failure rate 0.6 over 10 calls", failures=6,
                                          failure_rate=0.6, cooldown_s=30.0) if r % 40 == 0
                            else CircuitHalfOpened(route=route, probe_call_id=f"{run_id}-c0") if r % 40 == 1
                            else CircuitClosed(route=route, open_for_s=4.0))
        yield payload.event_type, ev(payload, runid=None)
    yield RunStarted.event_type, ev(RunStarted(name=f"{agent} task", tags=("bench",),
                                               input={"task": _text(rng, 12)}))
    failed_run = False
    for c in range(rng.randint(2, 4)):
        call_id = f"{run_id}-c{c}"
        provider, model = rng.choices([(p, m) for p, m, _ in MODELS], [w for *_, w in MODELS])[0]
        params = {"temperature": 0.2, "max_tokens": 1024}
        body = {"model": model, "messages": [{"role": "system", "content": f"You are the {agent}."},
                                             {"role": "user", "content": _text(rng, 30)}], **params}
        later(rng.uniform(5, 50))
        yield LlmCallRequested.event_type, ev(LlmCallRequested(call_id=call_id, provider=provider, model=model,
                                                               parameters=params, request=body,
                                                               stream=c % 2 == 1))
        fate = rng.random()
        attempt = 1
        if fate < 0.03:  # gives up: two retries, then give_up, failed, dead-lettered
            for a, decision in ((1, "retry"), (2, "retry"), (3, "give_up")):
                later(rng.uniform(100, 400))
                yield LlmCallAttemptFailed.event_type, ev(LlmCallAttemptFailed(
                    call_id=call_id, provider=provider, model=model, attempt=a, error=OVERLOADED,
                    latency_ms=rng.uniform(80, 300), decision=decision,
                    retry_in_s=0.5 * a if decision == "retry" else None))
            yield LlmCallFailed.event_type, ev(LlmCallFailed(call_id=call_id, provider=provider, model=model,
                                                             attempts=3, error=OVERLOADED))
            yield CallDeadLettered.event_type, ev(CallDeadLettered(call_id=call_id, call_kind="llm",
                                                                   reason="exhausted", attempts=3, error=OVERLOADED,
                                                                   dlq_seq=r + 1))
            failed_run = True
            break
        if fate < 0.15:  # one rate-limited attempt, retried
            later(rng.uniform(20, 80))
            yield LlmCallAttemptFailed.event_type, ev(LlmCallAttemptFailed(
                call_id=call_id, provider=provider, model=model, attempt=1, error=RATE_LIMIT,
                latency_ms=rng.uniform(20, 80), decision="retry", retry_in_s=0.02))
            attempt = 2
        latency = rng.uniform(300, 4000)
        later(latency)
        inp = rng.randint(300, 6000)
        cached = rng.choice((0, 0, inp // 2))
        out = rng.randint(20, 900)
        usage = Usage(input_tokens=inp, output_tokens=out, cached_input_tokens=cached,
                      reasoning_tokens=out // 3 if model == "gpt-4o-mini" and c == 0 else 0)
        answer = _text(rng, 40)
        response = {"id": f"chatcmpl-{r}-{c}", "object": "chat.completion", "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": inp, "completion_tokens": out}}
        yield LlmCallCompleted.event_type, ev(LlmCallCompleted(
            call_id=call_id, provider=provider, model=model, attempt=attempt, usage=usage, latency_ms=latency,
            ttft_ms=latency / 4 if c % 2 == 1 else None, finish_reason="stop", response=response))
        if rng.random() < 0.6:
            tool = rng.choice(TOOLS)
            tool_id = f"{call_id}-t"
            later(rng.uniform(1, 5))
            yield ToolCallRequested.event_type, ev(ToolCallRequested(call_id=tool_id, tool=tool,
                                                                     arguments={"query": _text(rng, 6)},
                                                                     idempotent=tool != "send_email"))
            t_attempt = 1
            if rng.random() < 0.05:
                later(10_000)
                yield ToolCallAttemptFailed.event_type, ev(ToolCallAttemptFailed(
                    call_id=tool_id, tool=tool, attempt=1, error=TOOL_TIMEOUT, duration_ms=10_000.0,
                    decision="retry", retry_in_s=0.2))
                t_attempt = 2
            took = rng.uniform(5, 400)
            later(took)
            yield ToolCallCompleted.event_type, ev(ToolCallCompleted(call_id=tool_id, tool=tool, attempt=t_attempt,
                                                                     result=RESULT, duration_ms=took))
    if rng.random() < 0.5:
        later(2)
        yield MemoryWritten.event_type, ev(MemoryWritten(namespace=f"agent:{agent}", key=f"note-{r}", version=1,
                                                         text=_text(rng, 25), source_call_id=f"{run_id}-c0"))
    later(3)
    yield RunFinished.event_type, ev(RunFinished(
        status="error" if failed_run else "ok", duration_ms=(clock - T0).total_seconds() * 1000 - r * 2000,
        error=OVERLOADED if failed_run else None, output={"summary": _text(rng, 10)} if not failed_run else None))


def event_mix() -> Iterator[Lazy]:
    r = 0
    while True:
        yield from run_events(r)
        r += 1


# -- publishing ---------------------------------------------------------------------------------


class VerificationError(RuntimeError):
    pass


def progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


@dataclass
class Published:
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def publish(bus: Bus, mix: Iterator[Lazy], n: int, counts: Counts, marks: dict[int, Counts], *,
                  quiet: bool, label: str) -> Published:
    """``bus.emit`` the next ``n`` events of the mix, then one ``flush``; the stats must add up."""
    before = dataclasses.replace(bus.publisher.stats)
    step = max(50_000, n // 10)
    start = last = time.perf_counter()
    for i in range(1, n + 1):
        kind, build = next(mix)
        await bus.emit(build())
        counts.add(kind)
        if counts.events in marks:
            marks[counts.events] = dataclasses.replace(counts, by_type=dict(counts.by_type))
        if i % step == 0 and i < n:
            now = time.perf_counter()
            progress(f"  {label}: {i:>9,} / {n:,} events emitted ({step / (now - last):,.0f}/s)", quiet)
            last = now
    await bus.flush(timeout=120)
    elapsed = time.perf_counter() - start
    after = bus.publisher.stats
    delta = {f.name: getattr(after, f.name) - getattr(before, f.name) for f in dataclasses.fields(PublisherStats)
             if isinstance(getattr(after, f.name), int)}
    expected = {"sent": n, "acked": n, "duplicates": 0, "outboxed": 0, "rejected": 0, "dropped": 0}
    wrong = {k: delta[k] for k, v in expected.items() if delta[k] != v}
    if wrong:
        raise VerificationError(f"publishing: expected {expected}, got {wrong} (last error: {after.last_error})")
    progress(f"  {label}: {n:,} events published and acked in {elapsed:.1f}s ({n / elapsed:,.0f}/s)", quiet)
    return Published(n, elapsed)


# -- the three consumers -----------------------------------------------------------------------


async def consume_raw(js: JetStreamContext, nc: NATS, head: int, *, ack: bool, name: str) -> float:
    """A plain pull consumer from seq 1 to ``head``, batches of 500; returns seconds."""
    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT if ack else AckPolicy.NONE,
                            deliver_policy=DeliverPolicy.ALL, max_ack_pending=-1 if ack else None)
    gc.collect()
    start = time.perf_counter()
    sub = await js.pull_subscribe(EVENT_SUBJECTS, durable=name, stream=EVENTS_STREAM, config=config)
    got = 0
    last_seq = 0
    in_order = True
    try:
        while got < head:
            msgs = await sub.fetch(RAW_BATCH, timeout=5)
            for m in msgs:
                seq = m.metadata.sequence.stream
                in_order &= seq == last_seq + 1
                last_seq = seq
                if ack:
                    await m.ack()
            got += len(msgs)
        if ack:
            await nc.flush()
        elapsed = time.perf_counter() - start
        if got != head or last_seq != head or not in_order:
            raise VerificationError(f"{name}: got {got} message(s) up to seq {last_seq} (in order: {in_order}), "
                                    f"expected 1..{head}")
        if ack:
            for _ in range(50):
                info = await js.consumer_info(EVENTS_STREAM, name)
                if info.ack_floor.stream_seq == head and info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.1)
            else:
                raise VerificationError(f"{name}: ack floor {info.ack_floor.stream_seq}, "
                                        f"{info.num_ack_pending} pending, expected {head}, 0")
        return elapsed
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(EVENTS_STREAM, name)


@dataclass
class ViewCheck:
    """What one views directory holds, read back from the SQLite files."""

    seqs: dict[str, int]
    failed: dict[str, int]
    ledger_rows: int
    runs: int

    def problems(self, head: int, expected: Counts) -> list[str]:
        out = [f"view {v} is at seq {s}, not {head}" for v, s in self.seqs.items() if s != head]
        out += [f"view {v} recorded {n} failed event(s)" for v, n in self.failed.items() if n]
        if self.ledger_rows != expected.llm_completed:
            out.append(f"cost ledger has {self.ledger_rows} row(s), expected {expected.llm_completed}")
        if self.runs != expected.runs:
            out.append(f"traces has {self.runs} run(s), expected {expected.runs}")
        return out


def check_views(directory: Path) -> ViewCheck:
    seqs: dict[str, int] = {}
    failed: dict[str, int] = {}
    ledger_rows = runs = -1
    for view in default_views():
        path = open_view(directory, view.name)
        if path is None:
            seqs[view.name] = -1
            continue
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM _meta WHERE key = 'seq'").fetchone()
            seqs[view.name] = int(row[0]) if row else 0
            failed[view.name] = int(db.execute("SELECT count(*) FROM _failed").fetchone()[0])
            if view.name == "cost":
                ledger_rows = int(db.execute("SELECT count(*) FROM calls").fetchone()[0])
            elif view.name == "traces":
                runs = int(db.execute("SELECT count(*) FROM runs").fetchone()[0])
        finally:
            db.close()
    return ViewCheck(seqs, failed, ledger_rows, runs)


async def consume_tether(bus: Bus, directory: Path, head: int, expected: Counts,
                         projector_cls: type[Projector] = Projector, processes: int = 1) -> float:
    """A projector with the four views into a fresh ``directory``, until all applied ``head``
    (with ``processes`` > 1: a :class:`ProjectorPool`, as ``tether projector`` runs it)."""
    gc.collect()
    start = time.perf_counter()
    projector: Projector | ProjectorPool = (ProjectorPool(bus, default_views(), directory, processes=processes)
                                            if processes > 1 else projector_cls(bus, default_views(), directory))
    await projector.start()
    try:
        await projector.wait_for(head, timeout=3600)
        elapsed = time.perf_counter() - start
    finally:
        await projector.stop()
    problems = check_views(directory).problems(head, expected)
    if problems:
        raise VerificationError("tether: " + "; ".join(problems))
    return elapsed


# -- the rebuild, in a child process ---------------------------------------------------------------


def status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM``-like field of ``/proc/self/status``, in KiB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_kib() -> int:
    """This process's RSS plus its children's (a replay in processes has its folds there)."""
    total = status_kib("VmRSS")
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[1] == me:
                for line in (stat.parent / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
    return total


async def rebuild_child(url: str, out: Path, to_seq: int | None, *, quiet: bool, processes: int) -> dict[str, Any]:
    """Runs in the child: ``replay`` of every view into ``out``; what it took, as a dict."""
    home = Path(tempfile.mkdtemp(prefix="tether-bench-replay-"))
    try:
        bus = await connect(url=url, home=home)
        try:
            target = to_seq or (await bus.js.stream_info(EVENTS_STREAM)).state.last_seq
            rss: dict[int, int] = {0: rss_kib()}
            at: dict[int, float] = {0: 0.0}
            marks = list(RSS_POINTS)
            reached: list[float] = []
            start = time.perf_counter()

            def on_progress(last: int, head: int) -> None:
                while marks and last * 100 >= marks[0] * target:
                    at[marks[0]] = time.perf_counter() - start
                    rss[marks[0]] = rss_kib()
                    progress(f"  rebuild: {marks[0]:>3}% ({last:,} events) in {at[marks[0]]:.1f}s, "
                             f"RSS {rss[marks[0]] / 1024:.0f} MiB", quiet)
                    marks.pop(0)
                if last >= target and not reached:
                    reached.append(time.perf_counter() - start)

            peak_sampled = [0]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.1):
                    peak_sampled[0] = max(peak_sampled[0], rss_kib())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                sums = await replay(bus, default_views(), out, to_seq=to_seq, on_progress=on_progress,
                                    processes=processes)
            finally:
                stop.set()
                sampler.join()
            seconds = time.perf_counter() - start
        finally:
            await bus.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    # VmHWM is this process image's peak RSS. ru_maxrss is not, in a spawned child: Linux
    # carries the parent's peak over the exec (here, the publisher's), so it is reported beside.
    return {"to_seq": target, "seconds": seconds, "seconds_to_head": reached[0] if reached else None,
            "rss_kib_at_percent": rss, "seconds_at_percent": at, "rss_kib_sampled_peak": peak_sampled[0],
            "peak_rss_kib": status_kib("VmHWM"),
            "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "checksums": sums}


@dataclass
class Rebuild:
    events: int
    published: Published | None
    seconds: float
    seconds_to_head: float | None
    rss_kib_at_percent: dict[int, int]
    seconds_at_percent: dict[int, float]
    rss_kib_sampled_peak: int
    peak_rss_kib: int
    ru_maxrss_kib: int
    problems: list[str]

    @property
    def growth_kib(self) -> int:
        """RSS at the end of the log minus RSS at its first 10 %: what the log's length cost."""
        r = self.rss_kib_at_percent
        return r.get(100, 0) - r.get(10, 0)


def run_rebuild_child(url: str, out: Path, to_seq: int | None, quiet: bool, processes: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--rebuild-child", url, str(out), str(to_seq or 0), "--processes", str(processes),
           *(["--json"] if quiet else [])]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None if not quiet else subprocess.DEVNULL)
    try:
        stdout, _ = child.communicate(timeout=1800)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode != 0:
        raise VerificationError(f"rebuild child exited with {child.returncode}")
    result: dict[str, Any] = json.loads(stdout)
    for name in ("rss_kib_at_percent", "seconds_at_percent"):
        result[name] = {int(k): v for k, v in result[name].items()}
    return result


# -- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    round: int
    side: Side
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass
class Report:
    events: int
    rounds: int
    published: Published
    samples: list[Sample]
    counts: Counts
    rebuild: Rebuild | None
    server_version: str | None
    processes: int = 1
    parent_ru_maxrss_kib: int = 0

    @property
    def sides(self) -> list[Side]:
        return [side for side in SIDES if any(s.side == side for s in self.samples)]

    @property
    def best(self) -> Side:
        """What ``tether projector`` runs here: the pool when it has more than one process."""
        return "tether_pool" if self.processes > 1 else "tether"

    def median(self, side: Side) -> float:
        return statistics.median(s.rate for s in self.samples if s.side == side)

    @property
    def ratio(self) -> float:
        return self.median(self.best) / self.median("raw_ack")

    @property
    def round_ratios(self) -> list[float]:
        """Each round's tether / raw with acks: the two measured minutes apart, not across the run."""
        rate = {(s.round, s.side): s.rate for s in self.samples}
        return [rate[r, self.best] / rate[r, "raw_ack"] for r in range(1, self.rounds + 1)
                if (r, self.best) in rate and (r, "raw_ack") in rate]

    @property
    def rebuild_ok(self) -> bool | None:
        return None if self.rebuild is None else self.rebuild.seconds <= TARGET_REBUILD_S

    @property
    def verified(self) -> bool:
        return self.rebuild is None or not self.rebuild.problems

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "events": self.events, "rounds": self.rounds, "nats_server": self.server_version,
            "mix": dict(sorted(self.counts.by_type.items())), "runs": self.counts.runs,
            "llm_calls_completed": self.counts.llm_completed,
            "publish": {"events": self.published.events, "seconds": round(self.published.seconds, 3),
                        "events_per_s": round(self.published.rate, 1)},
            "samples": [{"round": s.round, "side": s.side, "events": s.events, "seconds": round(s.seconds, 3),
                         "events_per_s": round(s.rate, 1)} for s in self.samples],
            "median_events_per_s": {side: round(self.median(side), 1) for side in self.sides},
            "processes": self.processes,
            "ratio_vs_raw_ack": round(self.ratio, 4),
            "ratio_vs_raw_ack_by_round": [round(r, 4) for r in self.round_ratios],
            "ratio_vs_raw_noack": round(self.median(self.best) / self.median("raw_noack"), 4),
            "ratio_one_process_vs_raw_ack": round(self.median("tether") / self.median("raw_ack"), 4),
            "target_ratio": TARGET_RATIO,
            "ratio_ok": self.ratio >= TARGET_RATIO,
            "parent_ru_maxrss_kib": self.parent_ru_maxrss_kib,
            "verified": self.verified,
        }
        if self.rebuild is not None:
            rb = self.rebuild
            out["rebuild"] = {
                "events": rb.events,
                "published": None if rb.published is None else {
                    "events": rb.published.events, "seconds": round(rb.published.seconds, 3),
                    "events_per_s": round(rb.published.rate, 1)},
                "seconds": round(rb.seconds, 3),
                "seconds_to_head": None if rb.seconds_to_head is None else round(rb.seconds_to_head, 3),
                "events_per_s": round(rb.events / rb.seconds, 1),
                "target_seconds": TARGET_REBUILD_S, "seconds_ok": self.rebuild_ok,
                "rss_kib_at_percent": rb.rss_kib_at_percent, "rss_growth_kib_10_to_100": rb.growth_kib,
                "seconds_at_percent": {p: round(t, 2) for p, t in rb.seconds_at_percent.items()},
                "peak_rss_kib": rb.peak_rss_kib, "rss_kib_sampled_peak": rb.rss_kib_sampled_peak,
                "ru_maxrss_kib_inherited": rb.ru_maxrss_kib,
                "problems": rb.problems,
            }
        return out

    def table(self) -> str:
        mix = ", ".join(f"{k.removeprefix('tether.')} {v:,}" for k, v in sorted(self.counts.by_type.items()))
        lines = [
            f"projection benchmark: {self.events:,} events x {self.rounds} round(s), nats-server "
            f"{self.server_version or '?'}",
            f"mix: {self.counts.runs:,} runs; {mix}",
            f"published with bus.emit + flush: {self.published.events:,} events in {self.published.seconds:.1f}s "
            f"({self.published.rate:,.0f}/s)",
            "",
            f"{'round':>5}  {'side':<24}{'events':>9}{'seconds':>10}{'events/s':>11}{'us/event':>10}",
        ]
        names = {"raw_ack": "raw, fetch 500 + ack", "raw_noack": "raw, fetch 500, no ack",
                 "tether": "tether, 4 views, 1 proc", "tether_pool": f"tether, 4 views, {self.processes} procs"}
        for s in self.samples:
            lines.append(f"{s.round:>5}  {names[s.side]:<24}{s.events:>9,}{s.seconds:>10.2f}{s.rate:>11,.0f}"
                         f"{1e6 / s.rate:>10.1f}")
        lines.append("")
        for side in self.sides:
            m = self.median(side)
            lines.append(f"{'median':>5}  {names[side]:<24}{'':>19}{m:>11,.0f}{1e6 / m:>10.1f}")
        lines += [
            "",
            f"tether ({names[self.best]}) / raw with acks = {self.ratio:.2f} (target >= {TARGET_RATIO:.2f}): "
            f"{'PASS' if self.ratio >= TARGET_RATIO else 'FAIL'}"
            + (f"; by round {', '.join(f'{r:.2f}' for r in self.round_ratios)}" if self.rounds > 1 else ""),
            f"tether ({names[self.best]}) / raw without acks = {self.median(self.best) / self.median('raw_noack'):.2f}",
        ]
        if self.best != "tether":
            lines.append(f"tether (1 process) / raw with acks = {self.median('tether') / self.median('raw_ack'):.2f}")
        if self.rebuild is not None:
            rb = self.rebuild
            lines += ["", f"rebuild of {rb.events:,} events (tether.projections.replay, all four views, "
                          f"{self.processes} process(es), in a child process)"]
            if rb.published is not None:
                lines.append(f"  log topped up by {rb.published.events:,} events in {rb.published.seconds:.1f}s "
                             f"({rb.published.rate:,.0f}/s)")
            rss = rb.rss_kib_at_percent
            head = f", {rb.seconds_to_head:.1f}s to the head, the rest checksums and swap" \
                if rb.seconds_to_head is not None else ""
            lines += [
                f"  wall time {rb.seconds:.1f}s ({rb.events / rb.seconds:,.0f} events/s{head}): "
                f"{'PASS' if self.rebuild_ok else 'FAIL'} (target <= {TARGET_REBUILD_S:.0f}s)",
                "  by % of the log:  " + "".join(f"{p if p else 'start':>7}" for p in sorted(rss)),
                "    RSS, MiB        " + "".join(f"{rss[p] / 1024:>7.0f}" for p in sorted(rss)),
                "    elapsed, s      " + "".join(f"{rb.seconds_at_percent.get(p, 0):>7.1f}" for p in sorted(rss)),
                f"  RSS growth from 10% to 100% of the log: {rb.growth_kib / 1024:+.1f} MiB; peak RSS (VmHWM) "
                f"{rb.peak_rss_kib / 1024:.0f} MiB (sampled every 0.1 s: {rb.rss_kib_sampled_peak / 1024:.0f} MiB; "
                f"ru_maxrss {rb.ru_maxrss_kib / 1024:.0f} MiB includes the parent's peak, inherited over exec)",
                "  views: " + ("OK (seq = head, ledger rows = completed calls, runs = run.started, nothing failed)"
                               if not rb.problems else "MISMATCH: " + "; ".join(rb.problems)),
            ]
        lines.append(f"(the parent process, which publishes and measures the 200k: ru_maxrss "
                     f"{self.parent_ru_maxrss_kib / 1024:.0f} MiB)")
        return "\n".join(lines)


async def run(url: str, home: Path, *, events: int, rounds: int, rebuild_events: int, quiet: bool,
              processes: int) -> Report:
    bus = await connect(url=url, home=home)
    raw_nc: NATS = await nats.connect(url, name="bench-raw")
    try:
        raw_js = raw_nc.jetstream()
        if (await raw_js.stream_info(EVENTS_STREAM)).state.messages:
            raise VerificationError("EVENTS is not empty")
        mix = event_mix()
        counts = Counts()
        marks: dict[int, Counts] = {events: Counts()}
        if 0 < rebuild_events < events:
            marks[rebuild_events] = Counts()
        progress(f"publishing {events:,} events", quiet)
        published = await publish(bus, mix, events, counts, marks, quiet=quiet, label="log")
        head = (await raw_js.stream_info(EVENTS_STREAM)).state.last_seq
        if head != events:
            raise VerificationError(f"EVENTS head is {head}, published {events}")
        samples: list[Sample] = []
        views_root = home / "views"
        for rnd in range(1, rounds + 1):
            for side in SIDES:
                if side == "tether_pool" and processes < 2:
                    continue
                if side in ("tether", "tether_pool"):
                    seconds = await consume_tether(bus, views_root / f"round-{rnd}-{side}", head, marks[events],
                                                   processes=processes if side == "tether_pool" else 1)
                else:
                    seconds = await consume_raw(raw_js, raw_nc, head, ack=side == "raw_ack",
                                                name=f"bench-{side.replace('_', '-')}-{rnd}")
                sample = Sample(rnd, side, head, seconds)
                samples.append(sample)
                progress(f"  round {rnd} {side:<9} {head:>9,} events {seconds:>7.2f}s {sample.rate:>9,.0f}/s", quiet)
        rebuild: Rebuild | None = None
        if rebuild_events:
            more: Published | None = None
            if rebuild_events > events:
                progress(f"topping the log up to {rebuild_events:,} events for the rebuild", quiet)
                marks[rebuild_events] = Counts()
                more = await publish(bus, mix, rebuild_events - events, counts, marks, quiet=quiet, label="rebuild log")
            head = (await raw_js.stream_info(EVENTS_STREAM)).state.last_seq
            if head != counts.events:
                raise VerificationError(f"EVENTS head is {head}, published {counts.events}")
            out = home / "rebuilt"
            progress(f"rebuilding {rebuild_events:,} events into {out} (child process, {processes} fold process(es))",
                     quiet)
            got = run_rebuild_child(url, out, rebuild_events if rebuild_events < head else None, quiet, processes)
            problems = check_views(out).problems(rebuild_events, marks[rebuild_events])
            rebuild = Rebuild(rebuild_events, more, got["seconds"], got["seconds_to_head"], got["rss_kib_at_percent"],
                              got["seconds_at_percent"], got["rss_kib_sampled_peak"], got["peak_rss_kib"],
                              got["ru_maxrss_kib"], problems)
        return Report(events=events, rounds=rounds, published=published, samples=samples, counts=marks[events],
                      rebuild=rebuild, server_version=(await bus.status())["server"]["version"], processes=processes,
                      parent_ru_maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    finally:
        await raw_nc.close()
        await bus.close()


# -- profiling ------------------------------------------------------------------------------------


async def profile_tether(url: str, home: Path, *, events: int, out: Path) -> str:
    """The projector alone under cProfile: the event loop (fetch, decode) and the views' thread."""
    loop_prof, apply_prof = cProfile.Profile(), cProfile.Profile()

    class Profiled(Projector):
        def _apply(self, items: Sequence[Item], through: int, at: float | None = None) -> dict[str, set[str]]:
            apply_prof.enable()
            try:
                return super()._apply(items, through, at)
            finally:
                apply_prof.disable()

    bus = await connect(url=url, home=home)
    try:
        counts = Counts()
        await publish(bus, event_mix(), events, counts, {}, quiet=False, label="log")
        loop_prof.enable()
        seconds = await consume_tether(bus, home / "views", events, counts, projector_cls=Profiled)
        loop_prof.disable()
    finally:
        await bus.close()
    loop_prof.dump_stats(out)
    apply_prof.dump_stats(f"{out}.views")
    text = io.StringIO()
    print(f"projector only, under cProfile: {events:,} events in {seconds:.2f}s ({events / seconds:,.0f}/s; "
          f"cProfile slows it down); stats in {out} (event loop) and {out}.views (views' thread)", file=text)
    for title, prof in (("event loop: fetch, decode, notify", loop_prof),
                        ("views' thread: fold and write", apply_prof)):
        print(f"\n==== {title} ====", file=text)
        stats = pstats.Stats(prof, stream=text).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
    return text.getvalue()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000, help="events in the log consumed (200000)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of raw-ack, raw-noack, tether (1)")
    parser.add_argument("--rebuild-events", type=int, default=1_000_000,
                        help="events in the log rebuilt with replay (1000000; 0: no rebuild)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="instead: profile the projector only, write pstats to FILE and FILE.views")
    parser.add_argument("--processes", type=int, default=default_processes(),
                        help="processes tether folds the views in, as `tether projector --processes` "
                             f"(default here: {default_processes()}); 1 process is measured too")
    parser.add_argument("--rebuild-child", nargs=3, metavar=("URL", "OUT", "TO_SEQ"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.events < 1 or args.rounds < 1 or args.rebuild_events < 0:
        parser.error("--events and --rounds must be >= 1, --rebuild-events >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rebuild_child:
        url, out, to_seq = args.rebuild_child
        print(json.dumps(asyncio.run(rebuild_child(url, Path(out), int(to_seq) or None, quiet=args.json,
                                                   processes=args.processes))))
        return 0
    server = NatsServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="tether-bench-") as home:
            if args.profile is not None:
                print(asyncio.run(profile_tether(server.url, Path(home), events=args.events, out=args.profile)))
                return 0
            progress(f"nats-server at {server.url} (pid {server.pid}), store {server.directory}", args.json)
            report = asyncio.run(run(server.url, Path(home), events=args.events, rounds=args.rounds,
                                     rebuild_events=args.rebuild_events, quiet=args.json, processes=args.processes))
    except VerificationError as exc:
        print(f"verification failed: {exc}", file=sys.stderr)
        return 1
    finally:
        server.close()
    print(json.dumps(report.as_json(), indent=2) if args.json else report.table())
    return 0 if report.verified else 1


if __name__ == "__main__":
    sys.exit(main())
