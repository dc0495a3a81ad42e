"""The LLM path's CPU: the openai SDK bare and under ``tether.instrument``, per thread, in one process.

One ``nats-server -js`` and one fake provider (a process of its own) are started here; a bare
``AsyncOpenAI`` and an instrumented one alternate in blocks of ``--block`` calls (each instrumented
call in a ``tether.run`` of its own, on tether's background bus), so drift hits both. Prints, per
call, the median over the blocks of: the agent thread's CPU added, the background bus thread's
CPU, the whole process's CPU added (every thread), and the wall time added. For old code beside
new, run it twice with ``PYTHONPATH`` pointing at the other checkout, one after the other.

``--pieces``: instead, each piece cut in December 2026 (session 9), the old way and the new one,
timed in this process (``time.thread_time``, best of five rounds).

    .venv/bin/python bench/llm_path.py --calls 600
    PYTHONPATH=/tmp/base .venv/bin/python bench/llm_path.py --calls 600
    .venv/bin/python bench/llm_path.py --pieces
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable, Iterator
from typing import Any

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


async def alternate(url: str, calls: int, block: int) -> dict[str, float]:
    import openai

    import tether
    import tether.adapters
    from tether.adapters import _hub

    tethered = openai.AsyncOpenAI(base_url=url, api_key="sk-bench-0000", max_retries=0)
    tether.instrument(tethered)
    bare = openai.AsyncOpenAI(base_url=url, api_key="sk-bench-0000", max_retries=0)

    async def one(client: Any, i: int) -> None:
        messages = [{"role": "user", "content": f"What is the weather in city {i}?"}]
        await client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)

    async def in_run(i: int) -> None:
        async with tether.run(agent="weather-bot"):
            await one(tethered, i)

    async def plain(i: int) -> None:
        await one(bare, i)

    for i in range(30):  # warm up both, and start the background bus
        await in_run(-i)
        await plain(-i)
    background = _hub._background
    assert background is not None
    bus_clock = time.pthread_getcpuclockid(background[0].ident or 0)
    await asyncio.to_thread(tether.adapters.flush)
    rows: dict[str, list[float]] = {k: [] for k in ("agent", "bus", "process", "wall")}
    for n in range(calls // block):
        measured: dict[str, tuple[float, float, float, float]] = {}
        for name, fn in (("bare", plain), ("tether", in_run)):
            t0, c0, b0, p0 = time.perf_counter(), time.thread_time(), time.clock_gettime(bus_clock), time.process_time()
            for i in range(block):
                await fn(n * block + i)
            if name == "tether":
                await asyncio.to_thread(tether.adapters.flush)  # its events are out: their CPU counts
            t1, c1, b1, p1 = time.perf_counter(), time.thread_time(), time.clock_gettime(bus_clock), time.process_time()
            measured[name] = ((c1 - c0) / block, (b1 - b0) / block, (p1 - p0) / block, (t1 - t0) / block)
        rows["agent"].append(measured["tether"][0] - measured["bare"][0])
        rows["bus"].append(measured["tether"][1])  # the bare client never wakes the bus's thread
        rows["process"].append(measured["tether"][2] - measured["bare"][2])
        rows["wall"].append(measured["tether"][3] - measured["bare"][3])
    return {k: statistics.median(v) * 1000 for k, v in rows.items()}


def pieces() -> list[tuple[str, float, float]]:
    from tether.middleware import BreakerPolicy
    from tether.middleware._engine import _NS, _completed_is_plain, terminal_id
    from tether.middleware._shared import Breakers
    from tether.schemas import LlmCallCompleted, LlmCallRequested, Usage, ids_fit, plain_json, uuid7

    system = {"role": "system", "content": "Answer about the weather."}
    request = {"model": "gpt-4o-mini", "tools": TOOLS, "messages": [
        system, {"role": "user", "content": "What is the weather in city 3?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "city 3"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "It is sunny in city 3."}]}
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1796629337, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "It is sunny.", "refusal": None},
                           "logprobs": None, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 34, "completion_tokens": 6, "total_tokens": 40}}
    call_id = uuid7()
    requested: dict[str, Any] = dict(
        call_id=call_id, provider="openai", model="gpt-4o-mini", operation="chat", mode="inline", stream=False,
        route="openai:gpt-4o-mini", parameters={"tools": TOOLS}, request=request, request_hash="x" * 64)
    completed: dict[str, Any] = dict(
        call_id=call_id, provider="openai", model="gpt-4o-mini", attempt=1,
        usage=Usage(input_tokens=34, output_tokens=6), latency_ms=3.2, ttft_ms=None, finish_reason="stop",
        response=answer, chunks=None)

    def requested_new() -> Any:
        f = requested
        plain = (ids_fit(f["call_id"], f["provider"], f["model"]) and type(f["stream"]) is bool
                 and plain_json(f["parameters"]) and plain_json(f["request"]))
        return (LlmCallRequested.trusted if plain else LlmCallRequested)(**f)

    def completed_new() -> Any:
        return (LlmCallCompleted.trusted if _completed_is_plain(completed) else LlmCallCompleted)(**completed)

    def us(fn: Callable[[], Any], n: int = 4000) -> float:
        return min(timeit.repeat(fn, timer=time.thread_time, number=n, repeat=5)) / n * 1e6

    breakers = Breakers(None, None)  # type: ignore[arg-type]  # a closed breaker's count touches neither
    policy = BreakerPolicy()

    async def on_loop(n: int, task: bool) -> float:
        loop = asyncio.get_running_loop()
        started = time.thread_time()
        for _ in range(n):
            if task:  # the old way: an engine step spawned on the bus's loop
                loop.call_soon(lambda: loop.create_task(
                    breakers.record("openai:gpt-4o-mini", policy, ok=True, counts=True, call_id="c")))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        return (time.thread_time() - started) / n * 1e6

    async def hops(n: int) -> float:
        started = time.process_time()
        for _ in range(n):
            await asyncio.to_thread(lambda: None)
        return (time.process_time() - started) / n * 1e6

    return [
        ("llm.call.requested payload", us(lambda: LlmCallRequested(**requested)), us(requested_new)),
        ("llm.call.completed payload", us(lambda: LlmCallCompleted(**completed)), us(completed_new)),
        ("a terminal event id", us(lambda: str(uuid.uuid5(_NS, f"{call_id}/completed"))),
         us(lambda: terminal_id(call_id, "completed"))),
        ("a closed breaker's count (bus loop's task / in the caller)",
         min(asyncio.run(on_loop(4000, True)) - asyncio.run(on_loop(4000, False)) for _ in range(5)),
         us(lambda: breakers.record_closed("openai:gpt-4o-mini", policy, ok=True, counts=True, call_id="c"))),
        ("an async run's start: the to_thread round trip (process CPU)", min(asyncio.run(hops(2000)) for _ in range(3)),
         0.0),
    ]



@contextlib.contextmanager
def tether_beside_a_fake_provider(**env: str) -> Iterator[str]:
    """The fake provider in a process of its own and a nats-server for this one, with
    ``TETHER_NATS_URL``, ``TETHER_HOME`` (a temporary one) and ``env`` set: yields the provider's
    URL; tether's adapters are shut down and the provider stopped at the end."""
    from tether.testing import NatsServer

    provider = subprocess.Popen([sys.executable, "-m", "tether", "fake-provider", "--seed", "1"],
                                stdout=subprocess.PIPE, text=True)
    assert provider.stdout is not None
    url = provider.stdout.readline().strip()
    try:
        with NatsServer() as nats, tempfile.TemporaryDirectory() as home:
            os.environ.update(TETHER_NATS_URL=nats.url, TETHER_HOME=home, **env)
            yield url
            import tether.adapters

            tether.adapters.shutdown()
    finally:
        provider.terminate()
        provider.wait()

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=600, help="calls of each client")
    parser.add_argument("--block", type=int, default=40, help="calls of one client before the other's")
    parser.add_argument("--pieces", action="store_true", help="the pieces cut, old way and new, instead")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.pieces:
        rows = pieces()
        if args.json:
            print(json.dumps([{"piece": name, "before_us": a, "after_us": b} for name, a, b in rows]))
            return
        print("| piece | before | after |\n|---|---|---|")
        for name, before, after in rows:
            print(f"| {name} | {before:.1f} µs | {after:.1f} µs |")
        return
    with tether_beside_a_fake_provider() as url:
        result = asyncio.run(alternate(url, args.calls, args.block))
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({**result, "load": load}))
        return
    print(f"per call, median of {args.calls // args.block} blocks of {args.block} (load {load:.1f}): agent thread CPU "
          f"added {result['agent']:.3f} ms, bus thread CPU {result['bus']:.3f} ms, process CPU added "
          f"{result['process']:.3f} ms, wall added {result['wall']:.3f} ms")


if __name__ == "__main__":
    main()
