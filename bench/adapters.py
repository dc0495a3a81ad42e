"""Adapter overhead: the openai SDK called directly vs through ``tether.instrument`` (inline).

One ``nats-server -js`` and one fake provider (in a process of its own, answering at once)
are started here. The same ``openai.AsyncOpenAI`` calls are made with a plain client and
with an instrumented one (explicit bus on the same loop, inside runs with an agent id, as an
agent's calls are; tether's default policies), one call at a time, the variants alternating
in blocks so drift hits both. Every request is different (a numbered question).

Measured per call, on the caller's clock: the latency of a non-streaming chat completion,
and for a streamed one the time to the first content chunk and to the end of the stream.
*Added* is the instrumented percentile minus the direct one. The client process's CPU time
per call (``time.process_time``: the SDK, tether and the publisher; the provider and
nats-server run elsewhere) is reported too: it is what tether costs when the machine is
busy, when wall-clock percentiles are mostly other processes' noise. At the end EVENTS must hold one
``requested`` and one ``completed`` event per instrumented call, and the provider must have
served exactly one request per call.

The gateway column of the issue's benchmark belongs to the gateway (built later).

    .venv/bin/python bench/adapters.py
    .venv/bin/python bench/adapters.py --calls 2000 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai

import tether
from tether.adapters import Hub
from tether.bus import Bus, event_filter
from tether.testing import NatsServer, collect

Call = Callable[[int], Awaitable[tuple[float, float | None]]]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def start_provider() -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen([sys.executable, "-m", "tether", "fake-provider", "--seed", "1"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    url = child.stdout.readline().strip()
    if not url.startswith("http"):
        child.kill()
        raise RuntimeError(f"the fake provider did not start: {url!r}")
    return child, url


def messages(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question number {n}: what is {n} times {n + 1}?"}]


def caller(client: openai.AsyncOpenAI, stream: bool) -> Call:
    async def call(n: int) -> tuple[float, float | None]:
        started = time.perf_counter()
        if not stream:
            await client.chat.completions.create(model="gpt-4o-mini", messages=messages(n),  # type: ignore[arg-type]
                                                 max_tokens=16)
            return (time.perf_counter() - started) * 1000, None
        first: float | None = None
        response = await client.chat.completions.create(model="gpt-4o-mini", messages=messages(n),  # type: ignore[arg-type]
                                                        max_tokens=16, stream=True)
        async for chunk in response:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = (time.perf_counter() - started) * 1000
        return (time.perf_counter() - started) * 1000, first

    return call


async def measure(bus: Bus, url: str, calls: int, rounds: int, block: int) -> dict[str, Any]:
    direct = openai.AsyncOpenAI(base_url=url, api_key="sk-bench")
    instrumented = tether.instrument(openai.AsyncOpenAI(base_url=url, api_key="sk-bench"), bus=bus)
    results: dict[str, dict[str, list[float]]] = {}
    counter = 0
    run_ids: list[str] = []
    async with direct, instrumented:
        for stream in (False, True):
            kind = "stream" if stream else "chat"
            plain, traced = caller(direct, stream), caller(instrumented, stream)
            for warm in range(50):  # connections, imports, the engine's KV buckets
                await plain(warm)
                async with tether.run(agent="bench", bus=bus) as run:
                    run_ids.append(run.run_id)
                    await traced(warm)
            for _ in range(rounds):
                done = 0
                while done < calls:
                    for variant, call in (("direct", plain), ("tether", traced)):
                        bucket = results.setdefault(f"{kind}/{variant}", {"total": [], "ttft": [], "cpu": []})
                        cpu = time.process_time()
                        async with tether.run(agent="bench", bus=bus) as run:
                            run_ids.append(run.run_id)
                            for _ in range(block):
                                counter += 1
                                total, ttft = await call(counter)
                                bucket["total"].append(total)
                                if ttft is not None:
                                    bucket["ttft"].append(ttft)
                        bucket["cpu"].append((time.process_time() - cpu) * 1000 / block)
                    done += block
    await Hub.of(bus).flush()
    requested = len(await collect(bus, event_filter(kind="llm", action="requested")))
    completed = len(await collect(bus, event_filter(kind="llm", action="completed")))
    traced_calls = 100 + sum(len(v["total"]) for k, v in results.items() if k.endswith("tether"))
    return {"results": results, "requested": requested, "completed": completed, "expected": traced_calls}


def summarise(measured: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    results = measured["results"]
    for kind in ("chat", "stream"):
        for metric in ("total", "ttft"):
            d, t = results[f"{kind}/direct"][metric], results[f"{kind}/tether"][metric]
            if not d:
                continue
            row = {f"{name}_{p}": round(percentile(values, p), 3)
                   for name, values in (("direct", d), ("tether", t)) for p in (50, 99)}
            row["added_p50_ms"] = round(row["tether_50"] - row["direct_50"], 3)
            row["added_p99_ms"] = round(row["tether_99"] - row["direct_99"], 3)
            row["calls"] = len(t)
            row["direct_mean"] = round(statistics.fmean(d), 3)
            row["tether_mean"] = round(statistics.fmean(t), 3)
            out[f"{kind} {'first token' if metric == 'ttft' else 'latency'}"] = row
        d_cpu = statistics.fmean(results[f"{kind}/direct"]["cpu"])
        t_cpu = statistics.fmean(results[f"{kind}/tether"]["cpu"])
        out[f"{kind} client CPU per call"] = {"direct_ms": round(d_cpu, 3), "tether_ms": round(t_cpu, 3),
                                              "added_ms": round(t_cpu - d_cpu, 3)}
    return out


async def amain(args: argparse.Namespace) -> int:
    child, url = start_provider()
    try:
        with NatsServer() as server:
            home = Path(tempfile.mkdtemp(prefix="tether-bench-"))
            async with await tether.connect(server.url, home=home) as bus:
                measured = await measure(bus, url, args.calls, args.rounds, args.block)
                await Hub.of(bus).aclose()
    finally:
        child.terminate()
        child.wait(10)
    table = summarise(measured)
    ok = measured["requested"] == measured["completed"] == measured["expected"]
    if args.json:
        print(json.dumps({"summary": table, "verified": ok, **{k: measured[k] for k in ("requested", "completed",
                                                                                          "expected")}}, indent=2))
    else:
        print(f"{'':26} {'direct p50':>10} {'p99':>8} {'tether p50':>11} {'p99':>8} {'added p50':>10} {'p99':>8}")
        for name, row in table.items():
            if "CPU" in name:
                print(f"{name:26} {row['direct_ms']:10.3f} {'':8} {row['tether_ms']:11.3f} {'':8} "
                      f"{row['added_ms']:10.3f}   (ms; the client process, caller and publisher)")
                continue
            print(f"{name:26} {row['direct_50']:10.3f} {row['direct_99']:8.3f} {row['tether_50']:11.3f} "
                  f"{row['tether_99']:8.3f} {row['added_p50_ms']:10.3f} {row['added_p99_ms']:8.3f}   (ms)")
        print(f"events: {measured['requested']} requested, {measured['completed']} completed, "
              f"{measured['expected']} expected -> {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per variant per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--block", type=int, default=50, help="calls in a row of one variant (default 50)")
    parser.add_argument("--json", action="store_true")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
