"""Publish throughput: tether's ``emit`` path against plain nats-py, on one real nats-server.

What is measured, in one run against one ``nats-server -js`` started here (free
loopback port, temporary store, stopped at the end):

* **raw**: plain nats-py on its own connection, ``js.publish_async(subject, payload,
  headers=...)`` per message, then ``js.publish_async_completed()``. The messages are
  the *same bytes* tether publishes (subject, CloudEvents headers, ``Nats-Msg-Id``,
  payload), built beforehand with ``Publisher.prepare(event)`` and outside the timed
  section, so raw does no encoding work at all. Its pending bound is tether's (8192).
* **tether**: the whole path per event, timed: build the payload model
  (``ToolCallCompleted`` with ~300 bytes of data), wrap it with ``Event.of(...)``,
  ``await bus.emit(event)``; then one ``await bus.flush()`` (every event acked).

Both publish into the ``EVENTS`` stream that ``tether.bus.connect()`` provisions
(file storage, dedupe window), so the server does the same work for each. After a
warm-up of each side, the rounds alternate raw, tether, raw, tether...; the report
gives every round, the median events/s of each side and the ratio tether/raw. At the
end the stream's message count must equal everything published, so neither side can
have skipped work (a dropped, deduplicated or outboxed event fails the run).

Run it::

    make bench                                # .venv/bin/python bench/publish.py
    .venv/bin/python bench/publish.py --events 20000 --rounds 5
    .venv/bin/python bench/publish.py --json  # machine-readable results on stdout
    .venv/bin/python bench/publish.py --profile /tmp/tether.prof --events 20000
                                              # cProfile of tether's side only

The exit status is 1 if the verification fails, 0 otherwise (whatever the ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from tether.bus import EVENTS_STREAM, Bus, PendingMessage, Publisher, PublisherStats, connect
from tether.schemas import Event, ToolCallCompleted
from tether.testing import NatsServer

Side = Literal["raw", "tether"]

TARGET_RATIO = 0.80
AGENT = "bench-agent"
PENDING_BOUND = 8192  # tether's default BusConfig.max_pending, used for raw as well

# A small search result: the JSON payload of each event is about 300 bytes.
RESULT: dict[str, Any] = {
    "query": "jetstream publish throughput",
    "hits": [
        {"title": "JetStream publish acks", "url": "https://docs.nats.io/js/pub", "score": 0.93},
        {"title": "Dedupe with Nats-Msg-Id", "url": "https://docs.nats.io/js/dedupe", "score": 0.71},
    ],
    "took_ms": 12,
}


def make_event(i: int, runid: str) -> Event:
    """One event as an agent would build it: payload model, then envelope."""
    payload = ToolCallCompleted(call_id=f"call-{i:08d}", tool="search", result=RESULT, duration_ms=12.5)
    return Event.of(payload, runid=runid, agentid=AGENT)


@dataclass(frozen=True)
class Sample:
    phase: Literal["warmup", "round"]
    round: int
    side: Side
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def us_per_event(self) -> float:
        return self.seconds / self.events * 1e6


class VerificationError(RuntimeError):
    pass


# -- the two sides ---------------------------------------------------------------------


async def publish_raw(js: JetStreamContext, publisher: Publisher, n: int, runid: str) -> float:
    """Plain nats-py async publishing of tether's own messages; returns seconds."""
    messages: list[PendingMessage] = [publisher.prepare(make_event(i, runid)) for i in range(n)]
    futures: list[asyncio.Future[Any]] = []
    gc.collect()
    start = time.perf_counter()
    for m in messages:
        futures.append(await js.publish_async(m.subject, m.payload, headers=m.headers))
    await js.publish_async_completed()
    elapsed = time.perf_counter() - start
    failed = [f.exception() for f in futures if f.exception() is not None]
    duplicates = sum(1 for f in futures if f.exception() is None and f.result().duplicate)
    if failed or duplicates:
        raise VerificationError(
            f"raw: {len(failed)} publish(es) failed (first: {failed[:1]!r}), {duplicates} duplicate(s)")
    return elapsed


async def publish_tether(bus: Bus, n: int, runid: str) -> float:
    """tether's full path: payload model, ``Event.of``, ``bus.emit``; then ``flush``."""
    before = dataclasses.replace(bus.publisher.stats)
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        await bus.emit(make_event(i, runid))
    await bus.flush()
    elapsed = time.perf_counter() - start
    check_tether_stats(before, bus.publisher.stats, n)
    return elapsed


def check_tether_stats(before: PublisherStats, after: PublisherStats, n: int) -> None:
    delta = {f.name: getattr(after, f.name) - getattr(before, f.name)
             for f in dataclasses.fields(PublisherStats)
             if isinstance(getattr(after, f.name), int)}
    expected = {"sent": n, "acked": n, "duplicates": 0, "outboxed": 0, "rejected": 0, "dropped": 0}
    wrong = {k: delta[k] for k, v in expected.items() if delta[k] != v}
    if wrong:
        raise VerificationError(f"tether: expected {expected}, got {wrong} (last error: {after.last_error})")


# -- the run ---------------------------------------------------------------------------


@dataclass
class Report:
    events: int
    rounds: int
    warmup: int
    samples: list[Sample]
    stream_messages: int
    expected_messages: int
    server_version: str | None

    def rates(self, side: Side) -> list[float]:
        return [s.rate for s in self.samples if s.phase == "round" and s.side == side]

    def median(self, side: Side) -> float:
        return statistics.median(self.rates(side))

    @property
    def ratio(self) -> float:
        return self.median("tether") / self.median("raw")

    @property
    def verified(self) -> bool:
        return self.stream_messages == self.expected_messages

    def as_json(self) -> dict[str, Any]:
        raw, tether = self.median("raw"), self.median("tether")
        return {
            "events_per_round": self.events,
            "rounds": self.rounds,
            "warmup": self.warmup,
            "nats_server": self.server_version,
            "samples": [
                {"phase": s.phase, "round": s.round, "side": s.side, "events": s.events,
                 "seconds": round(s.seconds, 4), "events_per_s": round(s.rate, 1)}
                for s in self.samples
            ],
            "median_events_per_s": {"raw": round(raw, 1), "tether": round(tether, 1)},
            "median_us_per_event": {"raw": round(1e6 / raw, 2), "tether": round(1e6 / tether, 2)},
            "overhead_us_per_event": round(1e6 / tether - 1e6 / raw, 2),
            "ratio": round(self.ratio, 4),
            "target_ratio": TARGET_RATIO,
            "stream_messages": self.stream_messages,
            "expected_messages": self.expected_messages,
            "verified": self.verified,
        }

    def table(self) -> str:
        lines = [
            f"publish benchmark: {self.events:,} events x {self.rounds} round(s) per side, "
            f"warm-up {self.warmup:,}, nats-server {self.server_version or '?'}",
            "",
            f"{'round':>7}  {'side':<7}{'events':>9}{'seconds':>10}{'events/s':>11}{'us/event':>10}",
        ]
        for s in self.samples:
            label = "warmup" if s.phase == "warmup" else str(s.round)
            lines.append(f"{label:>7}  {s.side:<7}{s.events:>9,}{s.seconds:>10.3f}"
                         f"{s.rate:>11,.0f}{s.us_per_event:>10.1f}")
        raw, tether = self.median("raw"), self.median("tether")
        lines += [
            "",
            f"{'median':>7}  {'raw':<7}{'':>19}{raw:>11,.0f}{1e6 / raw:>10.1f}",
            f"{'median':>7}  {'tether':<7}{'':>19}{tether:>11,.0f}{1e6 / tether:>10.1f}",
            f"tether overhead: {1e6 / tether - 1e6 / raw:.1f} us/event "
            f"(budget for the target: {0.25e6 / raw:.1f} us/event)",
            f"stream {EVENTS_STREAM}: {self.stream_messages:,} messages, expected "
            f"{self.expected_messages:,}: {'OK' if self.verified else 'MISMATCH'}",
            "",
            f"tether/raw = {self.ratio:.2f} (target >= {TARGET_RATIO:.2f})",
        ]
        return "\n".join(lines)


def progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


async def run(url: str, home: Path, *, events: int, rounds: int, warmup: int, quiet: bool) -> Report:
    # The bus connects first: it provisions EVENTS, which the raw side needs too.
    bus = await connect(url=url, home=home)
    raw_nc: NATS = await nats.connect(url, name="bench-raw")
    try:
        raw_js = raw_nc.jetstream(publish_async_max_pending=PENDING_BOUND)
        start_count = (await raw_js.stream_info(EVENTS_STREAM)).state.messages
        samples: list[Sample] = []

        async def measure(phase: Literal["warmup", "round"], rnd: int, side: Side, n: int) -> None:
            runid = f"bench-{side}-{phase}-{rnd}"
            if side == "raw":
                seconds = await publish_raw(raw_js, bus.publisher, n, runid)
            else:
                seconds = await publish_tether(bus, n, runid)
            sample = Sample(phase, rnd, side, n, seconds)
            samples.append(sample)
            progress(f"  {phase} {rnd} {side:<6} {n:>8,} events  {sample.rate:>9,.0f}/s", quiet)

        if warmup:
            await measure("warmup", 0, "raw", warmup)
            await measure("warmup", 0, "tether", warmup)
        for rnd in range(1, rounds + 1):
            await measure("round", rnd, "raw", events)
            await measure("round", rnd, "tether", events)

        info = await raw_js.stream_info(EVENTS_STREAM)
        published = sum(s.events for s in samples)
        return Report(
            events=events, rounds=rounds, warmup=warmup, samples=samples,
            stream_messages=info.state.messages - start_count, expected_messages=published,
            server_version=(await bus.status())["server"]["version"],
        )
    finally:
        await raw_nc.close()
        await bus.close()


async def profile_tether(url: str, home: Path, *, events: int, warmup: int, out: Path) -> str:
    """tether's side alone under cProfile; returns the top of the profile as text."""
    bus = await connect(url=url, home=home)
    try:
        if warmup:
            await publish_tether(bus, warmup, "bench-profile-warmup")
        profiler = cProfile.Profile()
        profiler.enable()
        seconds = await publish_tether(bus, events, "bench-profile")
        profiler.disable()
    finally:
        await bus.close()
    profiler.dump_stats(out)
    text = io.StringIO()
    print(f"tether only, under cProfile: {events:,} events in {seconds:.2f}s "
          f"({events / seconds:,.0f}/s; cProfile slows it down), stats in {out}", file=text)
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    return text.getvalue()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000, help="events per side per round (50000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of raw then tether (3)")
    parser.add_argument("--warmup", type=int, default=2_000, help="warm-up events per side (2000)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="instead: profile tether's side only, write pstats to FILE")
    args = parser.parse_args(argv)
    if args.events < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--events and --rounds must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = NatsServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="tether-bench-") as home:
            if args.profile is not None:
                print(asyncio.run(profile_tether(server.url, Path(home), events=args.events,
                                                 warmup=args.warmup, out=args.profile)))
                return 0
            progress(f"nats-server at {server.url} (pid {server.pid}), store {server.directory}", args.json)
            report = asyncio.run(run(server.url, Path(home), events=args.events, rounds=args.rounds,
                                     warmup=args.warmup, quiet=args.json))
    except VerificationError as exc:
        print(f"verification failed: {exc}", file=sys.stderr)
        return 1
    finally:
        server.close()
    print(json.dumps(report.as_json(), indent=2) if args.json else report.table())
    return 0 if report.verified else 1


if __name__ == "__main__":
    sys.exit(main())
