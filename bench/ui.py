"""The dashboard's server time at scale: the runs page and a 500-span trace, with 100k runs in the views.

What is measured, in one run:

* the views: ``--runs`` (100,000) runs folded by tether's own :class:`~tether.projections.TracesView`
  into a fresh traces view (each run: ``run.started``, an LLM call with a usage, a tool call, and
  every 10th an LLM attempt that failed and was retried, ``run.finished``), plus one run of 500
  spans (125 LLM calls, each with a failed attempt, its backoff and the attempt that succeeded);
* **page**: the dashboard's Starlette app (``tether.ui``, token and Host checks included) asked for
  ``GET /fragments/runs`` (the runs table: the newest 100 runs with their counts) and
  ``GET /fragments/runs/{big run}`` (the 500-span tree and waterfall), in-process through ASGI:
  the server's time from request to the last byte of the response, HTML rendering included;
* **raw**: the same reads as plain ``sqlite3`` on an open connection, rendering nothing: the
  runs query (``list_runs``, the page's query) and ``SELECT * FROM spans WHERE run_id = ?`` for
  the trace; the ratio page / raw says what the dashboard adds to the floor SQLite sets.

Each side is timed ``--rounds`` times (after one warm-up); the report gives the median and p95.
Target: each page < 300 ms server time.

Run it::

    .venv/bin/python bench/ui.py
    .venv/bin/python bench/ui.py --runs 20000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tether.projections import Item, TracesView, view_path
from tether.projections.traces import list_runs
from tether.schemas import (
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallRequested,
    RunFinished,
    RunStarted,
    ToolCallCompleted,
    ToolCallRequested,
    Usage,
)
from tether.ui._app import build_app
from tether.ui._security import Guard

TARGET_MS = 300.0
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
BIG_RUN = "run-big-500"
RATE_LIMIT = ErrorInfo(type="RateLimitError", message="Rate limit reached", status_code=429, retryable=True)
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is a JetStream consumer?"}]}
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "A view of a stream."},
                       "finish_reason": "stop"}]}


def run_events(r: int) -> Iterator[Event]:
    run_id = f"run-{r:08d}"
    agent = ("researcher", "writer", "planner")[r % 3]
    at = T0 + timedelta(seconds=r * 2)

    def ev(payload: Any, ms: float) -> Event:
        return Event.of(payload, runid=run_id, agentid=agent, time=at + timedelta(milliseconds=ms))

    yield ev(RunStarted(name=f"{agent} task"), 0)
    call = f"{run_id}-c0"
    yield ev(LlmCallRequested(call_id=call, provider="openai", model="gpt-4o-mini", request=BODY), 1)
    attempt = 1
    if r % 10 == 0:
        yield ev(LlmCallAttemptFailed(call_id=call, provider="openai", model="gpt-4o-mini", attempt=1,
                                      error=RATE_LIMIT, latency_ms=20.0, decision="retry", retry_in_s=0.2), 20)
        attempt = 2
    yield ev(LlmCallCompleted(call_id=call, provider="openai", model="gpt-4o-mini", attempt=attempt,
                              usage=Usage(input_tokens=120, output_tokens=40), latency_ms=400.0,
                              response=ANSWER), 400)
    tool = f"{run_id}-t0"
    yield ev(ToolCallRequested(call_id=tool, tool="search", arguments={"q": "jetstream"}), 401)
    yield ev(ToolCallCompleted(call_id=tool, tool="search", result={"hits": 3}, duration_ms=30.0), 431)
    yield ev(RunFinished(status="ok", duration_ms=432.0), 432)


def big_run_events() -> Iterator[Event]:
    """A run of 501 spans: the run, and 125 LLM calls each with a failed attempt, its backoff and the
    attempt that succeeded (4 spans a call)."""
    at = T0 - timedelta(hours=1)

    def ev(payload: Any, ms: float) -> Event:
        return Event.of(payload, runid=BIG_RUN, agentid="researcher", time=at + timedelta(milliseconds=ms))

    yield ev(RunStarted(name="a long research"), 0)
    for c in range(125):
        call, t = f"{BIG_RUN}-c{c}", c * 500.0
        yield ev(LlmCallRequested(call_id=call, provider="openai", model="gpt-4o-mini", request=BODY), t)
        yield ev(LlmCallAttemptFailed(call_id=call, provider="openai", model="gpt-4o-mini", attempt=1,
                                      error=RATE_LIMIT, latency_ms=20.0, decision="retry", retry_in_s=0.1), t + 20)
        yield ev(LlmCallCompleted(call_id=call, provider="openai", model="gpt-4o-mini", attempt=2,
                                  usage=Usage(input_tokens=100, output_tokens=30), latency_ms=300.0,
                                  response=ANSWER), t + 400)
    yield ev(RunFinished(status="ok", duration_ms=125 * 500.0), 125 * 500.0)


def build_views(directory: Path, runs: int, quiet: bool) -> int:
    """Fold the runs into a fresh traces view; the number of events folded."""
    view = TracesView()
    store = view.open_store(view_path(directory, view.name, view.version))
    seq = 0
    batch: list[Item] = []
    started = time.monotonic()

    def flush() -> None:
        store.apply_batch(batch, notify=False)
        batch.clear()

    def events() -> Iterator[Event]:
        yield from big_run_events()
        for r in range(runs):
            yield from run_events(r)
            if not quiet and r and r % 20000 == 0:
                print(f"  folded {r:,} runs ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)

    for event in events():
        seq += 1
        batch.append(Item(seq, event))
        if len(batch) >= 5000:
            flush()
    flush()
    store.mark_complete()
    store.close()
    return seq


def timed(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": statistics.median(ordered), "p95_ms": ordered[max(0, round(len(ordered) * 0.95) - 1)]}


async def measure_pages(directory: Path, rounds: int) -> dict[str, dict[str, float]]:
    guard = Guard(hosts=frozenset({"dashboard"}))
    app: Any = build_app(None, directory, guard)  # type: ignore[arg-type]  # these pages never use the bus
    out: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as client:
        for name, path, marker in (("runs page", "/fragments/runs", "run(s), newest first"),
                                   ("500-span trace", f"/fragments/runs/{BIG_RUN}", "501 spans")):
            samples = []
            for n in range(rounds + 1):
                start = time.perf_counter()
                response = await client.get(path)
                took = (time.perf_counter() - start) * 1000
                if response.status_code != 200 or marker not in response.text:
                    raise SystemExit(f"{path}: {response.status_code} {response.text[:300]}")
                if n:
                    samples.append(took)
            out[name] = timed(samples)
    return out


def measure_raw(directory: Path, rounds: int) -> dict[str, dict[str, float]]:
    db = sqlite3.connect(f"file:{view_path(directory, 'traces', TracesView.version)}?mode=ro", uri=True)
    out: dict[str, dict[str, float]] = {}
    for name, read in (("runs page", lambda: list_runs(db, limit=100)),
                       ("500-span trace", lambda: db.execute("SELECT * FROM spans WHERE run_id = ?",
                                                             (BIG_RUN,)).fetchall())):
        samples = []
        for n in range(rounds + 1):
            start = time.perf_counter()
            got = read()
            took = (time.perf_counter() - start) * 1000
            assert got, name
            if n:
                samples.append(took)
        out[name] = timed(samples)
    db.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tether-bench-ui-") as tmp:
        directory = Path(tmp)
        started = time.monotonic()
        events = build_views(directory, args.runs, args.json)
        built_s = time.monotonic() - started
        db = sqlite3.connect(view_path(directory, "traces", TracesView.version))
        runs, spans = db.execute("SELECT count(*) FROM runs").fetchone()[0], \
            db.execute("SELECT count(*) FROM spans WHERE run_id = ?", (BIG_RUN,)).fetchone()[0]
        db.close()
        pages = asyncio.run(measure_pages(directory, args.rounds))
        raw = measure_raw(directory, args.rounds)
    result = {"runs": runs, "events": events, "big_run_spans": spans, "build_s": built_s, "rounds": args.rounds,
              "target_ms": TARGET_MS,
              "pages": {name: {**pages[name], "raw_median_ms": raw[name]["median_ms"],
                               "ratio": pages[name]["median_ms"] / raw[name]["median_ms"],
                               "met": pages[name]["p95_ms"] < TARGET_MS} for name in pages}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"traces view: {runs:,} runs ({events:,} events folded in {built_s:.0f} s); big run {spans} spans")
        print(f"{'page':<16} {'server median':>14} {'p95':>9} {'raw SQLite':>11} {'ratio':>7}  "
              f"target < {TARGET_MS:.0f} ms")
        for name, r in result["pages"].items():
            print(f"{name:<16} {r['median_ms']:>11.1f} ms {r['p95_ms']:>6.1f} ms {r['raw_median_ms']:>8.1f} ms "
                  f"{r['ratio']:>6.1f}x  {'met' if r['met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
