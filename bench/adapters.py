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

**LiteLLM, side by side** (``--peers``, on by default when an interpreter with LiteLLM is
found: ``.venv-bench/bin/python``, which ``make bench`` builds from the ``bench`` extra, or
this one; otherwise skipped with a message). Against the same fake provider, in the same run:

- the LiteLLM proxy (``litellm --config <tmp yaml> --port <free port>``, one model pointed at
  the fake provider as an OpenAI-compatible base, a master key, telemetry off, the local cost
  map) joins the rotation above as one more variant, like the gateway: added p50/p99, time to
  first token, its process's CPU per call (``/proc``), then requests/s at concurrency 50 with
  the same load generator. It is stopped by its PID at the end, whatever happens;
- ``litellm.completion``, ``litellm.acompletion``, ``Router.completion`` and
  ``Router.acompletion`` each run in a child process of their own (``bench/litellm_peer.py``:
  creating a Router registers global callbacks that slow every other LiteLLM call in its
  process), alternating in blocks with the direct openai SDK call (sync or async to match) in
  that same process: *added* is against that process's direct call.

One table at the end puts tether's instrumented client and gateway beside the LiteLLM variants.

**The gateway of another checkout, side by side** (``--base-gateway-python``, off by
default): a second ``tether gateway`` started by another interpreter (another worktree's
``.venv/bin/python``, which imports that worktree's tether) joins the rotation as
``gateway-base`` and the load at concurrency 50, against the same fake provider and NATS:
old and new gateway code measured in one run (docs/benchmarks.md, Gateway upstream).

    .venv/bin/python bench/adapters.py
    .venv/bin/python bench/adapters.py --calls 2000 --rounds 5 --json
    .venv/bin/python bench/adapters.py --no-gateway --peers none   # the instrumented client only
    .venv/bin/python bench/adapters.py --peers proxy,sdk-async     # some LiteLLM variants only
    .venv/bin/python bench/adapters.py --peers none --base-gateway-python ../base/.venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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

ROOT = Path(__file__).resolve().parent.parent
PEER_SCRIPT = Path(__file__).resolve().parent / "litellm_peer.py"
IN_PROCESS_PEERS = ("sdk", "sdk-async", "router", "router-async")
PEERS = (*IN_PROCESS_PEERS, "proxy")
PEER_LABELS = {"sdk": "litellm.completion (sync)", "sdk-async": "litellm.acompletion",
               "router": "litellm Router.completion (sync)", "router-async": "litellm Router.acompletion",
               "proxy": "litellm proxy"}
# LiteLLM makes no network call of its own: the bundled cost map, telemetry off.
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY_DISABLED": "True"}


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


def start_gateway(nats_url: str, provider_url: str, home: Path,
                  python: str = sys.executable) -> tuple[subprocess.Popen[str], str]:
    """``tether gateway`` in its own process, in front of the fake provider, tether's default policies."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "tether.toml"
    config.write_text(f'[providers.fake]\nkind = "openai"\nbase_url = "{provider_url}"\n\n'
                      f'[gateway]\ndefault_provider = "fake"\n\n[gateway.keys]\n"{GATEWAY_KEY}" = "bench-gw"\n')
    child = subprocess.Popen([python, "-m", "tether.cli._gateway", "--url", nats_url, "--home", str(home),
                              "--config", str(config), "--port", "0"], stdout=subprocess.PIPE, text=True,
                             cwd=home)  # not this checkout's: ``python`` imports tether from its own
    assert child.stdout is not None
    first = child.stdout.readline()
    found = re.search(r"listening on (http://\S+):", first)
    if found is None:
        child.kill()
        raise RuntimeError(f"the gateway did not start: {first!r}")
    return child, found[1]


# -- LiteLLM, the peer ----------------------------------------------------------------------------


def peer_python(given: str | None) -> str:
    """The interpreter that runs LiteLLM: ``--peer-python``, else ``.venv-bench``'s, else this one."""
    if given:
        return given
    bench_venv = ROOT / ".venv-bench" / "bin" / "python"
    return str(bench_venv) if bench_venv.exists() else sys.executable


def litellm_version(python: str) -> str | None:
    """LiteLLM's version as ``python`` sees it, or None when it cannot import it (nothing imported)."""
    probe = subprocess.run([python, "-c", "from importlib.metadata import version; print(version('litellm'))"],
                           capture_output=True, text=True, timeout=60, check=False)
    return probe.stdout.strip() if probe.returncode == 0 else None


def choose_peers(spec: str, python: str) -> tuple[list[str], str | None]:
    """The LiteLLM variants to run and LiteLLM's version; exits when they were asked for by name and cannot run."""
    if spec == "none":
        return [], None
    version = litellm_version(python)
    if spec == "auto":
        if version is None:
            print(f"LiteLLM peer skipped: {python} cannot import litellm (`make bench` installs it into "
                  ".venv-bench from the `bench` extra; --peer-python PYTHON picks another interpreter, "
                  "--peers none silences this)", file=sys.stderr)
            return [], None
        return list(PEERS), version
    chosen = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PEERS]
    if unknown:
        raise SystemExit(f"--peers: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}, "
                         "auto or none")
    if version is None:
        raise SystemExit(f"--peers {spec}: {python} cannot import litellm (`make bench` installs it into "
                         ".venv-bench; or --peer-python PYTHON)")
    return chosen, version


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_litellm_proxy(python: str, provider_url: str, home: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """``litellm --config <yaml> --port <free port>`` in front of the fake provider; ready when it returns."""
    key = "sk-" + secrets.token_hex(32)
    config = home / "litellm.yaml"
    config.write_text("model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n"
                      f"      model: openai/gpt-4o-mini\n      api_base: {provider_url}\n      api_key: sk-bench\n"
                      f"litellm_settings:\n  telemetry: false\ngeneral_settings:\n  master_key: {key}\n")
    port = _free_port()
    script = Path(python).parent / "litellm"
    command = [str(script)] if script.exists() else \
        [python, "-c", "import sys; from litellm import run_server; sys.argv[0] = 'litellm'; run_server()"]
    log = open(home / "litellm-proxy.log", "wb")  # noqa: SIM115  (closed below: the child has its own copy)
    child = subprocess.Popen([*command, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                             stdout=log, stderr=subprocess.STDOUT, cwd=home, env={**os.environ, **LITELLM_ENV})
    log.close()
    return child, f"http://127.0.0.1:{port}", key


_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never through $http_proxy


def wait_ready(child: subprocess.Popen[bytes], url: str, home: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            break
        try:
            with _LOCAL.open(url + "/health/liveliness", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    tail = (home / "litellm-proxy.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the LiteLLM proxy did not start (exit code {child.poll()}):\n{tail}")


def stop(child: subprocess.Popen[Any] | None, timeout: float = 15) -> None:
    """Stop one child by its PID: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if child is None or child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(5)


def run_in_process_peer(python: str, variant: str, url: str, args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """One LiteLLM variant in a process of its own (``bench/litellm_peer.py``); its raw samples."""
    timeout = 120 + args.calls * args.rounds * 4 * 0.1
    done = subprocess.run([python, str(PEER_SCRIPT), "--variant", variant, "--url", url, "--calls", str(args.calls),
                           "--rounds", str(args.rounds), "--block", str(args.block)], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=home, env={**os.environ, **LITELLM_ENV})
    if done.returncode != 0:
        raise RuntimeError(f"LiteLLM variant {variant} failed (exit code {done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarise_peer(results: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Added latency (p50/p99 of the LiteLLM call minus the direct call's, same process) and added CPU."""
    out: dict[str, Any] = {}
    for kind in ("chat", "stream"):
        direct, peer = results[f"{kind}/direct"], results[f"{kind}/litellm"]
        for metric in ("total", "ttft"):
            if not direct[metric]:
                continue
            row = {f"{name}_{p}": round(percentile(values[metric], p), 3)
                   for name, values in (("direct", direct), ("litellm", peer)) for p in (50, 99)}
            row["added_p50_ms"] = round(row["litellm_50"] - row["direct_50"], 3)
            row["added_p99_ms"] = round(row["litellm_99"] - row["direct_99"], 3)
            row["calls"] = len(peer[metric])
            out[f"{kind} {'first token' if metric == 'ttft' else 'latency'}"] = row
        d_cpu, p_cpu = statistics.fmean(direct["cpu"]), statistics.fmean(peer["cpu"])
        out[f"{kind} client CPU per call"] = {"direct_ms": round(d_cpu, 3), "litellm_ms": round(p_cpu, 3),
                                              "added_ms": round(p_cpu - d_cpu, 3)}
    return out


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
        assert isinstance(response, openai.AsyncStream)
        async for chunk in response:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = (time.perf_counter() - started) * 1000
        return (time.perf_counter() - started) * 1000, first

    return call


async def measure(bus: Bus, url: str, calls: int, rounds: int, block: int,
                  gateway: tuple[int, str] | None, proxy: tuple[int, str, str] | None = None,
                  base: tuple[int, str] | None = None) -> dict[str, Any]:
    """``proxy``: the LiteLLM proxy's PID, URL and master key, measured as one more variant;
    ``base``: another checkout's gateway (PID, URL), measured like the gateway."""
    direct = openai.AsyncOpenAI(base_url=url, api_key="sk-bench")
    instrumented = tether.instrument(openai.AsyncOpenAI(base_url=url, api_key="sk-bench"), bus=bus)
    via = openai.AsyncOpenAI(base_url=(gateway[1] if gateway else url) + "/v1", api_key=GATEWAY_KEY)
    via_base = openai.AsyncOpenAI(base_url=(base[1] if base else url) + "/v1", api_key=GATEWAY_KEY)
    gateways = {"gateway": via, "gateway-base": via_base}
    litellm_proxy = openai.AsyncOpenAI(base_url=(proxy[1] if proxy else url) + "/v1",
                                       api_key=proxy[2] if proxy else "sk-bench")
    server_pids = {name: pid for name, pid in (("gateway", gateway and gateway[0]),
                                               ("gateway-base", base and base[0]),
                                               ("litellm-proxy", proxy and proxy[0])) if pid}
    results: dict[str, dict[str, list[float]]] = {}
    counter = 0
    run_ids: list[str] = []
    gateway_calls = 0
    async with direct, instrumented, via, via_base, litellm_proxy:
        for stream in (False, True):
            kind = "stream" if stream else "chat"
            plain, traced = caller(direct, stream), caller(instrumented, stream)
            variants: list[tuple[str, Call]] = [("direct", plain), ("tether", traced)]
            for name, started in (("gateway", gateway), ("gateway-base", base)):
                if started is not None:
                    variants.append((name, caller(gateways[name].with_options(
                        default_headers={"x-tether-run-id": "warm"}), stream)))
            if proxy is not None:
                variants.append(("litellm-proxy", caller(litellm_proxy, stream)))
            for warm in range(50):  # connections, imports, the engine's KV buckets
                await plain(warm)
                async with tether.run(agent="bench", bus=bus) as run:
                    run_ids.append(run.run_id)
                    await traced(warm)
                for variant, call in variants[2:]:
                    await call(warm)
                    gateway_calls += variant in gateways
            for _ in range(rounds):
                done = 0
                while done < calls:
                    for variant, call in variants:
                        bucket = results.setdefault(f"{kind}/{variant}",
                                                    {"total": [], "ttft": [], "cpu": [], "server_cpu": []})
                        cpu = time.process_time()
                        server = server_pids.get(variant)
                        server_cpu = cpu_ms(server) if server is not None else 0.0
                        async with tether.run(agent="bench", bus=bus) as run:
                            run_ids.append(run.run_id)
                            if variant in gateways:
                                call = caller(gateways[variant].with_options(
                                    default_headers={"x-tether-run-id": run.run_id}), stream)
                            for _ in range(block):
                                counter += 1
                                total, ttft = await call(counter)
                                bucket["total"].append(total)
                                if ttft is not None:
                                    bucket["ttft"].append(ttft)
                        bucket["cpu"].append((time.process_time() - cpu) * 1000 / block)
                        if server is not None:
                            gateway_calls += block if variant in gateways else 0
                            bucket["server_cpu"].append((cpu_ms(server) - server_cpu) / block)
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


def merged(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two load measurements of one variant as one: requests over their time, CPU per request weighted."""
    done = a["requests"] + b["requests"]
    out = {"requests_per_s": round(done / (a["requests"] / a["requests_per_s"] + b["requests"] / b["requests_per_s"]),
                                   1),
           "requests": done, "warm_up_requests": a["warm_up_requests"] + b["warm_up_requests"],
           "statuses": dict(Counter(a["statuses"]) + Counter(b["statuses"]))}
    for key in ("loadgen_cpu_ms_per_request", "cpu_ms_per_request"):
        if key in a:
            out[key] = round((a[key] * a["requests"] + b[key] * b["requests"]) / max(done, 1), 3)
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
            for variant, prefix in (("gateway", "gateway"), ("gateway-base", "gateway_base"),
                                    ("litellm-proxy", "proxy")):
                g = results.get(f"{kind}/{variant}", {}).get(metric)
                if g:
                    row[f"{prefix}_50"] = round(percentile(g, 50), 3)
                    row[f"{prefix}_99"] = round(percentile(g, 99), 3)
                    row[f"{prefix}_added_p50_ms"] = round(row[f"{prefix}_50"] - row["direct_50"], 3)
                    row[f"{prefix}_added_p99_ms"] = round(row[f"{prefix}_99"] - row["direct_99"], 3)
            out[f"{kind} {'first token' if metric == 'ttft' else 'latency'}"] = row
        d_cpu = statistics.fmean(results[f"{kind}/direct"]["cpu"])
        t_cpu = statistics.fmean(results[f"{kind}/tether"]["cpu"])
        out[f"{kind} client CPU per call"] = {"direct_ms": round(d_cpu, 3), "tether_ms": round(t_cpu, 3),
                                              "added_ms": round(t_cpu - d_cpu, 3)}
        for variant, name in (("gateway", "gateway"), ("gateway-base", "gateway (base)"),
                              ("litellm-proxy", "litellm proxy")):
            server = results.get(f"{kind}/{variant}")
            if server:
                out[f"{kind} {name} process CPU per call"] = {"ms": round(statistics.fmean(server["server_cpu"]), 3),
                                                             "client_ms": round(statistics.fmean(server["cpu"]), 3)}
    return out


def comparison(table: dict[str, Any], throughput: dict[str, Any], peers: dict[str, Any]) -> dict[str, Any]:
    """One row per variant, tether's and LiteLLM's: added ms over the direct call, CPU per call, req/s at c=50."""

    def latency(summary: dict[str, Any], prefix: str) -> dict[str, float | None]:
        def get(name: str, key: str) -> float | None:
            value: float | None = summary.get(name, {}).get(f"{prefix}added_{key}_ms")
            return value

        return {"chat_added_p50_ms": get("chat latency", "p50"), "chat_added_p99_ms": get("chat latency", "p99"),
                "ttft_added_p50_ms": get("stream first token", "p50"),
                "ttft_added_p99_ms": get("stream first token", "p99"),
                "stream_added_p50_ms": get("stream latency", "p50")}

    def server(name: str, throughput_name: str) -> dict[str, Any]:
        row: dict[str, Any] = {"cpu_scope": "server process"}
        for kind in ("chat", "stream"):
            row[f"{kind}_cpu_ms"] = table.get(f"{kind} {name} process CPU per call", {}).get("ms")
            loaded = throughput.get(f"{kind} {throughput_name}", {})
            row[f"{kind}_c50_requests_per_s"] = loaded.get("requests_per_s")
            row[f"{kind}_c50_cpu_ms"] = loaded.get("cpu_ms_per_request")
        return row

    rows: dict[str, Any] = {}
    if table:
        rows["tether instrument (AsyncOpenAI)"] = {
            **latency(table, ""), "cpu_scope": "caller, added",
            "chat_cpu_ms": table["chat client CPU per call"]["added_ms"],
            "stream_cpu_ms": table["stream client CPU per call"]["added_ms"]}
    if "gateway_50" in table.get("chat latency", {}):
        rows["tether gateway"] = {**latency(table, "gateway_"), **server("gateway", "gateway")}
    if "gateway_base_50" in table.get("chat latency", {}):
        rows["tether gateway (base)"] = {**latency(table, "gateway_base_"),
                                         **server("gateway (base)", "gateway (base)")}
    for variant in IN_PROCESS_PEERS:
        if variant in peers:
            summary = peers[variant]["summary"]
            rows[PEER_LABELS[variant]] = {**latency(summary, ""), "cpu_scope": "caller, added",
                                          "chat_cpu_ms": summary["chat client CPU per call"]["added_ms"],
                                          "stream_cpu_ms": summary["stream client CPU per call"]["added_ms"]}
    if "proxy_50" in table.get("chat latency", {}):
        rows[PEER_LABELS["proxy"]] = {**latency(table, "proxy_"), **server("litellm proxy", "litellm proxy")}
    return rows


def print_comparison(rows: dict[str, Any], throughput: dict[str, Any]) -> None:
    def cell(value: float | None, width: int, digits: int = 2) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"

    print("\ntether vs LiteLLM, same fake provider: ms added over the direct openai SDK call; CPU ms per call "
          "(in-process: added to the caller; gateway/proxy: the server process, one call at a time); "
          "requests/s at concurrency 50")
    print(f"{'':34} {'chat p50':>8} {'p99':>7} {'1st tok p50':>11} {'p99':>7} {'stream p50':>10}"
          f" {'CPU chat':>8} {'stream':>7} {'c50 chat/s':>10} {'streams/s':>9} {'CPU@c50':>7} {'stream':>7}")
    for name, row in rows.items():
        print(f"{name:34} {cell(row['chat_added_p50_ms'], 8)} {cell(row['chat_added_p99_ms'], 7)} "
              f"{cell(row['ttft_added_p50_ms'], 11)} {cell(row['ttft_added_p99_ms'], 7)} "
              f"{cell(row['stream_added_p50_ms'], 10)} {cell(row['chat_cpu_ms'], 8)} {cell(row['stream_cpu_ms'], 7)} "
              f"{cell(row.get('chat_c50_requests_per_s'), 10, 0)} {cell(row.get('stream_c50_requests_per_s'), 9, 0)} "
              f"{cell(row.get('chat_c50_cpu_ms'), 7)} {cell(row.get('stream_c50_cpu_ms'), 7)}")
    direct = throughput.get("chat direct")
    if direct:
        print(f"{'(the fake provider alone)':34} {'':8} {'':7} {'':11} {'':7} {'':10} {'':8} {'':7} "
              f"{direct['requests_per_s']:10.0f} {throughput['stream direct']['requests_per_s']:9.0f}")


async def amain(args: argparse.Namespace) -> int:
    python = peer_python(args.peer_python)
    peers, litellm_release = choose_peers(args.peers, python)
    child, url = start_provider()
    gateway: subprocess.Popen[str] | None = None
    base: subprocess.Popen[str] | None = None
    gateway_url = base_url = ""
    proxy: subprocess.Popen[bytes] | None = None
    proxy_url = proxy_key = ""
    throughput: dict[str, Any] = {}
    peer_results: dict[str, Any] = {}
    peer_errors: dict[str, str] = {}
    home = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    try:
        if "proxy" in peers:
            proxy, proxy_url, proxy_key = start_litellm_proxy(python, url, home)  # it boots while NATS starts
        with NatsServer() as server:
            if not args.no_gateway:
                gateway, gateway_url = start_gateway(server.url, url, home)
                if args.base_gateway_python:
                    base, base_url = start_gateway(server.url, url, home / "base", args.base_gateway_python)
            if proxy is not None:
                await asyncio.to_thread(wait_ready, proxy, proxy_url, home)
            async with await tether.connect(server.url, home=home) as bus:
                measured = await measure(bus, url, args.calls, args.rounds, args.block,
                                         (gateway.pid, gateway_url) if gateway is not None else None,
                                         (proxy.pid, proxy_url, proxy_key) if proxy is not None else None,
                                         (base.pid, base_url) if base is not None else None)
                if (gateway is not None or proxy is not None) and args.load_seconds > 0:
                    for stream in (False, True):
                        kind = "stream" if stream else "chat"
                        throughput[f"{kind} direct"] = await load(url, key=None, stream=stream,
                                                                  seconds=args.load_seconds, pid=child.pid)
                        served = [(name, p, u) for name, p, u in (("gateway", gateway, gateway_url),
                                                                  ("gateway (base)", base, base_url)) if p]
                        halves = served + served[::-1] if len(served) > 1 else served  # ABBA: drift hits both
                        for name, process, served_url in halves:
                            loaded = await load(served_url + "/v1", key=GATEWAY_KEY, stream=stream,
                                                seconds=args.load_seconds / (len(halves) // len(served)),
                                                pid=process.pid)
                            measured["gateway_calls"] += loaded["requests"] + loaded["warm_up_requests"]
                            earlier = throughput.get(f"{kind} {name}")
                            throughput[f"{kind} {name}"] = loaded if earlier is None else merged(earlier, loaded)
                        if proxy is not None:
                            throughput[f"{kind} litellm proxy"] = await load(
                                proxy_url + "/v1", key=proxy_key, stream=stream, seconds=args.load_seconds,
                                pid=proxy.pid)
                stop(proxy)
                await Hub.of(bus).aclose()
                stop(gateway)
                stop(base)
                requested = await collect(bus, event_filter(agent="bench-gw", kind="llm", action="requested"))
                completed = await collect(bus, event_filter(agent="bench-gw", kind="llm", action="completed"))
                measured["gateway_requested"], measured["gateway_completed"] = len(requested), len(completed)
        for variant in (v for v in IN_PROCESS_PEERS if v in peers):  # after the servers: one process at a time
            print(f"LiteLLM {variant}: measuring in a process of its own", file=sys.stderr)
            try:
                raw = await asyncio.to_thread(run_in_process_peer, python, variant, url, args, home)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                peer_errors[variant] = str(exc)
                print(exc, file=sys.stderr)
                continue
            peer_results[variant] = {"summary": summarise_peer(raw["results"]), "seconds": raw["seconds"],
                                     "openai": raw["openai"]}
    finally:
        stop(proxy)
        stop(gateway)
        stop(base)
        stop(child, 10)
    table = summarise(measured)
    rows = comparison(table, throughput, peer_results)
    ok = measured["requested"] == measured["completed"] == measured["expected"] and not peer_errors
    if gateway is not None:
        ok = ok and measured["gateway_requested"] == measured["gateway_completed"] == measured["gateway_calls"]
    ok = ok and all(set(row["statuses"]) == {200} for row in throughput.values())
    litellm_info = {"version": litellm_release, "python": python, "variants": peers, "in_process": peer_results,
                    "errors": peer_errors} if peers else None
    if args.json:
        print(json.dumps({"summary": table, "throughput_c50": throughput, "comparison": rows,
                          "litellm": litellm_info, "verified": ok,
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
        if "process CPU" in name:
            print(f"{name:26} {row['ms']:10.3f}   (ms; the SDK client spent {row['client_ms']:.3f})")
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
        serving = "provider" if "direct" in name else "proxy" if "litellm" in name else "gateway"
        print(f"c=50 {name:21} {row['requests_per_s']:10.1f} req/s  {row['requests']} requests "
              f"{row['statuses']}; {serving} CPU {cpu:.3f} ms/request; "
              f"load generator {row['loadgen_cpu_ms_per_request']:.3f} ms/request")
    print(f"events: instrumented {measured['requested']} requested, {measured['completed']} completed, "
          f"{measured['expected']} expected"
          + (f"; gateway {measured['gateway_requested']} requested, {measured['gateway_completed']} completed, "
             f"{measured['gateway_calls']} expected" if gateway is not None else ""))
    if len(rows) > 1 or peers:
        print_comparison(rows, throughput)
    if litellm_info is not None:
        failed = "".join(f"; {variant} FAILED" for variant in peer_errors)
        print(f"LiteLLM {litellm_release} ({python}){failed}")
    print(f"verified: {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per variant per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--block", type=int, default=50, help="calls in a row of one variant (default 50)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-gateway", action="store_true", help="skip the gateway variant")
    parser.add_argument("--base-gateway-python", metavar="PYTHON",
                        help="also run the gateway of the checkout this interpreter imports tether from "
                        "(another worktree's .venv/bin/python), side by side as gateway-base")
    parser.add_argument("--load-seconds", type=float, default=10.0,
                        help="seconds of load at concurrency 50 per variant (default 10; 0: none)")
    parser.add_argument("--peers", default="auto",
                        help=f"LiteLLM variants to run beside tether, comma-separated from {', '.join(PEERS)}; "
                        "auto (default): all of them when LiteLLM can be imported, else skipped with a message; "
                        "none: skip")
    parser.add_argument("--peer-python", metavar="PYTHON",
                        help="the interpreter with LiteLLM (default: .venv-bench/bin/python when it exists, else "
                        "this one)")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
