"""Resuming a run: what a replayed call costs against a live one, and how long a 100-step run takes to resume.

One ``nats-server -js`` and one fake provider (a process of its own, answering at once) are
started here. An agent of ``--steps`` steps (default 100) runs through tether inline (explicit
bus on the same loop, tether's default policies), each step asking with the conversation so
far, inside ``tether.run(run_id=...)``: every call is live. The agent's client is
``tether.async_http_client`` posting the JSON body itself (``--client http``, the default: what
is measured is tether and the HTTP exchange, not an SDK's own work), or the openai SDK through
``tether.instrument`` (``--client sdk``: the SDK re-validates the whole conversation on every
call, which costs it more than the call does, the same live or replayed).
*Ack wait*: the live call waits for the log's ack of its completion (a run's calls do); the
same agent with that wait switched off gives what it adds; *bare ack*: ``bus.publish`` of a small
event (publish, wait for its ack), its floor.
Then the same agent runs again in ``tether.run(run_id=..., resume=True)``: every call is
replayed from the journal. Per call, on the caller's clock: the wall time and the process's
CPU time (``time.process_time``; the provider and nats-server run elsewhere), median over the
calls. The provider must have served exactly ``--steps`` requests per round (none on resume).

*Resume time*: from entering ``tether.run(..., resume=True)`` (it reads the run's events from
the log into its journal) to the last step's answer; *journal read*: the entering alone.

*Lookup and return*: the replay decision on its own, without the SDK, HTTP parsing or
publishing: :meth:`tether.journal.Cursor.match` on the 100-call journal plus building the
``call.replayed`` event, per call (the pure core the drivers share).

    .venv/bin/python bench/resume.py
    .venv/bin/python bench/resume.py --steps 100 --rounds 5 --json
    .venv/bin/python bench/resume.py --client sdk
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
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai

import tether
from tether.adapters import Hub
from tether.bus import Bus, event_filter
from tether.journal import Entry, Journal, load_journal, request_hash
from tether.middleware import WorkItem, replay_of
from tether.schemas import Event, uuid7
from tether.testing import NatsServer, collect


def start_provider() -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen([sys.executable, "-m", "tether", "fake-provider", "--seed", "1"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    url = child.stdout.readline().strip()
    if not url.startswith("http"):
        child.kill()
        raise RuntimeError(f"the fake provider did not start: {url!r}")
    return child, url


def provider_requests(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url.rsplit("/v1", 1)[0] + "/_fake/log?limit=0") as resp:
        return int(json.loads(resp.read())["total"])


async def ask(client: Any, url: str, history: list[dict[str, str]]) -> str:
    if isinstance(client, openai.AsyncOpenAI):
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=history, temperature=0)  # type: ignore[arg-type]
        return reply.choices[0].message.content or ""
    body = json.dumps({"model": "gpt-4o-mini", "messages": history, "temperature": 0}).encode()
    resp = await client.post(url + "/chat/completions", content=body,
                             headers={"content-type": "application/json", "authorization": "Bearer sk-bench"})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"] or "")


async def agent(client: Any, url: str, steps: int) -> tuple[list[float], list[float], list[str]]:
    """The agent's steps: per call, wall ms and CPU ms; and the answers."""
    history: list[dict[str, str]] = [{"role": "system", "content": "You are terse."}]
    wall, cpu, answers = [], [], []
    for step in range(steps):
        history.append({"role": "user", "content": f"step {step}: what next?"})
        t0, c0 = time.perf_counter(), time.process_time()
        answer = await ask(client, url, history)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        answers.append(answer)
        history.append({"role": "assistant", "content": answer})
    return wall, cpu, answers


async def unacked(bus: Bus, sdk: Any, url: str, steps: int, n: int) -> float:
    """The live call as it was before a run's calls waited for the ack of their completion: the same
    agent in a run, with ``awaits_ack`` switched off (the median wall ms of a call)."""
    from tether.adapters import _core

    waits = getattr(_core, "awaits_ack")  # noqa: B009  (patched off for this run only)
    setattr(_core, "awaits_ack", lambda effect: False)  # noqa: B010
    try:
        async with tether.run(agent="bench", run_id=f"bench-unacked-{n}-{time.time_ns()}", bus=bus):
            wall, _, _ = await agent(sdk, url, steps)
    finally:
        setattr(_core, "awaits_ack", waits)  # noqa: B010
    await Hub.of(bus).flush()
    return statistics.median(wall)


async def bare_ack(bus: Bus, n: int) -> float:
    """The floor of the ack wait: ``bus.publish`` (publish, wait for the ack) of a small event, median ms."""
    from tether.schemas import RunFinished

    times = []
    for i in range(50):
        event = Event.of(RunFinished(status="ok"), runid=f"bench-ack-{n}-{i}-{time.time_ns()}")
        t0 = time.perf_counter()
        await bus.publish(event)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def one_round(bus: Bus, sdk: Any, url: str, steps: int, n: int) -> dict[str, Any]:
    run_id = f"bench-resume-{n}-{time.time_ns()}"
    unacked_ms = await unacked(bus, sdk, url, steps, n)
    ack_ms = await bare_ack(bus, n)
    before = provider_requests(url)
    async with tether.run(agent="bench", run_id=run_id, bus=bus):
        live_wall, live_cpu, live_answers = await agent(sdk, url, steps)
    await Hub.of(bus).flush()
    paid = provider_requests(url) - before
    t0 = time.perf_counter()
    async with tether.run(agent="bench", run_id=run_id, bus=bus, resume=True) as again:
        entered = time.perf_counter()
        replay_wall, replay_cpu, replay_answers = await agent(sdk, url, steps)
        done = time.perf_counter()
    await Hub.of(bus).flush()
    assert replay_answers == live_answers, "the replayed answers are the recorded ones"
    assert paid == steps and provider_requests(url) - before == steps, "no call reached the provider on resume"
    assert again.journal is not None and again.journal.replayed == steps
    events = [r.event for r in await collect(bus, event_filter(run=run_id)) if r.event is not None]
    assert sum(e.type == "tether.call.replayed" for e in events) == steps
    return {"live_wall_ms": statistics.median(live_wall), "live_cpu_ms": statistics.median(live_cpu),
            "replay_wall_ms": statistics.median(replay_wall), "replay_cpu_ms": statistics.median(replay_cpu),
            "journal_read_ms": (entered - t0) * 1000, "resume_s": done - t0, "run_id": run_id,
            "unacked_wall_ms": unacked_ms, "bare_ack_ms": ack_ms,
            "lookup_us": await lookup(bus, run_id, steps)}


async def lookup(bus: Bus, run_id: str, steps: int) -> float:
    """The replay decision alone, per call: ``replay_of`` (match in the journal, build the
    ``call.replayed`` event) for each of the run's calls."""
    journal = await load_journal(bus, run_id)
    return _replays(journal, [e.request_hash for e in journal.entries[:steps]])


def stream_lookup() -> float:
    """:func:`lookup` for a recorded stream of 200 chunks (its ``call.replayed`` carries them)."""
    chunk = {"event": None, "data": {"id": "c1", "object": "chat.completion.chunk",
                                     "choices": [{"index": 0, "delta": {"content": "word "}}]}}
    entries = [Entry("llm", str(uuid7()), f"sha256:{i:064x}", state="completed", stream=True, provider="openai",
                     model="gpt-4o-mini", chunks=[chunk] * 200, event_id=str(uuid7())) for i in range(20)]
    return _replays(Journal("bench-stream", entries), [e.request_hash for e in entries])


def _replays(journal: Journal, hashes: list[str | None]) -> float:
    item = WorkItem(call_id=str(uuid7()), kind="llm", runid=journal.run_id, provider="openai", model="gpt-4o-mini")
    engine = SimpleNamespace(event=lambda item, payload, **kw: Event.of(payload, id=kw.get("id"), runid=item.runid))
    best = float("inf")
    for _ in range(5):
        cursor = journal.cursor()
        t0 = time.perf_counter()
        for digest in hashes:
            call = SimpleNamespace(item=item, engine=engine, request_hash=digest)
            assert replay_of(call, cursor) is not None  # type: ignore[arg-type]
        best = min(best, (time.perf_counter() - t0) / len(hashes) * 1e6)
    return best


async def main(args: argparse.Namespace) -> dict[str, Any]:
    provider, url = start_provider()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = NatsServer(Path(tmp) / "nats").start()
            try:
                async with await tether.connect(server.url, home=Path(tmp) / "home") as bus:
                    sdk = tether.instrument(openai.AsyncOpenAI(base_url=url, api_key="sk-bench"), bus=bus) \
                        if args.client == "sdk" else tether.async_http_client(bus=bus)
                    async with sdk:
                        await one_round(bus, sdk, url, 5, -1)  # warm-up: connections, KV buckets, imports
                        rounds = [await one_round(bus, sdk, url, args.steps, n) for n in range(args.rounds)]
                    await Hub.of(bus).aclose()
            finally:
                server.stop()
    finally:
        provider.terminate()
        provider.wait(10)
    keys = ("live_wall_ms", "live_cpu_ms", "replay_wall_ms", "replay_cpu_ms", "journal_read_ms", "resume_s",
            "lookup_us", "unacked_wall_ms", "bare_ack_ms")
    med = {k: statistics.median(r[k] for r in rounds) for k in keys}
    return {"client": args.client, "steps": args.steps, "rounds": args.rounds, "median": med,
            "replay_over_live_wall": med["replay_wall_ms"] / med["live_wall_ms"],
            "replay_over_live_cpu": med["replay_cpu_ms"] / med["live_cpu_ms"],
            "lookup_over_live_wall": med["lookup_us"] / 1000 / med["live_wall_ms"],
            "ack_added_ms": med["live_wall_ms"] - med["unacked_wall_ms"],
            "acked_over_unacked_wall": med["live_wall_ms"] / med["unacked_wall_ms"],
            "replay_over_live_wall_per_round": [r["replay_wall_ms"] / r["live_wall_ms"] for r in rounds],
            "per_round": rounds,
            "hash_us": hash_cost(), "stream_lookup_us": stream_lookup()}


def hash_cost() -> float:
    """:func:`request_hash` of a 20-message request, per call (every call pays it, replayed or not)."""
    body = {"model": "gpt-4o-mini", "temperature": 0,
            "messages": [{"role": "user" if i % 2 else "assistant", "content": "word " * 40} for i in range(20)]}
    t0 = time.perf_counter()
    for _ in range(2000):
        request_hash(body)
    return (time.perf_counter() - t0) / 2000 * 1e6


def report(result: dict[str, Any]) -> None:
    m = result["median"]
    print(f"{result['steps']} steps, {result['rounds']} rounds (medians), client: {result['client']}")
    print(f"  live call        {m['live_wall_ms']:.2f} ms wall, {m['live_cpu_ms']:.2f} ms CPU")
    print(f"  its ack wait     {result['ack_added_ms']:.2f} ms (unacked {m['unacked_wall_ms']:.2f} ms): "
          f"acked / unacked {result['acked_over_unacked_wall']:.2f}; a bare publish-and-ack {m['bare_ack_ms']:.2f} ms")
    print(f"  replayed call    {m['replay_wall_ms']:.2f} ms wall, {m['replay_cpu_ms']:.2f} ms CPU   "
          f"ratio {result['replay_over_live_wall']:.3f} wall, {result['replay_over_live_cpu']:.2f} CPU "
          f"(rounds: {', '.join(f'{r:.3f}' for r in result['replay_over_live_wall_per_round'])})")
    print(f"  lookup + return  {m['lookup_us']:.1f} µs   ratio {result['lookup_over_live_wall']:.3f} of a live call")
    print(f"  resume           {m['resume_s'] * 1000:.0f} ms for {result['steps']} steps "
          f"(journal read {m['journal_read_ms']:.0f} ms)")
    print(f"  request hash     {result['hash_us']:.1f} µs per call (20 messages)")
    print(f"  stream lookup    {result['stream_lookup_us']:.1f} µs per replayed stream of 200 chunks")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", choices=["http", "sdk"], default="http")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    out = asyncio.run(main(options))
    if options.json:
        print(json.dumps(out, indent=2))
    else:
        report(out)
