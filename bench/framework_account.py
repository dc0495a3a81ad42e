"""Where tether's CPU goes in one framework's agent step, per thread: pydantic-ai's agent (one tool,
two model calls per run; ``--framework`` another's) bare, with tether's model only, and with the two lines,
in one process (a framework whose adapter is global once installed, LangGraph's say, has no bare variant in
the same process: compare tether's variants there).

Run by pydantic-ai's venv (``.venv-pydantic-ai``, built as the tests build it; this script re-runs
itself there, or ``TETHER_ACCOUNT_VENV`` names another: an older checkout's). One ``nats-server
-js`` and one fake provider (a process of its own) are started here. The variants alternate in
blocks of ``--block`` runs; per block, the agent thread's CPU (``time.thread_time``), tether's bus
loop thread's (its ``pthread`` CPU clock), the process's and the wall time, and what tether did:
events published, acked round trips the agent waited for (a call's completion: ``apublish``; a
tool's start and end: ``flush``), engine steps handed to the bus's loop as tasks, wake-ups of that
loop and its iterations. Printed per agent step (two per run), median over the blocks.

``--spy PY_SPY``: the ``tether`` variant alone, sampled by py-spy (not a dependency of the project:
give its path) while it runs (``-g``: the thread holding the GIL, 500 Hz), each thread's samples
put into pieces (tether's functions by what they do, the rest as the framework's) and scaled to
that thread's CPU per step measured in the same run: microseconds per step and piece. Time in
system calls made without the GIL (socket writes, ``epoll``) is spread over the pieces.

    .venv/bin/python bench/framework_account.py --runs 600 --block 30
    .venv/bin/python bench/framework_account.py --runs 800 --block 50 --spy /path/to/py-spy
    .venv/bin/python bench/framework_account.py --runs 1000 --spy /path/to/py-spy --spy-mode model

``--spy-mode`` names the variant sampled (``tether`` by default), ``--spy-raw FILE`` keeps py-spy's samples.
A variant ``NAME@N`` is ``NAME`` with the hub's wake-ups put off at most ``N`` passes of the agent's loop
(``_hub._DEFERRALS``; 0: at once, as before 7 December 2026's session 12), and ``NAME~MS`` with the bus's loop
collecting hand-overs every ``MS`` milliseconds (``_hub._LINGER_S``; 0: none, every hand-over wakes it, as before
session 13), in the same process:

    .venv/bin/python bench/framework_account.py --runs 600 --modes bare,model@0,model@64
    .venv/bin/python bench/framework_account.py --runs 600 --modes bare,model~0,model~5,tether~0,tether~5

Each block also counts the garbage collector's collections and their time (``gc.callbacks``; the collector's
counters are the process's, so a collection runs in whichever block crosses its threshold: mean over blocks).
``--garbage`` instead counts, per variant, the objects its runs leave in reference cycles (``gc.DEBUG_SAVEALL``),
all and tether's own:

    .venv/bin/python bench/framework_account.py --garbage --runs 100

A variant ``NAME+loop`` swaps the adapters' background hub for a bus connected on the agent's own loop (an
experiment: what tether would cost with no thread of its own; the bus thread's figures are then the idle
background bus's):

    .venv/bin/python bench/framework_account.py --runs 600 --modes bare,tether,tether+loop
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STEPS = 2


def _venv_python(framework: str = "pydantic-ai") -> str:
    """The framework's venv's Python (``.venv-pydantic-ai``, built from its lock if it is not), or
    ``TETHER_ACCOUNT_VENV``'s."""
    if os.environ.get("TETHER_ACCOUNT_VENV"):
        return str(Path(os.environ["TETHER_ACCOUNT_VENV"]) / "bin" / "python")
    sys.path.insert(0, str(ROOT))
    from frameworks import VENVS  # bench/ is this script's directory

    from tests._envs import optional_env

    return str(optional_env(VENVS.get(framework, framework), project=True).path / "bin" / "python")


FRAMEWORK = "pydantic-ai"
"""The framework whose agent runs (``--framework``): pydantic-ai's unless told."""


def agent(mode: str) -> Callable[[int], Awaitable[None]]:
    """The framework's agent of ``bench/framework_agent.py`` (one tool, two model calls a run) in ``mode``."""
    import framework_agent  # bench/ is this script's directory

    made: Callable[[int], Awaitable[None]] = getattr(framework_agent, FRAMEWORK.replace("-", "_") + "_agent")(mode)
    return made


class Counters:
    """What tether did on its bus loop, counted by wrapping its entry points ."""

    def __init__(self) -> None:
        from tether.adapters import _hub

        bg = _hub._background
        assert bg is not None
        self.hub, self.loop = bg[2], bg[1]
        self.publisher = self.hub.bus.publisher
        self.n = {"events": 0, "acked waits": 0, "flushes": 0, "engine steps": 0, "wake-ups": 0,
                  "loop iterations": 0, "collections": 0, "collection µs": 0}
        loop, n = self.loop, self.n
        started = [0.0]

        def collected(phase: str, info: dict[str, Any]) -> None:  # the garbage collector's, on any thread
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                n["collections"] += 1
                n["collection µs"] += round((time.perf_counter() - started[0]) * 1e6)

        gc.callbacks.append(collected)
        write = loop._write_to_self  # type: ignore[attr-defined]
        once = loop._run_once  # type: ignore[attr-defined]
        hub = self.hub
        apublish, flush, hand_off = hub.apublish, hub.flush, hub._hand_off

        def write_to_self() -> None:
            n["wake-ups"] += 1
            write()

        def run_once() -> None:
            n["loop iterations"] += 1
            once()

        async def acked(event: Any) -> None:
            n["acked waits"] += 1
            await apublish(event)

        async def flushed(timeout: float | None = None) -> None:
            n["flushes"] += 1
            await flush(timeout)

        def engine_step(step: Any) -> Any:
            n["engine steps"] += 1
            return hand_off(step)

        loop._write_to_self = write_to_self  # type: ignore[attr-defined]
        loop._run_once = run_once  # type: ignore[attr-defined]
        hub.apublish = acked  # type: ignore[method-assign]
        hub.flush = flushed  # type: ignore[method-assign]
        hub._hand_off = engine_step  # type: ignore[method-assign]

    def snapshot(self, on_loop: LoopBus | None = None) -> dict[str, float]:
        local = on_loop.bus.publisher.stats.sent if on_loop is not None else 0
        return {**self.n, "events": self.publisher.stats.sent + local}


class LoopBus:
    """A bus connected on the agent's own loop, made every adapter's hub in place of the background bus
    (variants ``NAME+loop``): what tether would cost with no thread of its own (not how tether runs today:
    an experiment, by swapping the adapters' ``background_hub`` for this loop's hub)."""

    def __init__(self, bus: Any) -> None:
        from tether.adapters import _core, _frameworks, _hub, _runs, _tools

        self.bus = bus
        self.hub = _hub.Hub.of(bus)
        self.modules = [m for m in (_core, _runs, _tools, _frameworks) if hasattr(m, "background_hub")]
        self.original = {m: (m.background_hub, getattr(m, "background_hub_nowait", None)) for m in self.modules}

    @classmethod
    async def start(cls) -> LoopBus:
        from tether.bus import connect

        return cls(await connect())

    def use(self, on: bool) -> None:
        hub = self.hub
        for module in self.modules:
            made, nowait = self.original[module]
            module.background_hub = (lambda *a, **k: hub) if on else made  # type: ignore[attr-defined]
            if nowait is not None:
                module.background_hub_nowait = (lambda: hub) if on else nowait  # type: ignore[attr-defined]


async def alternate(runs: int, block: int, modes: list[str]) -> dict[str, Any]:
    import tether.adapters
    from tether.adapters import _hub

    runners = {m: agent(re.split("[@~+]", m)[0]) for m in modes}
    linger = _hub._LINGER_S
    on_loop = await LoopBus.start() if any(m.endswith("+loop") for m in modes) else None
    for i in range(20):
        for mode, run in runners.items():
            if on_loop is not None:
                on_loop.use(mode.endswith("+loop"))
            await run(-1 - i)
    await asyncio.to_thread(tether.adapters.flush)
    background = _hub._background or await asyncio.to_thread(lambda: (_hub.background_hub(), _hub._background)[1])
    assert background is not None  # started idle when no variant uses tether (bare alone, under --spy-mode bare)
    bus_clock = time.pthread_getcpuclockid(background[0].ident or 0)
    counters = Counters()
    rows: dict[str, dict[str, list[float]]] = {m: {} for m in runners}
    for n in range(runs // block):
        for mode, run in runners.items():
            if "@" in mode:  # model@0: the hub's wake-ups made at once, as before it put them off
                _hub._DEFERRALS = int(mode.partition("@")[2])
            _hub._LINGER_S = float(re.split("[+]", mode.partition("~")[2])[0]) / 1000 if "~" in mode else linger
            if on_loop is not None:  # tether+loop: the adapters' hub is a bus on this loop, no background thread
                on_loop.use(mode.endswith("+loop"))
            before = counters.snapshot(on_loop)
            t0, c0, b0, p0 = time.perf_counter(), time.thread_time(), time.clock_gettime(bus_clock), time.process_time()
            for i in range(block):
                await run(n * block + i)
            t1, c1, p1 = time.perf_counter(), time.thread_time(), time.process_time()
            # what the block left on the bus thread (its last events' acks) is counted with it
            await asyncio.to_thread(tether.adapters.flush)
            if on_loop is not None:
                await on_loop.hub.flush()
            b1 = time.clock_gettime(bus_clock)
            row = rows[mode]
            per = 1000 / (block * STEPS)
            for key, value in (("agent thread CPU", c1 - c0), ("bus thread CPU", b1 - b0),
                               ("process CPU", p1 - p0), ("wall", t1 - t0)):
                row.setdefault(key, []).append(value * per)
            after = counters.snapshot(on_loop)
            for key, value in after.items():
                row.setdefault(key, []).append((value - before[key]) / (block * STEPS))
    return {mode: {k: statistics.mean(v) if k.startswith("collection") else statistics.median(v)
                   for k, v in row.items()} for mode, row in rows.items()}


async def garbage(runs: int, modes: list[str]) -> None:
    """Per variant, the objects its runs leave in reference cycles (freed only by the garbage collector,
    not by reference counting), counted with ``gc.DEBUG_SAVEALL`` over ``runs`` runs: all, and tether's."""
    import tether.adapters

    runners = {m: agent(re.split("[@~]", m)[0]) for m in modes}
    for i in range(20):
        for run in runners.values():
            await run(-1 - i)
    for mode, run in runners.items():
        await asyncio.to_thread(tether.adapters.flush)
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for i in range(runs):
                await run(i)
            await asyncio.to_thread(tether.adapters.flush)
            gc.collect()
            found = list(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        ours = collections.Counter(type(o).__qualname__ for o in found if type(o).__module__.startswith("tether."))
        kinds = f" ({', '.join(f'{k} {v / runs:g}' for k, v in ours.most_common(6))})" if ours else ""
        print(f"{mode:<10} cyclic garbage a run: {len(found) / runs:8.1f} objects, tether's "
              f"{sum(ours.values()) / runs:6.1f}{kinds}")


# -- pieces: py-spy's samples of each thread, by what the innermost matching frame does --------------

BUS_PIECES = [  # (piece, substrings of a frame): the leaf frame first, then up the stack
    ("NATS socket writes (nats-py's flusher)", ["_SelectorSocketTransport.write", "Client._flusher", "writelines",
                                                "StreamWriter.drain"]),
    ("waking the agent's loop (its self-pipe)", ["_write_to_self"]),
    ("taking wake-ups (self-pipe read)", ["_read_from_self", "_process_self_data"]),
    ("reading acks (socket, nats-py's parser, raw sink)", ["_read_loop", "Parser.parse", "_process_msg",
                                                          "_on_raw_reply", "Publisher._reply", "Publisher._on_reply",
                                                          "_parse_ack", "data_received", "_read_ready",
                                                          "message_headers", "_wait_for_msgs"]),
    ("encoding events (CloudEvents headers, JSON data)", ["encode_binary", "header_block", "data_json", "_rfc3339",
                                                         "Event.attributes", "HeaderBlock", "Publisher.prepare",
                                                         "Publisher._checked", "oversized", "event_subject",
                                                         "percent_encode", "encode_message", "time_text",
                                                         "encode_token"]),
    ("handing events to nats-py (HPUB)", ["publish_now", "hpub_cmd", "send_now", "_send_publish", "Publisher._send",
                                          "_validate_subject", "Client.publish", "Publisher.emit",
                                          "Publisher.publish"]),
    ("hub: inbox, settling waiters, flushes", ["_take_inbox", "Hub._put", "Hub._send_now", "_settle_in", "settled",
                                               "_flush_now", "when_flushed", "_after_change", "Hub._flushed",
                                               "_outcome", "call_soon_threadsafe"]),
    ("hub: pump and engine steps (tasks)", ["_pumping", "Hub.call", "Hub.apublish", "Hub.flush", "_send_acked",
                                            "Task.", "run_coroutine_threadsafe", "_chain_future", "Queue.",
                                            "Hub._drain", "Bus."]),
    ("event loop iterations (epoll, scheduling)", ["select (", "_run_once", "Handle._run", "run_forever"]),
]

AGENT_PIECES = [
    ("hand-offs to the bus's loop (wake-ups, futures)", ["Hub._wake", "Hub._hand_off", "Hub._hand_over",
                                                         "Hub._from_thread", "run_coroutine_threadsafe", "wrap_future",
                                                         "_chain_future", "_call_set_state", "_copy_future_state",
                                                         "_settle_in", "Hub.emit", "Hub.aemit", "Hub.apublish",
                                                         "Hub.flush", "Hub.spawn", "_read_from_self"]),
    ("redaction", ["tether/_redact.py", "adapters/_redact.py"]),
    ("request hash, runaway fingerprint, tool hash", ["request_hash", "_digest", "request_fingerprint", "tool_hash",
                                                      "call_digest", "RunawayTracker"]),
    ("ids (uuid7, trace and span ids, event ids)", ["uuid7", "new_traceparent", "terminal_id", "token_hex"]),
    ("events and payloads built", ["Event.of", "Payload.", "requested_event", "completed_event", "_construct",
                                   "plain_json", "non_finite", "ids_fit", "attempt_failed_event", "CallEngine.event",
                                   "ToolCall.event", "Run._open", "Run._close"]),
    ("request parsed, answer read", ["parse_request", "read_answer", "usage_of"]),
    ("HTTP shell (attempt's request, the package's response)", ["_UpstreamOf.attempt", "headers_of",
                                                                "_Response.__init__", "_response (", "_AsyncResponse",
                                                                "capped_timeout", "response_extensions",
                                                                "reply_headers", "_byte_streams", "AsyncStream"]),
    ("the provider's HTTP exchange (httpcore, as bare)", ["AsyncUpstreamOf.send"]),
    ("tool call (spec, arguments, position, policy)", ["ToolSpec.", "FrameworkTools", "ToolJournal", "Prepared",
                                                       "tool_flow", "ToolCall", "_jsonable", "decide ("]),
    ("runs (context, hub, tool journal)", ["Run.", "current_run", "RunContext", "_derive_id"]),
    ("call state (prepare, record, policy, breaker count)", ["Interceptor.prepare", "LlmCall", "CallRecord",
                                                             "WorkItem", "record_outcome", "record_closed",
                                                             "policy_for", "Breakers", "engine_nowait"]),
    ("the call loop and its drivers", ["call_flow", "llm_flow", "drive_async", "drive (", "_advance", "_completed",
                                       "_admission", "Interceptor.", "_run_async", "send_async", "AsyncTransportShell",
                                       "wrap_tool_execute", "wrap_run", "acall", "TetherCapability"]),
]


def pieces(raw: Path) -> dict[str, collections.Counter[str]]:
    """Samples per thread and piece from py-spy's raw output (``-t``: each stack's first frame its thread)."""
    out: dict[str, collections.Counter[str]] = {"agent": collections.Counter(), "bus": collections.Counter()}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        thread, frames = frames[0], frames[1:]
        if "tether-adapters" in thread:
            out["bus"][_piece(frames, BUS_PIECES, tether_only=False)] += int(count)
        elif "MainThread" in thread and any("_run_once" in f for f in frames) \
                and not any("_find_and_load" in f for f in frames) and not frames[-1].startswith("alternate ("):
            out["agent"][_piece(frames, AGENT_PIECES, tether_only=True)] += int(count)
    return out


def _piece(frames: list[str], rules: list[tuple[str, list[str]]], *, tether_only: bool) -> str:
    for frame in reversed(frames):
        if tether_only and "tether/" not in frame and "asyncio/" not in frame and "concurrent/" not in frame:
            continue
        for name, marks in rules:
            if any(mark in frame for mark in marks):
                return name
    return "the framework and the SDK (no tether frame)" if tether_only else "other"


def spy(py_spy: str, python: str, runs: int, block: int, mode: str = "tether", keep: str | None = None) -> None:
    """The ``mode`` variant under py-spy; its samples in pieces, in µs per step of each thread's CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        got = subprocess.run([py_spy, "record", "-r", "500", "-t", "-g", "-f", "raw", "--nonblocking", "-o", str(raw),
                              "--", python, __file__, "--child", "--modes", mode, "--runs", str(runs),
                              "--block", str(block), "--json"],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        measured = json.loads(next(line for line in got.stdout.splitlines() if line.startswith("{")))
        samples = pieces(raw)
        if keep:
            Path(keep).write_text(raw.read_text())
    per_step = {"agent": measured[mode]["agent thread CPU"], "bus": measured[mode]["bus thread CPU"]}
    print(f"{mode} variant, {runs} runs (load {measured['load']:.1f}); per step: agent thread "
          f"{per_step['agent']:.3f} ms, bus thread {per_step['bus']:.3f} ms of CPU")
    print("| piece | thread | µs per step | samples |\n|---|---|---|---|")
    for thread, counted in samples.items():
        total = sum(counted.values()) or 1
        for name, n in counted.most_common():
            print(f"| {name} | {thread} | {per_step[thread] * 1000 * n / total:.0f} | {n} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--framework", default="pydantic-ai",
                        help="whose agent (bench/framework_agent.py; --spy's pieces are pydantic-ai's)")
    parser.add_argument("--runs", type=int, default=300, help="agent runs of each variant")
    parser.add_argument("--block", type=int, default=30)
    parser.add_argument("--modes", default="bare,model,tether", help="the variants")
    parser.add_argument("--spy", metavar="PY_SPY", help="sample one variant (--spy-mode) with this py-spy")
    parser.add_argument("--spy-mode", default="tether", help="the variant --spy samples")
    parser.add_argument("--spy-raw", metavar="FILE", help="keep py-spy's raw samples there")
    parser.add_argument("--garbage", action="store_true",
                        help="count each variant's cyclic garbage a run (gc.DEBUG_SAVEALL) instead of timing")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:
        python = _venv_python(args.framework)
        if args.spy:
            spy(args.spy, python, args.runs, args.block, args.spy_mode, args.spy_raw)
            return
        raise SystemExit(subprocess.call([python, __file__, "--child", *sys.argv[1:]],
                                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}))
    global FRAMEWORK
    FRAMEWORK = args.framework
    from llm_path import tether_beside_a_fake_provider  # bench/ is this script's directory

    with tether_beside_a_fake_provider() as url:
        os.environ.update(OPENAI_BASE_URL=url, OPENAI_API_KEY="sk-bench-0000")
        if args.garbage:
            asyncio.run(garbage(args.runs, args.modes.split(",")))
            return
        result = asyncio.run(alternate(args.runs, args.block, args.modes.split(",")))
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({**result, "load": load}))
        return
    print(f"per agent step (median of {args.runs // args.block} blocks of {args.block} runs, load {load:.1f})")
    print(f"{'':<20}" + "".join(f"{m:>10}" for m in result) + f"{'added':>10}")
    last = list(result)[-1]  # "added": the last variant's over bare
    for key in result[last]:
        cells = [result[m].get(key, 0.0) for m in result]
        added = result[last][key] - result.get("bare", {}).get(key, 0.0)
        unit = "ms" if "CPU" in key or key == "wall" else ""
        print(f"{key:<20}" + "".join(f"{c:>8.3f}{unit:<2}" for c in cells) + f"{added:>8.3f}{unit:<2}")


if __name__ == "__main__":
    main()
