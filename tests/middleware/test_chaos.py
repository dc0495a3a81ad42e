"""Chaos tests for the executor: real nats-server, real HTTP, real worker processes killed for real.

Each test gets its own nats-server (``fresh_nats_server``), so the durable consumer, the KV
buckets and the streams hold only what the test did, and its own fake provider(s), so the
provider's request log is the test's alone. Every test bounds its own runtime
(``anyio.fail_after``) and stops every process it started, by PID, in ``finally``.

1. 1,000 calls against 30% mixed faults, through one worker subprocess: every call ends
   completed or dead-lettered, exactly once, and each call's recorded attempts match the
   requests the provider received for it (the worker sends the call id as Idempotency-Key).
2. Two worker subprocesses under load, one SIGKILLed: every call completes, once; the calls
   the dead worker had in flight are taken over after ``--ack-wait`` and show the cut attempt.
3. The provider down for 10 s with a breaker and a fallback: one ``circuit.opened`` per open
   period, one probe request per half-open, closed after the outage, no request to the
   provider while open except the probes.
4. A burst of malformed work messages interleaved with good calls: the good ones complete,
   the bad ones are dead-lettered as ``malformed``, the worker keeps running.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tether.bus import Bus, connect, event_filter
from tether.middleware import (
    BreakerPolicy,
    CallFailed,
    CallResult,
    DurableCalls,
    Executor,
    FallbackPolicy,
    Policy,
    PolicySet,
    ProviderConfig,
    RetryPolicy,
    RunawayGuard,
    Target,
    deadletter,
)
from tether.middleware._work import CALLS_BUCKET, CallRecord
from tether.schemas import Event, uuid7
from tether.testing import NatsServer, collect
from tether.testing.fake_provider import FakeProvider, LoggedRequest

pytestmark = [pytest.mark.anyio, pytest.mark.nats, pytest.mark.slow]

TETHER = (sys.executable, "-m", "tether")


# --- helpers -------------------------------------------------------------------------------


def chat(i: int) -> dict[str, Any]:
    """A distinct request per call (the runaway guard counts identical ones)."""
    return {"messages": [{"role": "user", "content": f"chaos request {i}"}], "max_tokens": 16}


def worker_config(path: Path, providers: dict[str, str]) -> Path:
    """A ``tether.toml`` for ``tether worker``: OpenAI-compatible providers by base URL, a short
    retry policy (3 attempts, 10-50 ms backoff), no breaker, the default runaway guard."""
    lines = []
    for name, url in providers.items():
        lines += [f"[providers.{name}]", 'kind = "openai"', f'base_url = "{url}"', ""]
    lines += [
        '[routes."*"]', "timeout_s = 5.0", "",
        '[routes."*".retry]', "max_attempts = 3", "base_delay_s = 0.01", "max_delay_s = 0.05", "",
        '[routes."*".breaker]', "enabled = false", "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class Worker:
    """A ``tether worker`` child process."""

    proc: asyncio.subprocess.Process
    worker_id: str
    stderr: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def errors(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1")
    return env


@asynccontextmanager
async def workers(url: str, config: Path, home: Path, count: int, *, concurrency: int = 16,
                  ack_wait: float = 30.0) -> AsyncIterator[list[Worker]]:
    """``count`` worker processes, started in parallel; each is stopped (by its PID) on the way out:
    SIGTERM, then SIGKILL if it does not stop within 30 s. Each has 120 s to start: a Python process
    importing tether can take 40 s on a loaded machine."""
    started: list[Worker] = []
    procs: list[asyncio.subprocess.Process] = []
    try:
        for n in range(count):
            err = home / f"worker-{n}.stderr"
            with err.open("wb") as stderr:
                procs.append(await asyncio.create_subprocess_exec(
                    *TETHER, "worker", "--url", url, "--home", str(home / f"worker-{n}"), "--config", str(config),
                    "--concurrency", str(concurrency), "--ack-wait", str(ack_wait),
                    env=child_env(), cwd=home, stdout=asyncio.subprocess.PIPE, stderr=stderr))
        for n, proc in enumerate(procs):
            assert proc.stdout is not None
            with anyio.fail_after(120):
                line = (await proc.stdout.readline()).decode()
            err = home / f"worker-{n}.stderr"
            assert " running: " in line, f"worker did not start: {line!r}\n{err.read_text()}"
            started.append(Worker(proc, line.split()[1], err))
        yield started
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)  # this process, by its PID
        for proc in procs:
            try:
                with anyio.fail_after(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def run_all(calls: DurableCalls, bodies: Iterable[tuple[str, str, dict[str, Any], str]], *,
                  concurrency: int) -> list[CallResult | CallFailed]:
    """Run ``(provider, model, body, run id)`` calls, at most ``concurrency`` at once; each one's
    outcome, a result or ``CallFailed`` (anything else is a bug and propagates)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(provider: str, model: str, body: dict[str, Any], run: str) -> CallResult | CallFailed:
        async with gate:
            try:
                return await calls.llm(provider, model, body, runid=run, agentid="chaos")
            except CallFailed as failed:
                return failed

    return list(await asyncio.gather(*(one(*args) for args in bodies)))


@dataclass
class Story:
    """What the log says about each call."""

    by_call: dict[str, list[Event]] = field(default_factory=lambda: defaultdict(list))
    other: list[Event] = field(default_factory=list)

    @classmethod
    async def read(cls, bus: Bus) -> Story:
        await bus.flush()
        story = cls()
        for r in await collect(bus):
            assert r.event is not None, f"an invalid event in the log: {r}"
            call_id = getattr(r.event.data, "call_id", None)
            (story.by_call[call_id] if call_id else story.other).append(r.event)
        return story

    def kinds(self, call_id: str) -> Counter[str]:
        return Counter(e.type.removeprefix("tether.") for e in self.by_call.get(call_id, []))

    def of(self, call_id: str, kind: str) -> list[Any]:
        return [e.data for e in self.by_call.get(call_id, []) if e.type == f"tether.{kind}"]


def check_terminal(story: Story, call_id: str) -> str:
    """Exactly one terminal outcome: ``completed``, or ``failed`` with its dead letter."""
    kinds = story.kinds(call_id)
    assert kinds["llm.call.requested"] == 1, (call_id, kinds)
    done = (kinds["llm.call.completed"], kinds["llm.call.failed"], kinds["call.dead_lettered"])
    assert done in ((1, 0, 0), (0, 1, 1)), f"call {call_id} has no single outcome: {kinds}"
    return "completed" if done[0] else "dead_lettered"


def attempts_recorded(story: Story, call_id: str, *, cut_may_complete: bool = False) -> int:
    """Attempts the log records for a call: each failed one, plus the completed one, numbered
    1, 2, 3... With ``cut_may_complete``, the completion may carry the number of the last failed
    attempt: a worker that died after its completion reached the log, but before its KV record
    did, leaves that attempt to be counted as cut and repeated (the repeat's completion is a
    duplicate, dropped)."""
    failed = sorted(f.attempt for f in story.of(call_id, "llm.call.attempt_failed"))
    completed = [c.attempt for c in story.of(call_id, "llm.call.completed")]
    assert failed == list(range(1, len(failed) + 1)), f"call {call_id}: failed attempts {failed}"
    allowed = [[], [len(failed) + 1]] + ([[len(failed)]] if cut_may_complete and failed else [])
    assert completed in allowed, f"call {call_id}: completed attempt {completed} after {failed}"
    return len(failed) + len(completed)


def wait_stopped(pid: int) -> None:
    """Until the kernel has stopped ``pid`` (SIGSTOP is delivered asynchronously)."""
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.002)


def requests_by_call(log: Iterable[LoggedRequest], model: str) -> Counter[str]:
    return Counter(r.idempotency_key or "?" for r in log if r.model == model)


# --- 1. a thousand calls against 30% mixed faults -------------------------------------------

MIXED_FAULTS = "429(0.05s):0.1,500:0.08,503:0.05,reset:0.03,malformed_json:0.02,400:0.02"


async def test_a_thousand_calls_against_mixed_faults_end_exactly_once(
        fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    """1,000 calls, 50 at a time, through ``DurableCalls`` and one worker subprocess, with 30%
    of the provider's answers faulty (429 with Retry-After, 500, 503, connection reset,
    malformed JSON, 400). The default runaway guard is on: 20 runs of 50 calls each."""
    model = f"chaos-mix-{uuid7()[-12:]}"
    n = 1000
    started = time.monotonic()
    with anyio.fail_after(300):
        async with AsyncExitStack() as stack:
            fake = await stack.enter_async_context(FakeProvider(seed=11, faults=MIXED_FAULTS))
            bus = await stack.enter_async_context(await connect(fresh_nats_server.url, home=tmp_path / "home"))
            config = worker_config(tmp_path / "tether.toml", {"fake": fake.url})
            [worker] = await stack.enter_async_context(
                workers(fresh_nats_server.url, config, tmp_path, 1, concurrency=64))
            calls = await stack.enter_async_context(DurableCalls(bus, deadline_s=60))
            outcomes = await run_all(calls, (("fake", model, chat(i), f"run-{i % 20}") for i in range(n)),
                                     concurrency=50)
            took = time.monotonic() - started
            story = await Story.read(bus)
            letters = await deadletter.list_dead_letters(bus)
            assert worker.proc.returncode is None, "the worker stopped"
            worker_errors = worker.errors()

    completed = {o.call_id for o in outcomes if isinstance(o, CallResult)}
    failed = {o.call_id for o in outcomes if isinstance(o, CallFailed)}
    assert len(completed) + len(failed) == n == len(completed | failed), "every caller got one answer"
    assert {o.reason for o in outcomes if isinstance(o, CallFailed)} <= {"exhausted", "not_retryable"}

    # none lost, none twice: every call has exactly one terminal event, matching its caller's answer
    ends = {cid: check_terminal(story, cid) for cid in completed | failed}
    assert {cid for cid, end in ends.items() if end == "completed"} == completed
    assert {cid for cid, end in ends.items() if end == "dead_lettered"} == failed
    assert set(story.by_call) == completed | failed, "no events for calls nobody made"
    assert {d.call_id for d in letters} == failed and len(letters) == len(failed), "one dead letter each"
    reasons = Counter(d.reason for d in letters)
    assert set(reasons) <= {"exhausted", "not_retryable"}, reasons
    by_call = {d.call_id: d.reason for d in letters}
    assert all(by_call[o.call_id] == o.reason for o in outcomes if isinstance(o, CallFailed)), \
        "each caller is told its dead letter's reason"

    # every attempt recorded is a request the provider received, per call
    requests = requests_by_call(fake.log, model)
    attempts = {cid: attempts_recorded(story, cid) for cid in ends}
    mismatched = {cid: (attempts[cid], requests[cid]) for cid in ends if attempts[cid] != requests[cid]}
    assert not mismatched, f"attempts vs provider requests differ: {list(mismatched.items())[:10]}"
    assert sum(requests.values()) == sum(attempts.values()) == len([r for r in fake.log if r.model == model])
    for letter in letters:
        assert letter.attempts == attempts[letter.call_id]

    faulty = sum(v for k, v in fake.outcomes.items() if k != "200")
    print(f"\n1,000 calls against {MIXED_FAULTS} (worker subprocess, 50 at a time): {len(completed)} completed, "
          f"{len(failed)} dead-lettered {dict(reasons)}; {sum(attempts.values())} attempts recorded = "
          f"{sum(requests.values())} provider requests ({faulty} faulty: {fake.outcomes}); {took:.1f} s")
    assert "Traceback" not in worker_errors, worker_errors[-3000:]


# --- 2. a worker killed with SIGKILL under load ---------------------------------------------


async def test_a_worker_killed_under_load_loses_nothing(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    """Two worker subprocesses, 200 calls against a provider answering in 250 ms; one worker is
    SIGKILLed (by its PID) while it has calls in flight. JetStream redelivers its unacked
    messages after ``--ack-wait`` (3 s here) to the other worker, which records each cut
    attempt as ``WorkerLost`` and runs the call to completion."""
    model = f"chaos-kill-{uuid7()[-12:]}"
    n = 200
    ack_wait = 3.0
    with anyio.fail_after(300):
        async with AsyncExitStack() as stack:
            fake = await stack.enter_async_context(FakeProvider(seed=3, latency="250ms"))
            bus = await stack.enter_async_context(await connect(fresh_nats_server.url, home=tmp_path / "home"))
            config = worker_config(tmp_path / "tether.toml", {"fake": fake.url})
            victim, survivor = await stack.enter_async_context(
                workers(fresh_nats_server.url, config, tmp_path, 2, concurrency=16, ack_wait=ack_wait))
            calls = await stack.enter_async_context(DurableCalls(bus, deadline_s=60))
            started = time.monotonic()
            running = asyncio.ensure_future(run_all(
                calls, (("fake", model, chat(i), "run-kill") for i in range(n)), concurrency=n))

            async def victims_calls() -> tuple[set[str], list[CallRecord]]:
                """The victim's in-flight calls, as the KV records them: each key's last value, read by
                one consumer of the bucket's stream (reading 200 keys one by one took seconds on a loaded
                machine, long enough for the victim to finish the calls it was seen with; a KV watch's
                "all delivered" marker can come before the values)."""
                sub = await bus.js.pull_subscribe(
                    f"$KV.{CALLS_BUCKET}.>", stream=f"KV_{CALLS_BUCKET}",
                    config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                                          inactive_threshold=30.0))
                records: list[CallRecord] = []
                try:
                    remaining = (await sub.consumer_info()).num_pending or 0  # the keys' last values, first
                    while remaining > 0:
                        msgs = await sub.fetch(min(remaining, 500), timeout=10)
                        records += [CallRecord.from_json(m.data or b"{}") for m in msgs
                                    if (m.headers or {}).get("KV-Operation") not in ("DEL", "PURGE")]
                        remaining -= len(msgs)
                finally:
                    await sub.unsubscribe()
                mine = {r.call_id for r in records if r.in_flight and r.in_flight["worker"] == victim.worker_id}
                return mine, records

            try:
                # Under way, and the victim busy (on a loaded machine it may start late and take nothing
                # at first). It is frozen (SIGSTOP) before its calls are read, so the calls it dies with
                # are the ones read: a victim still running could finish them between the read and the
                # kill (it did, under load). Nobody else touches them until JetStream redelivers them,
                # at least 2/3 of ack_wait after the stop (it sends a keepalive every ack_wait / 3).
                while True:
                    while not running.done() and not (len(fake.log) >= 50 and (await victims_calls())[0]):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)  # (polling another process)
                    os.kill(victim.pid, signal.SIGSTOP)
                    killed_at = time.time()  # it does nothing more from here
                    await asyncio.to_thread(wait_stopped, victim.pid)
                    in_flight, records = await victims_calls()
                    if in_flight or running.done():
                        break
                    os.kill(victim.pid, signal.SIGCONT)  # it finished them after all: again
                os.kill(victim.pid, signal.SIGKILL)
                await victim.proc.wait()
                done_before_kill = sum(1 for r in records if r.state == "completed")
                outcomes = await running
            finally:
                if not running.done():
                    running.cancel()
            took = time.monotonic() - started
            story = await Story.read(bus)
            assert survivor.proc.returncode is None, "the surviving worker stopped"
            survivor_errors = survivor.errors()

    assert victim.proc.returncode == -signal.SIGKILL
    failures = [o for o in outcomes if isinstance(o, CallFailed)]
    assert not failures, f"{len(failures)} calls failed, e.g. {failures[:3]}"
    assert len({o.call_id for o in outcomes}) == n
    assert in_flight, "the killed worker had calls in flight"
    for o in outcomes:
        assert check_terminal(story, o.call_id) == "completed"  # exactly once, none lost

    lost = {cid: [f for f in story.of(cid, "llm.call.attempt_failed") if f.error.type == "WorkerLost"]
            for cid in story.by_call}
    lost = {cid: f for cid, f in lost.items() if f}
    assert set(lost) == in_flight, "exactly the dead worker's in-flight calls show a cut attempt"
    for cid, [cut] in lost.items():
        assert victim.worker_id in cut.error.message and cut.decision == "retry"
        [done] = story.of(cid, "llm.call.completed")
        if done.attempt == cut.attempt:
            # The dead worker's completion reached the log an instant before it died, before its
            # KV record did: the survivor's repeat was dropped as a duplicate, as it must be.
            continue
        assert done.attempt == cut.attempt + 1
        [done_event] = [e for e in story.by_call[cid] if e.type == "tether.llm.call.completed"]
        [cut_event] = [e for e in story.by_call[cid] if e.type == "tether.llm.call.attempt_failed"
                       and e.data.error.type == "WorkerLost"]  # type: ignore[attr-defined]
        # The survivor takes a call over when JetStream redelivers it: ack_wait after the last
        # keepalive (in_progress, every ack_wait / 3) of the dead worker that reached the server.
        # That keepalive may be an interval or more before the kill (more when the machine is
        # loaded), so ack_wait after the kill is no bound (seen: taken over 1.1 to 1.4 s after
        # it); that the survivor recorded the cut after the kill and then completed the call is.
        assert killed_at < cut_event.time.timestamp() <= done_event.time.timestamp(), "completed by the survivor"

    # each provider request is a recorded attempt; a cut attempt may not have reached the provider
    requests = requests_by_call(fake.log, model)
    for o in outcomes:
        recorded = attempts_recorded(story, o.call_id, cut_may_complete=o.call_id in lost)
        assert requests[o.call_id] <= recorded <= requests[o.call_id] + (o.call_id in lost)
    print(f"\nSIGKILL under load: {n} calls, 2 workers, killed one with {len(in_flight)} calls in flight "
          f"({done_before_kill} completed before); all {n} completed once; {len(lost)} WorkerLost attempts; "
          f"{sum(requests.values())} provider requests; {took:.1f} s (ack_wait {ack_wait} s)")
    assert "Traceback" not in survivor_errors, survivor_errors[-3000:]


# --- 3. the provider down for 10 s --------------------------------------------------------------


async def test_provider_down_for_ten_seconds_opens_the_breaker_once_and_probes_once(
        fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    """A steady trickle of calls (one every 100 ms) to ``main``, which goes down for 10 s.
    Two executors (each with its own connection, so the breaker is shared only through KV)
    run the calls; the route has a breaker (3 failures in a row, 2 s cooldown) and falls back
    to ``backup``, which stays up.

    Expected: per open period one ``circuit.opened`` and then one ``circuit.half_opened``
    whose probe is the only request ``main`` receives until the next transition; while open,
    calls fall back and ``main`` sees nothing; once ``main`` is back a probe closes it
    (``circuit.closed``) and traffic returns at the trickle's pace, not as a herd."""
    model = "chaos-brk"
    route = f"main:{model}"
    cooldown, outage, pace = 2.0, 10.0, 0.1
    policy = Policy(retry=RetryPolicy(max_attempts=2, base_delay_s=0.02, max_delay_s=0.1), timeout_s=3.0,
                    breaker=BreakerPolicy(failure_streak=3, cooldown_s=cooldown),
                    fallback=FallbackPolicy(targets=(Target("backup", model),), max_fallbacks=1))
    pset = PolicySet(routes={"*": Policy(breaker=BreakerPolicy(enabled=False)), route: policy},
                     runaway=RunawayGuard(max_calls_per_run=None, max_identical_calls=None))
    outcomes: list[CallResult | CallFailed] = []
    with anyio.fail_after(60):
        async with AsyncExitStack() as stack:
            main = await stack.enter_async_context(FakeProvider(seed=5))
            backup = await stack.enter_async_context(FakeProvider(seed=6))
            providers = {"main": ProviderConfig("main", "openai", main.url),
                         "backup": ProviderConfig("backup", "openai", backup.url)}
            buses = [await stack.enter_async_context(await connect(fresh_nats_server.url, home=tmp_path / f"h{i}"))
                     for i in range(3)]
            for i, bus in enumerate(buses[1:]):
                await stack.enter_async_context(Executor(bus, policies=pset, providers=providers, concurrency=16,
                                                         seed=i, worker_id=f"exec-{i}"))
            calls = await stack.enter_async_context(DurableCalls(buses[0], deadline_s=30))
            # the fake logs monotonic seconds since it started; events carry wall-clock times
            clock = time.time() - time.monotonic() + main._state.started

            async def one(i: int) -> None:
                try:
                    outcomes.append(await calls.llm("main", model, chat(i), runid="run-brk"))
                except CallFailed as failed:
                    outcomes.append(failed)

            async def closed_at() -> float | None:
                await buses[1].flush()
                await buses[2].flush()
                events = [r.event for r in await collect(buses[0], event_filter(kind="circuit", action="closed"))
                          if r.event is not None and r.event.data.route == route]  # type: ignore[attr-defined]
                return events[0].time.timestamp() if events else None

            tasks: list[asyncio.Task[None]] = []
            test_started = time.monotonic()
            try:
                for i in range(10):  # a second of normal traffic
                    tasks.append(asyncio.create_task(one(i)))
                    await asyncio.sleep(pace)
                down_at = time.time()
                main.down_for(outage)
                closed: float | None = None
                while closed is None or time.time() < closed + 1.5:  # until 1.5 s after it closed
                    tasks.append(asyncio.create_task(one(len(tasks))))
                    await asyncio.sleep(pace)
                    if closed is None and time.time() > down_at + outage:
                        closed = await closed_at()
                    assert time.time() < down_at + outage + 3 * cooldown + 5, "the breaker never closed"
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
            took = time.monotonic() - test_started
            story = await Story.read(buses[0])

    failures = [o for o in outcomes if isinstance(o, CallFailed)]
    assert not failures, f"calls failed instead of falling back: {failures[:3]}"
    circuit = [e for e in story.other if e.type.startswith("tether.circuit.") and e.data.route == route]
    kinds = [e.type.removeprefix("tether.circuit.") for e in circuit]
    periods = kinds.count("opened")
    assert kinds == ["opened", "half_opened"] * periods + ["closed"], kinds
    assert periods >= outage / cooldown - 1, "one open period per cooldown while the provider is down"
    assert circuit[0].time.timestamp() > down_at
    assert circuit[-1].time.timestamp() >= down_at + outage, "closed only once the provider was back"

    def wall(r: LoggedRequest) -> float:
        return clock + r.time

    to_main = [r for r in main.log if r.model == model]
    grace = 0.05  # a request dispatched just before the breaker opened may arrive just after
    bounds = [e.time.timestamp() for e in circuit]
    for k in range(periods):
        opened, half_opened, nxt = bounds[2 * k], bounds[2 * k + 1], bounds[2 * k + 2]
        during_open = [r for r in to_main if opened + grace < wall(r) < half_opened]
        assert not during_open, f"open period {k}: {len(during_open)} requests reached the provider"
        probes = [r for r in to_main if half_opened <= wall(r) < nxt]
        assert [r.idempotency_key for r in probes] == [circuit[2 * k + 1].data.probe_call_id], \
            f"half-open {k}: {len(probes)} requests instead of its one probe"
    after = [r for r in to_main if bounds[-1] <= wall(r) < bounds[-1] + 1.0]
    assert len(after) <= 1.0 / pace + 5, f"{len(after)} requests in the first second after closing: a herd"
    fell_back = sum(1 for o in outcomes if isinstance(o, CallResult) and o.response["model"] == model
                    and any(r.idempotency_key == o.call_id for r in backup.log))
    print(f"\nprovider down {outage:.0f} s: {len(outcomes)} calls, all completed ({fell_back} on the fallback); "
          f"breaker events {Counter(kinds)}; {len(to_main)} requests to main, "
          f"{sum(1 for r in to_main if down_at <= wall(r) <= down_at + outage)} during the outage "
          f"({periods} probes); {took:.1f} s")


# --- 4. malformed messages in a burst of good calls ---------------------------------------------


def malformed(i: int) -> tuple[str, bytes]:
    """The ``i``-th bad work message: (subject, payload), each one different."""
    tag = f"bad-{i}-{uuid7()[-8:]}"
    kinds: list[tuple[str, bytes]] = [
        ("tether.work.llm.fake", b"{not json " + tag.encode()),
        ("tether.work.llm.fake", json.dumps([tag, i]).encode()),
        ("tether.work.llm.fake", json.dumps({"call_id": tag, "kind": "nope"}).encode()),
        ("tether.work.llm.fake", json.dumps({"call_id": tag, "kind": "llm", "provider": "fake", "model": "m",
                                             "surprise": True}).encode()),
        ("tether.work.llm.fake", json.dumps({"kind": "llm", "provider": "fake", "note": tag}).encode()),
        ("tether.work.tool.x", json.dumps({"call_id": tag, "kind": "tool", "deadline_at": "soon"}).encode()),
        ("tether.work.llm.fake", b"\xff\xfe\x00" + tag.encode() + bytes(range(256))),
        ("tether.work.llm.fake", json.dumps({"call_id": tag + "x" * 2000, "kind": "llm"}).encode()),
        ("tether.work.llm.fake", json.dumps({"call_id": tag + "\r\nNats-Msg-Id: x", "kind": 7}).encode()),
        ("tether.work.llm.fake", json.dumps({"call_id": tag, "kind": "llm", "body": "not an object"}).encode()),
        # well-formed but for its call id, which cannot key the call's record (KV keys are
        # [-/_=.A-Za-z0-9]) nor travel in a header
        ("tether.work.llm.fake", json.dumps({"call_id": f"{tag} > *", "kind": "llm", "provider": "fake",
                                             "model": "m", "body": chat(i)}).encode()),
        ("tether.work.tool.x", json.dumps({"call_id": f"{tag}\r\nNats-Msg-Id: same", "kind": "tool",
                                           "tool": "x"}).encode()),
    ]
    return kinds[i % len(kinds)]


async def malformed_letters(bus: Bus, n: int, *, timeout: float) -> list[deadletter.DeadLetter]:
    """The dead letters of malformed messages, once there are ``n`` (or ``timeout`` has passed)."""
    letters: list[deadletter.DeadLetter] = []
    with anyio.move_on_after(timeout):
        while len(letters) < n:
            await asyncio.sleep(0.1)
            letters = [d for d in await deadletter.list_dead_letters(bus) if d.doc.get("subject")]
    return letters


async def test_malformed_burst_among_good_calls(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    """50 malformed work messages of twelve kinds, interleaved with 50 good calls, through a worker
    subprocess: every good call completes, every bad message is in the DLQ (reason
    ``malformed``, with its raw payload) with a ``call.dead_lettered`` event, and the worker
    keeps running and answering."""
    model = f"chaos-bad-{uuid7()[-12:]}"
    n = 50
    sent: dict[int, bytes] = {}
    with anyio.fail_after(300):
        async with AsyncExitStack() as stack:
            fake = await stack.enter_async_context(FakeProvider(seed=9))
            bus = await stack.enter_async_context(await connect(fresh_nats_server.url, home=tmp_path / "home"))
            config = worker_config(tmp_path / "tether.toml", {"fake": fake.url})
            [worker] = await stack.enter_async_context(workers(fresh_nats_server.url, config, tmp_path, 1))
            calls = await stack.enter_async_context(DurableCalls(bus, deadline_s=30))
            rng = random.Random(4)
            good: list[asyncio.Task[CallResult]] = []
            try:
                for i in range(n):
                    subject, payload = malformed(i)
                    ack = await bus.js.publish(subject, payload, headers={"Nats-Msg-Id": f"bad-{uuid7()}"})
                    sent[ack.seq] = payload
                    good.append(asyncio.create_task(calls.llm("fake", model, chat(i), runid="run-bad")))
                    await asyncio.sleep(rng.uniform(0, 0.01))
                results = await asyncio.gather(*good)
            finally:
                for task in good:
                    task.cancel()
            letters = await malformed_letters(bus, n, timeout=60)  # handled as they come: wait for the last
            after = await calls.llm("fake", model, chat(n), runid="run-bad")
            story = await Story.read(bus)
            assert worker.proc.returncode is None, "the worker stopped"
            worker_errors = worker.errors()

    assert all(r.response["choices"] for r in (*results, after))
    for r in (*results, after):
        assert check_terminal(story, r.call_id) == "completed"
    assert len(letters) == n and {d.reason for d in letters} == {"malformed"}
    assert sorted(d.doc["raw"] for d in letters) == sorted(p.decode("utf-8", errors="replace") for p in sent.values())
    assert all(d.error_type == "MalformedWorkItem" and d.error_message for d in letters)
    assert all(0 < len(d.call_id) <= 200 and d.call_id.isprintable() for d in letters), "claimed ids are vetted"
    dead = [e.data for events in story.by_call.values() for e in events if e.type == "tether.call.dead_lettered"]
    assert len(dead) == n and {d.reason for d in dead} == {"malformed"}
    assert {d.dlq_seq for d in dead} == {d.seq for d in letters}
    assert len([r for r in fake.log if r.model == model]) == n + 1, "bad messages never reached the provider"
    print(f"\nmalformed burst: {n} good calls completed, {len(letters)} malformed dead-lettered "
          f"({len({d.call_id for d in letters})} distinct ids), worker {worker.pid} still running")
    assert "Traceback" not in worker_errors, worker_errors[-3000:]
