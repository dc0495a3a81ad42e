"""tether's call loop alone: one agent run (two LLM calls and one tool call: two agent steps) without a
framework or a provider, bare and under tether, per step.

An ``httpx.AsyncClient`` posts two chat completions (the second after the tool's answer) to an
``httpx.MockTransport`` answering at once; the tool is an async function. ``tether``: the client's
transport is tether's (``AsyncTetherTransport`` over the same mock), the tool runs through
``FrameworkTools`` (as the framework adapters run tools), the run is a ``tether.run``, all on the
background bus of a ``nats-server -js`` started here. ``model`` (with ``--callgrind``): tether's
transport alone, no run and the tool bare (the LLM path of ``bench/frameworks.py``'s ``model``
variant). Without ``--callgrind``: ``bare`` and ``tether`` alternating in blocks, the agent thread's
CPU added and the bus thread's CPU per step (medians of the blocks). ``--callgrind``: this script
under valgrind's callgrind, instrumentation switched on only for ``--runs`` runs of ``--mode`` after a
warm-up: instructions per step, every thread (deterministic to a fraction of a percent, unlike CPU
time on a shared machine). Old code beside new: run it with another checkout's Python (its editable
install), one after the other.

    .venv/bin/python bench/call_loop.py --runs 1200
    .venv/bin/python bench/call_loop.py --callgrind --runs 100 --mode tether
    .venv/bin/python bench/call_loop.py --callgrind --runs 100 --mode model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
USAGE = {"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}
TOOL_CALL = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "usage": USAGE,
             "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                 "role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                     "name": "get_weather", "arguments": '{"city": "x"}'}}]}}]}
ANSWER = {"id": "c2", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "usage": USAGE,
          "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": "It is sunny.", "refusal": None}}]}
STEPS = 2


def provider(request: httpx.Request) -> httpx.Response:
    asked = json.loads(request.content)
    return httpx.Response(200, json=ANSWER if asked["messages"][-1]["role"] == "tool" else TOOL_CALL)


def runners() -> dict[str, Callable[[int], Awaitable[None]]]:
    """The agent run, ``bare`` and under ``tether``."""
    import tether
    from tether.adapters._httpx import AsyncTetherTransport
    from tether.adapters._tools import FrameworkTools

    bare = httpx.AsyncClient(transport=httpx.MockTransport(provider), base_url="http://provider/v1")
    tethered = httpx.AsyncClient(transport=AsyncTetherTransport(wrapped=httpx.MockTransport(provider)),
                                 base_url="http://provider/v1")
    tools = FrameworkTools("urn:tether:bench")

    async def get_weather(city: str) -> str:
        return f"It is sunny in {city}."

    async def steps(client: httpx.AsyncClient, i: int, tool: Callable[[dict[str, Any]], Awaitable[str]]) -> None:
        messages: list[Any] = [{"role": "system", "content": "Answer about the weather."},
                               {"role": "user", "content": f"What is the weather in city {i}?"}]
        first = (await client.post("/chat/completions", json={"model": "gpt-4o-mini", "messages": messages,
                                                                "tools": TOOLS})).json()
        message = first["choices"][0]["message"]
        result = await tool(json.loads(message["tool_calls"][0]["function"]["arguments"]))
        messages += [message, {"role": "tool", "tool_call_id": "call_1", "content": result}]
        (await client.post("/chat/completions", json={"model": "gpt-4o-mini", "messages": messages,
                                                        "tools": TOOLS})).json()

    async def run_bare(i: int) -> None:
        await steps(bare, i, lambda args: get_weather(**args))

    async def run_tether(i: int) -> None:
        async with tether.run(agent="weather-bot", name="weather-bot"):
            await steps(tethered, i, lambda args: tools.acall("get_weather", args, lambda: get_weather(**args)))

    async def run_model(i: int) -> None:  # the LLM path alone: tether's transport, no run, the tool bare
        await steps(tethered, i, lambda args: get_weather(**args))

    return {"bare": run_bare, "tether": run_tether, "model": run_model}


async def alternate(runs: int, block: int) -> dict[str, float]:
    import tether.adapters
    from tether.adapters import _hub

    run = runners()
    for i in range(40):
        await run["tether"](i)
        await run["bare"](i)
    await asyncio.to_thread(tether.adapters.flush)
    background = _hub._background
    assert background is not None
    bus_clock = time.pthread_getcpuclockid(background[0].ident or 0)
    rows: dict[str, list[float]] = {"agent": [], "bus": []}
    for _ in range(runs // block):
        measured: dict[str, tuple[float, float]] = {}
        for mode in ("bare", "tether"):
            c0, b0 = time.thread_time(), time.clock_gettime(bus_clock)
            for i in range(block):
                await run[mode](i)
            if mode == "tether":
                await asyncio.to_thread(tether.adapters.flush)  # its events are out: their CPU counts
            measured[mode] = (time.thread_time() - c0, time.clock_gettime(bus_clock) - b0)
        rows["agent"].append((measured["tether"][0] - measured["bare"][0]) / (block * STEPS))
        rows["bus"].append(measured["tether"][1] / (block * STEPS))
    return {k: statistics.median(v) * 1000 for k, v in rows.items()}


async def instrumented(runs: int, mode: str) -> None:
    """``runs`` runs of ``mode``, callgrind's instrumentation on for them only (after a warm-up)."""
    await counted(runners()[mode], runs, warmup=30)


async def counted(run: Callable[[int], Awaitable[Any]], runs: int, *, warmup: int) -> None:
    """``warmup`` calls of ``run`` (given -1, -2...), then ``runs`` (0, 1...) with callgrind's instrumentation on
    (this process runs under ``valgrind --tool=callgrind --instr-atstart=no``); tether's events flushed at each end.
    bench/framework_callgrind.py counts a framework agent's runs with it too."""
    import tether.adapters

    for i in range(warmup):
        await run(-1 - i)
    await asyncio.to_thread(tether.adapters.flush)
    pid = str(os.getpid())
    await asyncio.to_thread(subprocess.run, ["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
    for i in range(runs):
        await run(i)
    await asyncio.to_thread(tether.adapters.flush)
    await asyncio.to_thread(subprocess.run, ["callgrind_control", "-i", "off", pid], check=True, capture_output=True)


def callgrind(runs: int, mode: str) -> int:
    """Instructions of ``runs`` runs of ``mode`` (this script again, under callgrind)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind (and its callgrind_control) on the PATH")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                               f"--callgrind-out-file={tmp}/out.%p", sys.executable, __file__, "--child",
                               "--runs", str(runs), "--mode", mode], capture_output=True, text=True, check=True)
    collected = [line for line in done.stderr.splitlines() if "Collected :" in line]
    return int(collected[-1].split(":")[-1].strip().replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1200)
    parser.add_argument("--block", type=int, default=40)
    parser.add_argument("--callgrind", action="store_true", help="instructions per step, under valgrind")
    parser.add_argument("--mode", choices=("bare", "tether", "model"), default="tether")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.callgrind:
        instructions = callgrind(args.runs, args.mode)
        print(json.dumps({"mode": args.mode, "runs": args.runs, "instructions": instructions,
                          "per_step": instructions / (args.runs * STEPS)}))
        return
    from tether.testing import NatsServer

    with NatsServer() as nats, tempfile.TemporaryDirectory() as home:
        os.environ.update(TETHER_NATS_URL=nats.url, TETHER_HOME=home)
        if args.child:
            asyncio.run(instrumented(args.runs, args.mode))
            result: dict[str, float] = {}
        else:
            result = asyncio.run(alternate(args.runs, args.block))
        import tether.adapters

        tether.adapters.shutdown()
    if result:
        print(json.dumps({**result, "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
