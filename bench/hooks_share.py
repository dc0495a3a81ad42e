"""Where the CPU of pydantic-ai's capability goes when driven alone (a run and one tool call, as
``bench/framework_agent.py --hook-runs`` drives it): the process's and the agent thread's CPU per agent
run, in four variants alternating in blocks of ``--block`` runs in one process, on the background bus of
a ``nats-server -js`` started here:

- ``full``: as users run it (the tool journal: the call's start acked before the tool runs, its end
  before the caller has it);
- ``no acked waits``: the same events published, none waited for (``Hub.apublish`` and ``Hub.flush``
  patched not to wait): what the journal's two round trips cost;
- ``no publishing``: the events built and dropped (nothing handed to the bus's thread);
- ``bare``: the tool called without tether.

Run it with ``.venv-pydantic-ai``'s python (another checkout's: the old code beside the new).

``--round-trips``: one acked wait from an event loop that is not the bus's, alone (no framework): an
event emitted then a flush (how the tool journal waited before session 12), the event's own ack
(``apublish``: how it waits now, as a run's model call does), and the event emitted without waiting.

    .venv-pydantic-ai/bin/python bench/hooks_share.py --runs 6000 --block 200
    .venv/bin/python bench/hooks_share.py --round-trips --runs 8000 --block 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any


def variants() -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    """Each variant: (set it up, one agent run)."""
    from framework_agent import other_hooks  # bench/ is this script's directory

    from tether.adapters._hub import Hub

    one, none = other_hooks("pydantic-ai")
    real = {name: getattr(Hub, name) for name in ("apublish", "flush", "aemit")}

    async def sent(self: Hub, event: Any) -> None:
        self.emit(event)

    async def not_waited(self: Hub, timeout: float | None = None) -> None:
        return None

    async def dropped(self: Hub, event: Any) -> None:
        return None

    def patch(**methods: Any) -> Callable[[], None]:
        def apply() -> None:
            for name, method in {**real, **methods}.items():
                setattr(Hub, name, method)
        return apply

    return {"full": (patch(), one), "no acked waits": (patch(apublish=sent, flush=not_waited), one),
            "no publishing": (patch(apublish=dropped, flush=not_waited, aemit=dropped), one),
            "bare": (patch(), none)}


def measure(runs: int, block: int) -> dict[str, dict[str, float]]:
    import tether.adapters

    chosen = variants()
    for setup, run in chosen.values():
        setup()
        for _ in range(block):
            run()
    chosen["full"][0]()
    tether.adapters.flush()
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in chosen}
    for _ in range(runs // block):
        for name, (setup, run) in chosen.items():
            setup()
            p0, t0 = time.process_time(), time.thread_time()
            for _ in range(block):
                run()
            tether.adapters.flush()  # what the block left on the bus's thread counts with it
            rows[name].append(((time.process_time() - p0) * 1e6 / block, (time.thread_time() - t0) * 1e6 / block))
    chosen["full"][0]()
    return {name: {"process CPU us per run": statistics.median(r[0] for r in row),
                   "agent thread CPU us per run": statistics.median(r[1] for r in row)} for name, row in rows.items()}


def round_trips(runs: int, block: int) -> dict[str, dict[str, float]]:
    import asyncio

    from tether.adapters._hub import background_hub
    from tether.schemas import Event, RunStarted

    hub = background_hub()

    def event() -> Event:
        return Event.of(RunStarted.trusted(name="bench", parent_run_id=None, input=None, tags=(), metadata={},
                                           resumed=False), runid="bench-run", source="urn:tether:bench")

    async def flushed() -> None:
        await hub.aemit(event())
        await hub.flush()

    async def acked() -> None:
        await hub.apublish(event())

    async def emitted() -> None:
        await hub.aemit(event())
        await asyncio.sleep(0)  # the wake-up the caller's loop makes for it

    async def go() -> dict[str, list[tuple[float, float]]]:
        ways = {"emit, then flush": flushed, "apublish": acked, "emit only": emitted}
        for way in ways.values():
            for _ in range(block):
                await way()
        await hub.flush()
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for _ in range(runs // block):
            for name, way in ways.items():
                p0, t0 = time.process_time(), time.thread_time()
                for _ in range(block):
                    await way()
                await hub.flush()
                rows[name].append(((time.process_time() - p0) * 1e6 / block, (time.thread_time() - t0) * 1e6 / block))
        return rows

    rows = asyncio.run(go())
    return {name: {"process CPU us per wait": statistics.median(r[0] for r in row),
                   "agent thread CPU us per wait": statistics.median(r[1] for r in row)} for name, row in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6000)
    parser.add_argument("--block", type=int, default=200)
    parser.add_argument("--round-trips", action="store_true", help="one acked wait alone, three ways")
    args = parser.parse_args()
    from tether.testing import NatsServer

    with NatsServer() as nats, tempfile.TemporaryDirectory() as home:
        os.environ.update(TETHER_NATS_URL=nats.url, TETHER_HOME=home)
        import tether.adapters

        try:
            result = (round_trips if args.round_trips else measure)(args.runs, args.block)
        finally:
            tether.adapters.shutdown()
    print(json.dumps({**result, "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
