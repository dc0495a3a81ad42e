"""The background hub's hand-overs, old way beside new in one process, alternating in blocks (so the
machine's drift cancels): the openai SDK's chat call through ``tether.instrument`` with the bus's loop
collecting hand-overs (``_hub._LINGER_S``: 5 ms) and without (0, as before 7 December 2026's session 13),
and a plain thread's acked publish (``Hub.publish_sync``) by its hand-over and by an engine step (as before).

``--provider-ms``: the fake provider's latency per call (0: it answers at once, as in the frameworks'
benchmark; 50: an agent whose calls take a provider's tens of milliseconds, where collecting must cost
nothing). A ``nats-server -js`` and the fake provider (in this process) are started here. Prints CPU of
the process per call (the fake provider's included, the same in every variant), and added over ``bare``.

    .venv/bin/python bench/hub_ab.py
    .venv/bin/python bench/hub_ab.py --provider-ms 50 --calls 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def calls(url: str, block: int, rounds: int) -> dict[str, float]:
    """CPU per chat call: bare, and through tether with and without collecting, alone and in a run."""
    import openai

    import tether
    import tether.adapters
    from tether.adapters import _hub

    bare = openai.AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=0)
    tethered = tether.instrument(openai.AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=0))
    messages: Any = [{"role": "user", "content": "hello there"}]

    async def one(client: Any) -> None:
        await client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    async def in_run(client: Any) -> None:
        async with tether.run(agent="bench"):
            await one(client)

    variants: dict[str, tuple[Callable[[Any], Awaitable[None]], Any, float]] = {
        "bare": (one, bare, 0.0), "tether, no collecting": (one, tethered, 0.0),
        "tether, collecting": (one, tethered, 0.005), "in a run, no collecting": (in_run, tethered, 0.0),
        "in a run, collecting": (in_run, tethered, 0.005)}
    for _ in range(10):
        for call, client, _linger in variants.values():
            await call(client)
    await asyncio.to_thread(tether.adapters.flush)
    linger, collect = _hub._LINGER_S, _hub.Hub._collect
    collections = [0]

    def counted(self: _hub.Hub) -> None:
        collections[0] += 1
        collect(self)

    _hub.Hub._collect = counted  # type: ignore[method-assign]
    samples: dict[str, list[float]] = {name: [] for name in variants}
    timers: dict[str, int] = dict.fromkeys(variants, 0)
    try:
        for _ in range(rounds):
            for name, (call, client, period) in variants.items():
                _hub._LINGER_S = period
                before = collections[0]
                started = time.process_time()
                for _ in range(block):
                    await call(client)
                if client is tethered:
                    await asyncio.to_thread(tether.adapters.flush)  # its events are out: their CPU counts
                samples[name].append((time.process_time() - started) / block * 1000)
                timers[name] += collections[0] - before
    finally:
        _hub._LINGER_S, _hub.Hub._collect = linger, collect  # type: ignore[method-assign]
    out = {name: statistics.median(values) for name, values in samples.items()}
    out.update({f"{name}: collections per call": count / (block * rounds) for name, count in timers.items()
                if "collecting" in name and "no collecting" not in name})
    return out


def plain_thread_publishes(block: int, rounds: int) -> dict[str, float]:
    """CPU per acked publish from a thread with no loop: by the hand-over (now), by an engine step (before)."""
    from tether.adapters import _hub
    from tether.schemas import Event, RunStarted

    hub = _hub.background_hub()

    def event() -> Event:
        return Event.of(RunStarted(name="bench"), runid="run-bench", source="urn:tether:bench")

    def by_engine_step(e: Event) -> None:
        hub.call_sync(lambda: hub.apublish(e), timeout=60)

    ways: dict[str, Callable[[Event], None]] = {"hand-over": hub.publish_sync, "engine step": by_engine_step}
    for _ in range(100):
        for publish in ways.values():
            publish(event())
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, publish in ways.items():
            started = time.process_time()
            for _ in range(block):
                publish(event())
            samples[name].append((time.process_time() - started) / block * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50, help="calls per block of a variant")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--provider-ms", type=float, default=0.0, help="the fake provider's latency per call")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from tether.testing import NatsServer
    from tether.testing.fake_provider import FakeProvider

    latency = f"{args.provider_ms}ms" if args.provider_ms > 0 else None
    with NatsServer() as nats, tempfile.TemporaryDirectory() as home, FakeProvider(seed=1, latency=latency) as fake:
        os.environ.update(TETHER_NATS_URL=nats.url, TETHER_HOME=home)
        per_call = asyncio.run(calls(fake.url, args.calls, args.rounds))
        per_publish = plain_thread_publishes(200, args.rounds * 2)
        import tether.adapters

        tether.adapters.shutdown()
    out = {"cpu_ms_per_call": per_call, "cpu_us_per_acked_publish_from_a_thread": per_publish,
           "provider_ms": args.provider_ms, "load": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(out))
        return
    print(f"CPU of the process per chat call, ms (provider latency {args.provider_ms:g} ms, load {out['load']:.1f}):")
    for name, value in per_call.items():
        if name.endswith("per call"):
            print(f"  {name}: {value:.2f} (the bus's loop's own timer)")
            continue
        added = "" if name == "bare" else f"   added {value - per_call['bare']:.3f}"
        print(f"  {name:26} {value:.3f}{added}")
    on, off = per_call["tether, collecting"], per_call["tether, no collecting"]
    print(f"  collecting / not, added CPU: {(on - per_call['bare']) / (off - per_call['bare']):.2f}")
    print("CPU per acked publish from a plain thread, µs:")
    for name, value in per_publish.items():
        print(f"  {name:26} {value:.0f}")
    print(f"  hand-over / engine step: {per_publish['hand-over'] / per_publish['engine step']:.2f}")


if __name__ == "__main__":
    main()
