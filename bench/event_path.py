"""One event's CPU on its way to NATS: built (``Event.of``) and encoded (``Publisher.prepare`` and the header
block nats-py gets), per event, for the events of a real agent run, old code and new side by side.

A run like pydantic-ai's agent step pair (the openai SDK under ``tether.instrument``, one tool under
``@tether.tool``, two model calls) is made once against the fake provider on a ``nats-server`` started here,
and the events its publisher was handed are kept (run started, two calls requested and completed, the
tool's start and end, run finished: 8 events). Each checkout given (this one and ``--base-root``'s, as
``PYTHONPATH`` of a child process each) then times, on those very events (pickled between the two), in
alternating rounds: ``build``, each event made again from its payload and envelope as the call loop
makes it (a fresh id and time); ``encode``, each event's message as the publisher sends it (each pass
the events of another run: its own run id and trace). Best of
``--repeat`` rounds of ``--number`` passes, in µs per event, and new/old.

``--in-situ RUNS``: instead, RUNS such runs, and each event handed to the publisher written, on the bus's
thread in the run, both the attribute-by-attribute way (main's: ``encode_binary``, ``HeaderBlock.of``) and
this checkout's (in turns which first): the thread CPU of each per event, p50 (caches as a run leaves them).

    .venv/bin/python bench/event_path.py --base-root /work/wt-base
    .venv/bin/python bench/event_path.py --in-situ 300
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def capture(path: Path, runs: int = 1) -> tuple[list[str], dict[str, list[int]]]:
    """A real run's events, as its publisher was handed them, pickled to ``path``; their types. With
    ``runs`` above 1, that many runs, each event's message written on the bus's thread both ways, the
    attribute-by-attribute way (``encode_binary``, the block as ``HeaderBlock.of`` writes it: main's)
    and this checkout's ``prepare``, in turns which goes first: each way's thread CPU per event (ns)."""
    import openai
    from llm_path import TOOLS, tether_beside_a_fake_provider  # bench/ is this script's directory

    import tether
    import tether.adapters
    from tether.bus._binding import encode_binary
    from tether.bus._deliverable import oversized
    from tether.bus._headers import HeaderBlock
    from tether.bus._outbox import PendingMessage
    from tether.bus._publisher import Publisher
    from tether.bus._subjects import event_subject

    events: list[Any] = []
    prepare = Publisher.prepare
    clock = time.thread_time_ns
    spent: dict[str, list[int]] = {"attribute by attribute": [], "one pass": []}

    def long_way(self: Publisher, event: Any) -> None:
        headers, payload = encode_binary(event)
        headers["Nats-Msg-Id"] = event.id
        message = PendingMessage(event.id, event_subject(event), headers, payload)
        oversized(message, max_payload=self._nc.max_payload or 0, claim_check_above=self.large_payload_bytes)
        HeaderBlock.of(headers)

    def one_pass(self: Publisher, event: Any) -> None:
        headers = prepare(self, event).headers
        if type(headers) is not HeaderBlock:
            HeaderBlock.of(headers)

    def kept(self: Publisher, event: Any) -> Any:
        if len(events) < 8:
            events.append(event)
        if runs > 1:
            ways = [("attribute by attribute", long_way), ("one pass", one_pass)]
            for name, way in ways if len(spent["one pass"]) % 2 else ways[::-1]:
                started = clock()
                way(self, event)
                spent[name].append(clock() - started)
        return prepare(self, event)

    Publisher.prepare = kept  # type: ignore[method-assign]

    @tether.tool
    def get_weather(city: str) -> dict[str, str]:
        return {"city": city, "weather": "sunny"}

    async def run(url: str) -> None:
        sdk = tether.instrument(openai.AsyncOpenAI(base_url=url, api_key="sk-bench-0000"))
        messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
        async with tether.run(agent="weather-bot"):
            first = await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
            call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
            result = get_weather(**json.loads(call.function.arguments))  # type: ignore[union-attr]
            messages += [first.choices[0].message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
        await sdk.close()

    async def all_runs(url: str) -> None:
        for _ in range(runs):
            await run(url)

    with tether_beside_a_fake_provider() as url:
        asyncio.run(all_runs(url))
        tether.adapters.background_hub().flush_sync(10)
    Publisher.prepare = prepare  # type: ignore[method-assign]
    path.write_bytes(pickle.dumps(events))
    return [e.type for e in events], spent


def measure(path: Path, number: int, repeat: int) -> dict[str, float]:
    """µs per event of building and of encoding the pickled events, in this process's tether."""
    from tether.bus._headers import HeaderBlock
    from tether.bus._publisher import Publisher
    from tether.schemas import Event

    events = pickle.loads(path.read_bytes())
    turn = itertools.count()

    class Connection:
        max_payload = 1024 * 1024

    publisher = Publisher.__new__(Publisher)  # what prepare reads of it, without a connection
    publisher._nc = Connection()  # type: ignore[assignment]
    publisher.max_event_bytes, publisher.large_payload_bytes = 64 * 1024 * 1024, 256 * 1024

    def build() -> None:
        for e in events:
            Event.of(e.data, source=e.source, runid=e.runid, agentid=e.agentid, traceparent=e.traceparent,
                     extensions=e.extensions or None)

    runs = [[Event.of(e.data, source=e.source, runid=f"run-{k}", agentid=e.agentid, extensions=e.extensions or None,
                      traceparent=None if e.traceparent is None else f"00-{k:032x}-{i + 1:016x}-01")
             for i, e in enumerate(events)] for k in range(number)]  # each pass another run's (trace, run id)

    def encode() -> None:
        for e in runs[next(turn) % number]:
            headers = publisher.prepare(e).headers
            if type(headers) is not HeaderBlock:
                HeaderBlock.of(headers)  # as the publisher's send does

    return {name: min(timeit.repeat(fn, number=number, repeat=repeat)) / number / len(events) * 1e6
            for name, fn in (("build", build), ("encode", encode))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-root", type=Path, help="a checkout of the old code, timed beside this one")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the checkouts")
    parser.add_argument("--number", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--in-situ", type=int, metavar="RUNS",
                        help="instead: RUNS runs, each event written both ways on the bus's thread (this checkout)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.number, args.repeat)))
        return
    if args.in_situ:
        with tempfile.TemporaryDirectory() as tmp:
            _, spent = capture(Path(tmp) / "events.pickle", args.in_situ)
        p50 = {name: statistics.median(ns) / 1000 for name, ns in spent.items()}
        if args.json:
            print(json.dumps({"events": len(spent["one pass"]), "load": os.getloadavg()[0], "p50_us": p50}))
            return
        print(f"{len(spent['one pass'])} events of {args.in_situ} runs, each written both ways on the bus's thread "
              f"(load {os.getloadavg()[0]:.1f}); thread CPU per event, p50: " + ", ".join(
                  f"{name} {us:.1f} µs" for name, us in p50.items())
              + f"; one pass / attribute by attribute {p50['one pass'] / p50['attribute by attribute']:.2f}")
        return
    roots = {"new": HERE.parent, **({"old": args.base_root.resolve()} if args.base_root else {})}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.pickle"
        types, _ = capture(path)
        got: dict[str, list[dict[str, float]]] = {name: [] for name in roots}
        for _ in range(args.rounds):
            for name, root in roots.items():
                out = subprocess.run([sys.executable, __file__, "--measure", str(path), "--number", str(args.number),
                                      "--repeat", str(args.repeat)], check=True, capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": str(root)})
                got[name].append(json.loads(out.stdout))
    best = {name: {k: min(r[k] for r in rounds) for k in ("build", "encode")} for name, rounds in got.items()}
    if args.json:
        print(json.dumps({"events": types, "load": os.getloadavg()[0], "us_per_event": best}))
        return
    print(f"{len(types)} events of one run ({', '.join(sorted(set(types)))}); load {os.getloadavg()[0]:.1f}")
    print("| µs per event | " + " | ".join(best) + (" | new/old |" if "old" in best else " |"))
    print("|---" * (len(best) + 1 + ("old" in best)) + "|")
    for key in ("build", "encode"):
        cells = " | ".join(f"{best[name][key]:.2f}" for name in best)
        ratio = f" | {best['new'][key] / best['old'][key]:.2f} |" if "old" in best else " |"
        print(f"| {key} | {cells}{ratio}")


if __name__ == "__main__":
    main()
