"""Executor latency and cost: direct HTTP vs inline mode vs durable mode, in one run.

What is measured, in one run against one ``nats-server -js`` and one fake provider
started here (free loopback ports, temporary stores, stopped at the end):

* **direct**: ``httpx.AsyncClient.post`` of the request body to the fake provider's
  ``/v1/chat/completions``, then ``response.json()``: what a caller pays without tether.
* **inline**: ``InlineCalls.llm(...)``: the policy engine in the caller's process, the same
  HTTP request, and the events (requested, completed) on EVENTS.
* **durable**: ``DurableCalls.llm(...)``: the caller puts a work item on WORK and waits for
  the worker's reply; one worker **process** (``python -m tether worker --config <tmp
  tether.toml>``) runs the call and records it.

Every call carries a run id and an agent id, as an agent's calls do: each client lane is
one agent, and a run is ``CALLS_PER_RUN`` consecutive calls of a lane. Every request body is
different (a numbered question), as an agent's are. The fake provider answers at once
(no latency injected, unless ``--latency``), so what is measured is overhead, not waiting.

The policy is tether's defaults, written to the worker's ``tether.toml`` and loaded by the
inline caller from the same file: retries, breaker (no KV write while it is closed) and
timeouts on, no rate limits, no budgets, and the **runaway guard on** (500 calls per run,
5 identical calls). The guard is one compare-and-set on the run's record in KV per durable
call; ``--runaway both`` also measures a pass with it off (``[runaway] max_calls_per_run
= false``, ``max_identical_calls = false``), and ``--runaway off`` only that. ``--budget
USD`` gives every agent (lane) a dollar budget, so every call is admitted under it: a
reservation at admission and its settlement at the end, each a compare-and-set on the
agent's record (a budget far above what the run spends never refuses a call).

Each variant is warmed up, then each round runs direct, inline, durable at concurrency 1,
then again at concurrency ``--concurrency`` (50), with a closed-loop load generator: one
plain asyncio loop, ``N`` lanes each awaiting one call after another. The fake provider
and the worker run in processes of their own, so neither shares the client's CPU; the CPU
time of each process is read from ``/proc/<pid>/stat`` (utime + stime) before and after
each phase. Latencies pool the rounds; *added* latency is a variant's percentile minus
direct's at the same concurrency. At concurrency 50 the load saturates the machine, so
latency there is mostly queueing (Little's law: lanes / calls per second); the latency
targets are judged at concurrency 1, the throughput target at 50.

At the end every call must have succeeded, EVENTS must hold exactly one
``llm.call.requested`` and one ``llm.call.completed`` event per inline and durable call
(warm-up included), DLQ must be empty, and the fake provider must have served exactly one
request per call (no retries, nothing lost or repeated); otherwise the run fails.

Run it::

    .venv/bin/python bench/executor.py
    .venv/bin/python bench/executor.py --rounds 5 --calls 500 --calls-high 3000
    .venv/bin/python bench/executor.py --runaway both      # defaults, then the guard off
    .venv/bin/python bench/executor.py --budget 1000000    # every call under an agent budget
    .venv/bin/python bench/executor.py --json              # machine-readable results on stdout
    .venv/bin/python bench/executor.py --profile /tmp/prof # cProfile: worker process and
                                                           # the client's inline phases

The exit status is 1 if the verification fails, 0 otherwise (whatever the targets).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any, Literal

import httpx

from tether.bus import DLQ_STREAM, EVENTS_STREAM, Bus, connect
from tether.middleware import DurableCalls, InlineCalls, load_worker_config
from tether.testing import NatsServer

Variant = Literal["direct", "inline", "durable"]
VARIANTS: tuple[Variant, ...] = ("direct", "inline", "durable")
Runaway = Literal["on", "off"]

PROVIDER = "fake"
MODEL = "gpt-4o-mini"
CALLS_PER_RUN = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGET_DURABLE_P50_MS = 3.0
TARGET_DURABLE_P95_MS = 8.0
TARGET_INLINE_P50_MS = 1.0
TARGET_WORKER_CPU_MS = 3.0
TARGET_DURABLE_RATE = 300.0

SYSTEM = "You are a terse assistant. Answer in one sentence."


def body_for(n: int) -> dict[str, Any]:
    """The request body of call number ``n``: every call asks something different."""
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"Question {n}: which river flows through city {n % 997}?"}],
            "max_tokens": 32, "temperature": 0}


class VerificationError(RuntimeError):
    pass


# -- processes -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


class Child:
    """A process started here, with its output in a file; stopped by its own pid."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = Popen(argv, stdout=self._out, stderr=self._out, stdin=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for_line(self, ready: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if ready(line):
                    return line
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"{self.name} did not start (exit {self.popen.returncode}):\n{tail}")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()  # SIGTERM to this pid: both commands stop cleanly on it
            try:
                self.popen.wait(timeout)
            except Exception:
                self.popen.kill()
                self.popen.wait(5)
        self._out.close()


def start_provider(workdir: Path, latency: str | None) -> tuple[Child, str]:
    argv = [sys.executable, "-m", "tether", "fake-provider", "--port", "0", "--seed", "1"]
    if latency:
        argv += ["--latency", latency]
    child = Child("fake provider", argv, workdir / "provider.log")
    url = child.wait_for_line(lambda line: line.startswith("http://")).strip()
    return child, url


def write_config(path: Path, provider_url: str, runaway: Runaway, budget_usd: float | None = None) -> Path:
    text = f'[providers.{PROVIDER}]\nkind = "openai"\nbase_url = "{provider_url}"\n'
    if runaway == "off":
        text += "\n[runaway]\nmax_calls_per_run = false\nmax_identical_calls = false\n"
    if budget_usd is not None:
        text += f'\n[budgets.agent."*"]\nusd = {budget_usd!r}\n'
    path.write_text(text, encoding="utf-8")
    return path


def start_worker(workdir: Path, nats_url: str, config: Path, profile: Path | None) -> Child:
    prefix = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    argv = [*prefix, "-m", "tether", "worker", "--url", nats_url, "--home", str(workdir / "worker-home"),
            "--config", str(config)]
    child = Child("worker", argv, workdir / f"worker-{config.stem}.log")
    child.wait_for_line(lambda line: line.startswith("worker ") and " running" in line)
    return child


# -- samples ---------------------------------------------------------------------------------


@dataclass
class Phase:
    config: Runaway
    phase: Literal["warmup", "round"]
    round: int
    variant: Variant
    concurrency: int
    calls: int
    seconds: float
    latencies_ms: list[float]
    failures: list[str]
    cpu_s: dict[str, float]  # process -> CPU seconds spent during the phase

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Summary:
    config: Runaway
    variant: Variant
    concurrency: int
    calls: int
    p50: float
    p95: float
    p99: float
    rate: float  # median calls/s over the rounds
    cpu_ms_per_call: dict[str, float]
    added: dict[str, float] = field(default_factory=dict)  # p50/p95/p99 minus direct's


# -- the three variants --------------------------------------------------------------------


Call = Callable[[int, int, str, str], Awaitable[None]]


class Client:
    """The light load generator and the three ways of making one call."""

    def __init__(self, bus: Bus, provider_url: str, inline: InlineCalls, durable: DurableCalls) -> None:
        self.bus = bus
        self.url = provider_url.rstrip("/") + "/chat/completions"
        self.inline = inline
        self.durable = durable
        # One client (so one keep-alive connection) per lane: httpx's connection pool costs
        # more CPU the more connections it holds, and the baseline should not pay for that.
        self.lanes: list[httpx.AsyncClient] = []
        self.made = 0

    async def close(self) -> None:
        for client in self.lanes:
            await client.aclose()

    async def direct(self, n: int, lane: int, runid: str, agentid: str) -> None:
        body = body_for(n)
        body["model"] = MODEL
        while len(self.lanes) <= lane:
            self.lanes.append(httpx.AsyncClient())
        response = await self.lanes[lane].post(self.url, json=body)
        data = response.json()
        if response.status_code != 200 or not data.get("choices"):
            raise RuntimeError(f"direct call: HTTP {response.status_code}: {response.text[:200]}")

    async def via_inline(self, n: int, lane: int, runid: str, agentid: str) -> None:
        result = await self.inline.llm(PROVIDER, MODEL, body_for(n), runid=runid, agentid=agentid)
        if not result.response.get("choices"):
            raise RuntimeError(f"inline call {result.call_id}: no choices")

    async def via_durable(self, n: int, lane: int, runid: str, agentid: str) -> None:
        result = await self.durable.llm(PROVIDER, MODEL, body_for(n), runid=runid, agentid=agentid)
        if not result.response.get("choices"):
            raise RuntimeError(f"durable call {result.call_id}: no choices")

    def call(self, variant: Variant) -> Call:
        return {"direct": self.direct, "inline": self.via_inline, "durable": self.via_durable}[variant]

    async def drive(self, variant: Variant, tag: str, calls: int,
                    concurrency: int) -> tuple[float, list[float], list[str]]:
        """``calls`` calls from ``concurrency`` lanes; (seconds, latencies in ms, failures)."""
        call = self.call(variant)
        latencies: list[float] = []
        failures: list[str] = []
        issued = 0

        async def lane(k: int) -> None:
            nonlocal issued
            mine = 0
            agentid = f"bench-agent-{k}"
            while issued < calls:
                issued += 1
                self.made += 1
                runid = f"{tag}-l{k}-r{mine // CALLS_PER_RUN}"
                mine += 1
                started = time.perf_counter()
                try:
                    await call(self.made, k, runid, agentid)
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                latencies.append((time.perf_counter() - started) * 1000)

        gc.collect()
        started = time.perf_counter()
        await asyncio.gather(*(lane(k) for k in range(concurrency)))
        return time.perf_counter() - started, latencies, failures


# -- the run -------------------------------------------------------------------------------


@dataclass
class Report:
    args: dict[str, Any]
    phases: list[Phase]
    summaries: list[Summary]
    verification: dict[str, Any]
    server_version: str | None

    @property
    def verified(self) -> bool:
        return bool(self.verification.get("ok"))

    def summary(self, config: Runaway, variant: Variant, concurrency: int) -> Summary | None:
        for s in self.summaries:
            if (s.config, s.variant, s.concurrency) == (config, variant, concurrency):
                return s
        return None

    def targets(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        high = self.args["concurrency"]
        for config in dict.fromkeys(s.config for s in self.summaries):
            durable1 = self.summary(config, "durable", 1)
            inline1 = self.summary(config, "inline", 1)
            durable_high = self.summary(config, "durable", high)
            checks: list[tuple[str, float | None, float, str]] = [
                ("durable added p50 (c=1)", durable1.added["p50"] if durable1 else None,
                 TARGET_DURABLE_P50_MS, "ms"),
                ("durable added p95 (c=1)", durable1.added["p95"] if durable1 else None,
                 TARGET_DURABLE_P95_MS, "ms"),
                ("inline added p50 (c=1)", inline1.added["p50"] if inline1 else None, TARGET_INLINE_P50_MS, "ms"),
                (f"worker CPU per durable call (c={high})",
                 durable_high.cpu_ms_per_call["worker"] if durable_high else None, TARGET_WORKER_CPU_MS, "ms"),
            ]
            for name, value, limit, unit in checks:
                out.append({"config": config, "target": name, "value": value, "limit": f"<= {limit:g} {unit}",
                            "pass": value is not None and value <= limit})
            rate = durable_high.rate if durable_high else None
            out.append({"config": config, "target": f"durable throughput (c={high})", "value": rate,
                        "limit": f">= {TARGET_DURABLE_RATE:g} calls/s",
                        "pass": rate is not None and rate >= TARGET_DURABLE_RATE})
        return out

    def as_json(self) -> dict[str, Any]:
        def r(x: float | None, nd: int = 3) -> float | None:
            return None if x is None else round(x, nd)

        return {
            **self.args,
            "nats_server": self.server_version,
            "calls_per_run": CALLS_PER_RUN,
            "phases": [
                {"config": p.config, "phase": p.phase, "round": p.round, "variant": p.variant,
                 "concurrency": p.concurrency, "calls": p.calls, "seconds": r(p.seconds, 4),
                 "calls_per_s": r(p.rate, 1), "failures": len(p.failures),
                 "p50_ms": r(percentile(p.latencies_ms, 50)) if p.latencies_ms else None,
                 "cpu_ms_per_call": {k: r(v * 1000 / p.calls) for k, v in p.cpu_s.items()}}
                for p in self.phases
            ],
            "summary": [
                {"config": s.config, "variant": s.variant, "concurrency": s.concurrency, "calls": s.calls,
                 "p50_ms": r(s.p50), "p95_ms": r(s.p95), "p99_ms": r(s.p99),
                 "added_ms": {k: r(v) for k, v in s.added.items()},
                 "calls_per_s": r(s.rate, 1),
                 "cpu_ms_per_call": {k: r(v) for k, v in s.cpu_ms_per_call.items()}}
                for s in self.summaries
            ],
            "targets": [{**t, "value": r(t["value"], 2)} for t in self.targets()],
            "verification": self.verification,
            "verified": self.verified,
        }

    def table(self) -> str:
        a = self.args
        lines = [
            f"executor benchmark: {a['rounds']} round(s) of {a['calls']:,} calls at c=1 and "
            f"{a['calls_high']:,} at c={a['concurrency']} per variant, warm-up {a['warmup']:,}; "
            f"nats-server {self.server_version or '?'}, {os.cpu_count()} CPU(s), provider latency "
            f"{a['latency'] or 'none'}",
            "policy: tether defaults (retry, breaker, timeouts; no rate limits; "
            + (f"every agent a ${a['budget']:g} budget); " if a.get("budget") is not None else "no budgets); ")
            + f"runs of {CALLS_PER_RUN} calls, one agent per lane",
        ]
        for config in dict.fromkeys(s.config for s in self.summaries):
            lines += [
                "",
                f"runaway guard {config.upper()}"
                + (" (defaults: 500 calls/run, 5 identical)" if config == "on" else " ([runaway] ... = false)"),
                f"{'variant':<8}{'conc':>5}{'calls':>7}{'p50':>8}{'p95':>8}{'p99':>8}"
                f"{'+p50':>8}{'+p95':>8}{'+p99':>8}{'calls/s':>9}   CPU ms/call: "
                f"{'worker':>6}{'client':>7}{'nats':>6}{'fake':>6}",
            ]
            for s in self.summaries:
                if s.config != config:
                    continue
                added = (f"{s.added['p50']:>8.2f}{s.added['p95']:>8.2f}{s.added['p99']:>8.2f}"
                         if s.added else f"{'':>24}")
                cpu = s.cpu_ms_per_call
                lines.append(
                    f"{s.variant:<8}{s.concurrency:>5}{s.calls:>7,}{s.p50:>8.2f}{s.p95:>8.2f}{s.p99:>8.2f}"
                    f"{added}{s.rate:>9,.0f}   {'':>13}"
                    f"{cpu['worker']:>6.2f}{cpu['client']:>7.2f}{cpu['nats']:>6.2f}{cpu['provider']:>6.2f}")
        lines += ["", "latencies in ms; +pXX = added over direct at the same concurrency "
                      "(difference of the percentiles); at c>1 latency is mostly queueing", "", "targets:"]
        for t in self.targets():
            value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
            lines.append(f"  [{'PASS' if t['pass'] else 'FAIL'}] runaway {t['config']:<3} {t['target']:<34}"
                         f"{value:>9}  (target {t['limit']})")
        v = self.verification
        lines += ["", f"verification: {'OK' if self.verified else 'FAILED'}: {v['calls_failed']} failed call(s); "
                      f"EVENTS requested {v['events_requested']:,} / completed {v['events_completed']:,} "
                      f"(expected {v['expected_events']:,} each); DLQ {v['dlq_messages']}; provider served "
                      f"{v['provider_requests']:,} request(s) for {v['expected_requests']:,} calls"]
        lines += [f"  {problem}" for problem in v["problems"]]
        return "\n".join(lines)


def progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def summarise(phases: list[Phase], high: int) -> list[Summary]:
    out: list[Summary] = []
    for config in dict.fromkeys(p.config for p in phases):
        for concurrency in (1, high):
            direct: Summary | None = None
            for variant in VARIANTS:
                rounds = [p for p in phases if p.phase == "round" and p.config == config
                          and p.variant == variant and p.concurrency == concurrency]
                if not rounds:
                    continue
                lat = [x for p in rounds for x in p.latencies_ms]
                calls = sum(p.calls for p in rounds)
                cpu = {k: sum(p.cpu_s[k] for p in rounds) * 1000 / calls for k in rounds[0].cpu_s}
                s = Summary(config, variant, concurrency, calls, percentile(lat, 50), percentile(lat, 95),
                            percentile(lat, 99), statistics.median(p.rate for p in rounds), cpu)
                if variant == "direct":
                    direct = s
                elif direct is not None:
                    s.added = {"p50": s.p50 - direct.p50, "p95": s.p95 - direct.p95, "p99": s.p99 - direct.p99}
                out.append(s)
    return out


async def count_events(bus: Bus, action: str) -> int:
    info = await bus.js.stream_info(EVENTS_STREAM, subjects_filter=f"tether.evt.*.*.llm.{action}.*")
    return sum((info.state.subjects or {}).values())


async def run_config(config: Runaway, args: argparse.Namespace, server: NatsServer, provider: Child,
                     provider_url: str, workdir: Path, bus: Bus, phases: list[Phase],
                     profile: Path | None) -> dict[str, int]:
    """One worker process and one inline caller with this runaway setting; every phase."""
    cfg_path = write_config(workdir / f"tether-runaway-{config}.toml", provider_url, config, args.budget)
    cfg = load_worker_config(cfg_path)
    worker = start_worker(workdir, server.url, cfg_path, profile / f"worker-runaway-{config}.prof" if profile else None)
    progress(f"worker pid {worker.pid} (runaway guard {config}; `py-spy record -p {worker.pid}` samples it)", args.json)
    inline = await InlineCalls(bus, policies=cfg.policies, providers=cfg.providers).start()
    durable = await DurableCalls(bus).start()
    client = Client(bus, provider_url, inline, durable)
    made = {"direct": 0, "inline": 0, "durable": 0}
    nats_pid = server.pid
    assert nats_pid is not None
    profiler = cProfile.Profile() if profile else None
    try:
        async def measure(phase: Literal["warmup", "round"], rnd: int, variant: Variant, calls: int,
                          concurrency: int) -> None:
            tag = f"bench-{config}-{variant}-{phase}{rnd}-c{concurrency}"
            before = {"worker": worker.cpu(), "client": time.process_time(), "nats": cpu_seconds(nats_pid),
                      "provider": provider.cpu()}
            if profiler is not None and variant == "inline" and phase == "round":
                profiler.enable()
            seconds, latencies, failures = await client.drive(variant, tag, calls, concurrency)
            if profiler is not None:
                profiler.disable()
            if variant == "inline":
                await bus.flush()  # inline emits; its events must be acked before the next phase
            after = {"worker": worker.cpu(), "client": time.process_time(), "nats": cpu_seconds(nats_pid),
                     "provider": provider.cpu()}
            made[variant] += calls
            p = Phase(config, phase, rnd, variant, concurrency, calls, seconds, latencies, failures,
                      {k: after[k] - before[k] for k in before})
            phases.append(p)
            p50 = f"{percentile(latencies, 50):7.2f} ms p50" if latencies else "   no successes"
            progress(f"  runaway {config} {phase} {rnd} {variant:<7} c={concurrency:<3} {calls:>6,} calls "
                     f"{p.rate:>8,.0f}/s {p50}  worker {p.cpu_s['worker'] * 1000 / calls:5.2f} ms/call"
                     + (f"  {len(failures)} FAILED, first: {failures[0]}" if failures else ""), args.json)

        if args.warmup:
            for variant in VARIANTS:
                await measure("warmup", 0, variant, args.warmup, args.concurrency)
                await measure("warmup", 0, variant, max(1, args.warmup // 10), 1)
        for rnd in range(1, args.rounds + 1):
            for concurrency in (1, args.concurrency):
                for variant in VARIANTS:
                    await measure("round", rnd, variant, args.calls if concurrency == 1 else args.calls_high,
                                  concurrency)
    finally:
        await client.close()
        await durable.close()
        await inline.close()
        await bus.flush()
        worker.stop()
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile / f"client-inline-runaway-{config}.prof")
    return made


async def run(args: argparse.Namespace, server: NatsServer, provider: Child, provider_url: str,
              workdir: Path, profile: Path | None) -> Report:
    bus = await connect(url=server.url, home=workdir / "client-home")
    http = httpx.AsyncClient()  # the fake provider's control endpoint, for the verification
    phases: list[Phase] = []
    made = {"direct": 0, "inline": 0, "durable": 0}
    try:
        configs: list[Runaway] = ["on", "off"] if args.runaway == "both" else [args.runaway]
        for config in configs:
            done = await run_config(config, args, server, provider, provider_url, workdir, bus, phases, profile)
            made = {k: made[k] + done[k] for k in made}
        await bus.flush()
        verification = await verify(bus, http, provider_url, phases, made)
        return Report(args={k: getattr(args, k) for k in ("rounds", "calls", "calls_high", "concurrency",
                                                            "warmup", "runaway", "latency", "budget")},
                      phases=phases, summaries=summarise(phases, args.concurrency), verification=verification,
                      server_version=(await bus.status())["server"]["version"])
    finally:
        await http.aclose()
        await bus.close()


async def verify(bus: Bus, http: httpx.AsyncClient, provider_url: str, phases: list[Phase],
                 made: dict[str, int]) -> dict[str, Any]:
    failed = sum(len(p.failures) for p in phases)
    expected_events = made["inline"] + made["durable"]
    requested = await count_events(bus, "requested")
    completed = await count_events(bus, "completed")
    dlq = (await bus.js.stream_info(DLQ_STREAM)).state.messages
    origin = provider_url.rstrip("/").removesuffix("/v1")
    served = int((await http.get(f"{origin}/_fake/log", params={"limit": "0"})).json()["total"])
    expected_requests = sum(made.values())
    problems = []
    if failed:
        first = next(f for p in phases for f in p.failures)
        problems.append(f"{failed} call(s) failed; first: {first}")
    if requested != expected_events or completed != expected_events:
        problems.append(f"EVENTS: {requested} requested and {completed} completed events for "
                        f"{expected_events} inline + durable calls")
    if dlq:
        problems.append(f"DLQ holds {dlq} message(s)")
    if served != expected_requests:
        problems.append(f"the provider served {served} requests for {expected_requests} calls")
    return {"ok": not problems, "calls_failed": failed, "calls": made, "expected_events": expected_events,
            "events_requested": requested, "events_completed": completed, "dlq_messages": dlq,
            "provider_requests": served, "expected_requests": expected_requests, "problems": problems}


def print_profiles(profile: Path) -> str:
    text = io.StringIO()
    for file in sorted(profile.glob("*.prof")):
        print(f"==== {file}", file=text)
        stats = pstats.Stats(str(file), stream=text).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
    return text.getvalue()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every variant (3)")
    parser.add_argument("--calls", type=int, default=300, help="calls per variant per round at concurrency 1 (300)")
    parser.add_argument("--calls-high", type=int, default=2_000,
                        help="calls per variant per round at the high concurrency (2000)")
    parser.add_argument("--concurrency", type=int, default=50, help="the high concurrency (50)")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up calls per variant (300)")
    parser.add_argument("--runaway", choices=("on", "off", "both"), default="on",
                        help="runaway guard: on (the default policy), off, or both passes")
    parser.add_argument("--budget", type=float, metavar="USD",
                        help="give every agent a dollar budget (never reached when large: each call is then "
                             "admitted under it, reserved and settled); none by default")
    parser.add_argument("--latency", metavar="SPEC", help="the fake provider's latency, e.g. 20ms (none)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also: cProfile the worker process and the client's inline rounds into DIR "
                        "(figures are then slower than without)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.calls, args.calls_high, args.concurrency) < 1 or args.warmup < 0:
        parser.error("--rounds, --calls, --calls-high and --concurrency must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    server = NatsServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="tether-bench-executor-") as tmp:
            workdir = Path(tmp)
            provider, provider_url = start_provider(workdir, args.latency)
            try:
                progress(f"nats-server at {server.url} (pid {server.pid}), fake provider at {provider_url} "
                         f"(pid {provider.pid})", args.json)
                report = asyncio.run(run(args, server, provider, provider_url, workdir, args.profile))
            finally:
                provider.stop()
    except VerificationError as exc:
        print(f"verification failed: {exc}", file=sys.stderr)
        return 1
    finally:
        server.close()
    print(json.dumps(report.as_json(), indent=2) if args.json else report.table())
    if args.profile is not None:
        print(print_profiles(args.profile), file=sys.stderr)
    return 0 if report.verified else 1


if __name__ == "__main__":
    sys.exit(main())
