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

**Gateway.** ``tether gateway`` runs in a process of its own (``python -m
tether.cli._gateway``, tether's default policies, one provider: the fake), and the same SDK
calls go to it (``base_url`` the gateway's, a gateway key, each block of calls one run named
by ``x-tether-run-id``): *added* is the gateway's percentile minus the direct one, and the
gateway process's CPU per call (``/proc/<pid>/stat``, utime + stime) is read around each
block. Then a light load generator (raw HTTP/1.1 on 50 keep-alive connections from one
asyncio loop, a fraction of the SDK's CPU per call) measures requests/s at concurrency 50
against the fake provider directly and through the gateway, with the gateway's CPU per
call under that load. EVENTS must then hold one ``requested`` and one ``completed`` event
per gateway call too.

    .venv/bin/python bench/adapters.py
    .venv/bin/python bench/adapters.py --calls 2000 --rounds 5 --json
    .venv/bin/python bench/adapters.py --no-gateway         # the instrumented client only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
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


GATEWAY_KEY = "tg-bench-key-000000000000000000"


def cpu_ms(pid: int) -> float:
    """utime + stime of a process, in ms, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def start_gateway(nats_url: str, provider_url: str, home: Path) -> tuple[subprocess.Popen[str], str]:
    """``tether gateway`` in its own process, in front of the fake provider, tether's default policies."""
    config = home / "tether.toml"
    config.write_text(f'[providers.fake]\nkind = "openai"\nbase_url = "{provider_url}"\n\n'
                      f'[gateway]\ndefault_provider = "fake"\n\n[gateway.keys]\n"{GATEWAY_KEY}" = "bench-gw"\n')
    child = subprocess.Popen([sys.executable, "-m", "tether.cli._gateway", "--url", nats_url, "--home", str(home),
                              "--config", str(config), "--port", "0"], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    first = child.stdout.readline()
    found = re.search(r"listening on (http://\S+):", first)
    if found is None:
        child.kill()
        raise RuntimeError(f"the gateway did not start: {first!r}")
    return child, found[1]


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


async def measure(bus: Bus, url: str, calls: int, rounds: int, block: int,
                  gateway: tuple[int, str] | None) -> dict[str, Any]:
    direct = openai.AsyncOpenAI(base_url=url, api_key="sk-bench")
    instrumented = tether.instrument(openai.AsyncOpenAI(base_url=url, api_key="sk-bench"), bus=bus)
    via = openai.AsyncOpenAI(base_url=(gateway[1] if gateway else url) + "/v1", api_key=GATEWAY_KEY)
    results: dict[str, dict[str, list[float]]] = {}
    counter = 0
    run_ids: list[str] = []
    gateway_calls = 0
    async with direct, instrumented, via:
        for stream in (False, True):
            kind = "stream" if stream else "chat"
            plain, traced = caller(direct, stream), caller(instrumented, stream)
            variants: list[tuple[str, Call]] = [("direct", plain), ("tether", traced)]
            if gateway is not None:
                variants.append(("gateway", caller(via.with_options(default_headers={"x-tether-run-id": "warm"}),
                                                   stream)))
            for warm in range(50):  # connections, imports, the engine's KV buckets
                await plain(warm)
                async with tether.run(agent="bench", bus=bus) as run:
                    run_ids.append(run.run_id)
                    await traced(warm)
                if gateway is not None:
                    await variants[2][1](warm)
                    gateway_calls += 1
            for _ in range(rounds):
                done = 0
                while done < calls:
                    for variant, call in variants:
                        bucket = results.setdefault(f"{kind}/{variant}",
                                                    {"total": [], "ttft": [], "cpu": [], "gateway_cpu": []})
                        cpu = time.process_time()
                        gw_cpu = cpu_ms(gateway[0]) if gateway is not None else 0.0
                        async with tether.run(agent="bench", bus=bus) as run:
                            run_ids.append(run.run_id)
                            if variant == "gateway":
                                call = caller(via.with_options(default_headers={"x-tether-run-id": run.run_id}),
                                              stream)
                            for _ in range(block):
                                counter += 1
                                total, ttft = await call(counter)
                                bucket["total"].append(total)
                                if ttft is not None:
                                    bucket["ttft"].append(ttft)
                        bucket["cpu"].append((time.process_time() - cpu) * 1000 / block)
                        if variant == "gateway" and gateway is not None:
                            gateway_calls += block
                            bucket["gateway_cpu"].append((cpu_ms(gateway[0]) - gw_cpu) / block)
                    done += block
    await Hub.of(bus).flush()
    requested = len(await collect(bus, event_filter(agent="bench", kind="llm", action="requested")))
    completed = len(await collect(bus, event_filter(agent="bench", kind="llm", action="completed")))
    traced_calls = 100 + sum(len(v["total"]) for k, v in results.items() if k.endswith("tether"))
    return {"results": results, "requested": requested, "completed": completed, "expected": traced_calls,
            "gateway_calls": gateway_calls}


# -- requests/s at concurrency 50 ------------------------------------------------------------------


async def _lane(host: str, port: int, path: str, headers: str, stream: bool, stop_at: float,
                statuses: Counter[int], seq: list[int]) -> None:
    """One keep-alive connection sending requests one after another until ``stop_at``."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            seq[0] += 1
            body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 16, "stream": stream,
                               "messages": messages(seq[0])}).encode()
            writer.write(f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
                         f"{headers}content-length: {len(body)}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            statuses[int(head[9:12])] += 1
            found = re.search(rb"(?i)content-length: *(\d+)", head)
            if found is not None:
                await reader.readexactly(int(found[1]))
                continue
            while True:  # chunked
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
    finally:
        writer.close()


async def load(url: str, *, key: str | None, stream: bool, seconds: float, lanes: int = 50,
               pid: int | None = None) -> dict[str, Any]:
    """Requests/s with ``lanes`` connections for ``seconds``; the CPU of process ``pid`` per request."""
    found = re.match(r"http://([^:/]+):(\d+)(/.*)?$", url)
    assert found is not None
    host, port, base = found[1], int(found[2]), found[3] or ""
    headers = f"authorization: Bearer {key}\r\n" if key else ""
    statuses: Counter[int] = Counter()
    warm: Counter[int] = Counter()
    seq = [0]
    await asyncio.gather(*(_lane(host, port, base + "/chat/completions", headers, stream,
                                 time.perf_counter() + 1.0, warm, seq) for _ in range(lanes)))
    cpu = cpu_ms(pid) if pid is not None else 0.0
    client_cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(_lane(host, port, base + "/chat/completions", headers, stream, started + seconds,
                                 statuses, seq) for _ in range(lanes)))
    elapsed = time.perf_counter() - started
    done = sum(statuses.values())
    out: dict[str, Any] = {"requests_per_s": round(done / elapsed, 1), "requests": done,
                           "warm_up_requests": sum(warm.values()), "statuses": dict(statuses + warm),
                           "loadgen_cpu_ms_per_request":
                           round((time.process_time() - client_cpu) * 1000 / max(done, 1), 3)}
    if pid is not None:
        out["cpu_ms_per_request"] = round((cpu_ms(pid) - cpu) / max(done, 1), 3)
    return out


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
            g = results.get(f"{kind}/gateway", {}).get(metric)
            if g:
                row["gateway_50"] = round(percentile(g, 50), 3)
                row["gateway_99"] = round(percentile(g, 99), 3)
                row["gateway_added_p50_ms"] = round(row["gateway_50"] - row["direct_50"], 3)
                row["gateway_added_p99_ms"] = round(row["gateway_99"] - row["direct_99"], 3)
            out[f"{kind} {'first token' if metric == 'ttft' else 'latency'}"] = row
        d_cpu = statistics.fmean(results[f"{kind}/direct"]["cpu"])
        t_cpu = statistics.fmean(results[f"{kind}/tether"]["cpu"])
        out[f"{kind} client CPU per call"] = {"direct_ms": round(d_cpu, 3), "tether_ms": round(t_cpu, 3),
                                              "added_ms": round(t_cpu - d_cpu, 3)}
        gateway = results.get(f"{kind}/gateway")
        if gateway:
            out[f"{kind} gateway process CPU per call"] = {"ms": round(statistics.fmean(gateway["gateway_cpu"]), 3),
                                                          "client_ms": round(statistics.fmean(gateway["cpu"]), 3)}
    return out


async def amain(args: argparse.Namespace) -> int:
    child, url = start_provider()
    gateway: subprocess.Popen[str] | None = None
    throughput: dict[str, Any] = {}
    try:
        with NatsServer() as server:
            home = Path(tempfile.mkdtemp(prefix="tether-bench-"))
            if not args.no_gateway:
                gateway, gateway_url = start_gateway(server.url, url, home)
            async with await tether.connect(server.url, home=home) as bus:
                measured = await measure(bus, url, args.calls, args.rounds, args.block,
                                         (gateway.pid, gateway_url) if gateway is not None else None)
                if gateway is not None and args.load_seconds > 0:
                    for stream in (False, True):
                        kind = "stream" if stream else "chat"
                        throughput[f"{kind} direct"] = await load(url, key=None, stream=stream,
                                                                  seconds=args.load_seconds, pid=child.pid)
                        throughput[f"{kind} gateway"] = await load(gateway_url + "/v1", key=GATEWAY_KEY,
                                                                   stream=stream, seconds=args.load_seconds,
                                                                   pid=gateway.pid)
                        loaded = throughput[f"{kind} gateway"]
                        measured["gateway_calls"] += loaded["requests"] + loaded["warm_up_requests"]
                await Hub.of(bus).aclose()
                if gateway is not None:
                    gateway.terminate()
                    gateway.wait(15)
                requested = await collect(bus, event_filter(agent="bench-gw", kind="llm", action="requested"))
                completed = await collect(bus, event_filter(agent="bench-gw", kind="llm", action="completed"))
                measured["gateway_requested"], measured["gateway_completed"] = len(requested), len(completed)
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.terminate()
            gateway.wait(15)
        child.terminate()
        child.wait(10)
    table = summarise(measured)
    ok = measured["requested"] == measured["completed"] == measured["expected"]
    if gateway is not None:
        ok = ok and measured["gateway_requested"] == measured["gateway_completed"] == measured["gateway_calls"]
        ok = ok and all(set(row["statuses"]) == {200} for row in throughput.values())
    if args.json:
        print(json.dumps({"summary": table, "throughput_c50": throughput, "verified": ok,
                          **{k: measured[k] for k in ("requested", "completed", "expected", "gateway_calls")},
                          **{k: measured.get(k) for k in ("gateway_requested", "gateway_completed")}}, indent=2))
        return 0 if ok else 1
    print(f"{'':26} {'direct p50':>10} {'p99':>8} {'tether p50':>11} {'p99':>8} {'added p50':>10} {'p99':>8}"
          f" {'gateway p50':>12} {'p99':>8} {'added p50':>10} {'p99':>8}")
    for name, row in table.items():
        if "gateway process" in name:
            print(f"{name:26} {row['ms']:10.3f}   (ms; the gateway process: uvicorn, the interceptor, the "
                  f"upstream client, the publisher; the SDK client spent {row['client_ms']:.3f})")
            continue
        if "CPU" in name:
            print(f"{name:26} {row['direct_ms']:10.3f} {'':8} {row['tether_ms']:11.3f} {'':8} "
                  f"{row['added_ms']:10.3f}   (ms; the client process, caller and publisher)")
            continue
        gw = (f" {row['gateway_50']:12.3f} {row['gateway_99']:8.3f} {row['gateway_added_p50_ms']:10.3f} "
              f"{row['gateway_added_p99_ms']:8.3f}") if "gateway_50" in row else ""
        print(f"{name:26} {row['direct_50']:10.3f} {row['direct_99']:8.3f} {row['tether_50']:11.3f} "
              f"{row['tether_99']:8.3f} {row['added_p50_ms']:10.3f} {row['added_p99_ms']:8.3f}{gw}   (ms)")
    for name, row in throughput.items():
        cpu = row.get("cpu_ms_per_request")
        print(f"c=50 {name:21} {row['requests_per_s']:10.1f} req/s  {row['requests']} requests "
              f"{row['statuses']}; {'provider' if 'direct' in name else 'gateway'} CPU {cpu:.3f} ms/request; "
              f"load generator {row['loadgen_cpu_ms_per_request']:.3f} ms/request")
    print(f"events: instrumented {measured['requested']} requested, {measured['completed']} completed, "
          f"{measured['expected']} expected"
          + (f"; gateway {measured['gateway_requested']} requested, {measured['gateway_completed']} completed, "
             f"{measured['gateway_calls']} expected" if gateway is not None else "")
          + f" -> {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per variant per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--block", type=int, default=50, help="calls in a row of one variant (default 50)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-gateway", action="store_true", help="skip the gateway variant")
    parser.add_argument("--load-seconds", type=float, default=10.0,
                        help="seconds of load at concurrency 50 per variant (default 10; 0: none)")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
