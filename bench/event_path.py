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

    .venv/bin/python bench/event_path.py --base-root /work/wt-base
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pickle
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def capture(path: Path) -> list[str]:
    """A real run's events, as its publisher was handed them, pickled to ``path``; their types."""
    import openai
    from llm_path import TOOLS, tether_beside_a_fake_provider  # bench/ is this script's directory

    import tether
    import tether.adapters
    from tether.bus._publisher import Publisher

    events: list[Any] = []
    prepare = Publisher.prepare

    def kept(self: Publisher, event: Any) -> Any:
        events.append(event)
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

    with tether_beside_a_fake_provider() as url:
        asyncio.run(run(url))
        tether.adapters.background_hub().flush_sync(10)
    Publisher.prepare = prepare  # type: ignore[method-assign]
    path.write_bytes(pickle.dumps(events))
    return [e.type for e in events]


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
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.number, args.repeat)))
        return
    roots = {"new": HERE.parent, **({"old": args.base_root.resolve()} if args.base_root else {})}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.pickle"
        types = capture(path)
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
