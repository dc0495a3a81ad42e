"""The resume chaos harness: a scripted bank agent SIGKILLed at seeded points, resumed until it finishes.

The agent makes, per step, an LLM call through ``tether.instrument`` and one through the gateway (when
given), then three tool calls whose effects go into its own SQLite bank: ``deposit`` (not idempotent: a
plain insert), ``transfer`` (idempotent by ``tether.once``) and ``balance`` (a read). Each scenario runs
the agent in a forked process that kills itself (SIGKILL) at a seeded point among the points the agent
passes (before and after every call, inside every tool before and after its effect); then resumes it
(``tether.run(run_id=..., resume=True)``) in a new process, maybe killed again, until it finishes. A
resume that stops in ``needs_attention`` is resolved as a person would: the bank is checked for the
call's idempotency key (``tether runs resolve``'s code), then resumed again.

Checked per scenario: the final output and bank equal an uninterrupted run's (divergences); no effect is
in the bank twice (duplicates); no LLM call's completion is in the log twice (paid twice) and the fake
provider's request log shows no call it answered asked again (asked again: the agent dies between calls,
so every call it got an answer to was completed); every death inside ``deposit`` ends in
``needs_attention`` on the next resume, never in a silent repeat. ``python -m tests.adapters.chaos_resume
--help``; the figures go to stdout as JSON. Forked children share what the parent imported, so a death
costs milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import openai

import tether
from tether.adapters import Hub
from tether.bus import connect
from tether.schemas import Event, ToolCallResolved
from tether.testing import reply_text

AGENT = "chaos-bank"
KILLED, ATTENTION, DONE = "killed", "needs_attention", "done"


@dataclass
class Setup:
    nats: str
    fake: str
    gateway: str | None
    gateway_key: str | None
    workdir: Path
    steps: int


# -- the agent, in a child ---------------------------------------------------------------------


class Points:
    """The points the agent passes; at ``kill_at`` the process dies (after writing where)."""

    def __init__(self, kill_at: int | None, where: Path) -> None:
        self.n = 0
        self.kill_at = kill_at
        self.where = where

    def __call__(self, label: str) -> None:
        if self.n == self.kill_at:
            self.where.write_text(label)
            os.kill(os.getpid(), signal.SIGKILL)
        self.n += 1


def bank_at(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS deposits (key TEXT, step INTEGER, amount INTEGER)")
    db.execute("CREATE TABLE IF NOT EXISTS transfers (key TEXT, step INTEGER, amount INTEGER)")
    db.commit()
    return db


async def agent(setup: Setup, run_id: str, bank: Path, point: Points, bus: Any, *, resume: bool) -> Any:
    db = bank_at(bank)

    @tether.tool
    async def deposit(step: int, amount: int, idempotency_key: str = "") -> dict[str, int]:
        point(f"deposit:{step}:before")
        db.execute("INSERT INTO deposits VALUES (?, ?, ?)", (idempotency_key, step, amount))
        db.commit()
        point(f"deposit:{step}:after")
        return {"step": step, "deposited": amount}

    @tether.tool(idempotent=True)
    async def transfer(step: int, amount: int, idempotency_key: str = "") -> Any:
        point(f"transfer:{step}:before")
        moved = tether.once(db, idempotency_key, lambda conn: (
            conn.execute("INSERT INTO transfers VALUES (?, ?, ?)", (idempotency_key, step, amount)), amount)[1])
        point(f"transfer:{step}:after")
        return moved

    @tether.tool(idempotent=True)
    async def balance(step: int) -> int:
        point(f"balance:{step}:before")
        (total,) = db.execute("SELECT coalesce(sum(amount), 0) FROM deposits").fetchone()
        return int(total)

    direct = tether.instrument(openai.AsyncOpenAI(base_url=setup.fake, api_key="sk-chaos-0123456789", max_retries=0))
    via_gateway = None
    if setup.gateway:  # its calls are a run of their own: the gateway matches them against that run's journal
        headers = {"x-tether-run-id": f"{run_id}-gw"}
        if resume:
            headers["x-tether-resume"] = str(time.time_ns())
        via_gateway = openai.AsyncOpenAI(base_url=setup.gateway, api_key=setup.gateway_key or "", max_retries=0,
                                         default_headers=headers)
    out: dict[str, Any] = {"replies": [], "balances": []}
    async with tether.run(agent=AGENT, run_id=run_id, resume=resume, bus=bus) as opened:
        for step in range(setup.steps):
            point(f"step:{step}")
            for name, client in (("direct", direct), ("gateway", via_gateway)):
                if client is None:
                    continue
                point(f"llm-{name}:{step}:before")
                model, prompt = f"{run_id}-{step}-{name}", f"step {step} via {name}"  # the model names the call
                reply = await client.chat.completions.create(model=model,
                                                             messages=[{"role": "user", "content": prompt}])
                # the fake answers each model and prompt the same: the answer the run got is the one it paid for
                out["replies"].append(reply.choices[0].message.content == reply_text(prompt, model=model, seed=0))
                point(f"llm-{name}:{step}:after")
            await deposit(step, 10 * step + 1)
            point(f"deposited:{step}")
            await transfer(step, 100 + step)
            out["balances"].append(await balance(step))
        opened.output = out
    await direct.close()
    if via_gateway is not None:
        await via_gateway.close()
    return out


async def attempt(setup: Setup, run_id: str, bank: Path, kill_at: int | None, resume: bool,
                  where: Path) -> dict[str, Any]:
    point = Points(kill_at, where)
    bus = await connect(setup.nats, home=setup.workdir / "home", provision=not resume and kill_at is None)
    hub = Hub.of(bus)
    try:
        out = await agent(setup, run_id, bank, point, bus, resume=resume)
        return {"state": DONE, "output": out, "points": point.n}
    except tether.NeedsAttention as exc:
        return {"state": ATTENTION, "tool": exc.tool, "call_id": exc.call_id, "arguments": exc.arguments,
                "points": point.n}
    finally:
        await hub.aclose()
        await bus.close()


async def resolve(setup: Setup, run_id: str, bank: Path, where: Path) -> dict[str, Any]:
    """What a person does with a run that needs attention: look in the bank for the call's key."""
    from tether.adapters import read_run, unresolved

    bus = await connect(setup.nats, home=setup.workdir / "home")
    try:
        events = await read_run(bus, run_id)
        waiting = unresolved(events)
        assert len(waiting) == 1, waiting
        call = waiting[0]
        key = call.idempotency_key
        row = bank_at(bank).execute("SELECT step, amount FROM deposits WHERE key = ?", (key,)).fetchone()
        happened = row is not None
        result = {"step": row[0], "deposited": row[1]} if row is not None else None
        await bus.publish(Event.of(ToolCallResolved(call_id=call.call_id, tool=call.tool, happened=happened,
                                                    result=result), runid=run_id, agentid=AGENT))
        return {"state": DONE, "happened": happened}
    finally:
        await bus.close()


def in_child(work: Callable[[Path], Coroutine[Any, Any, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """Run ``work(where)`` in a forked process: how it ended and what it returned (``where`` holds the
    point it was killed at)."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    report = base / f"tether-chaos-{os.getpid()}-{time.time_ns()}.json"
    where = report.with_suffix(".where")
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            data: dict[str, Any] = asyncio.run(work(where))
        except BaseException as exc:
            data, code = {"state": "crashed", "error": f"{type(exc).__name__}: {exc}"}, 1
        report.write_text(json.dumps(data))
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            return KILLED, {"where": where.read_text() if where.exists() else "?"}
        data = json.loads(report.read_text()) if report.exists() else {"state": "crashed", "error": f"exit {status}"}
        return str(data.get("state", "?")), data
    finally:
        report.unlink(missing_ok=True)
        where.unlink(missing_ok=True)


# -- the scenarios, in the parent --------------------------------------------------------------


@dataclass
class Figures:
    scenarios: int = 0
    deaths: int = 0
    resumes: int = 0
    deaths_in_non_idempotent_tool: int = 0
    needs_attention: int = 0
    silent_repeats: int = 0
    duplicates: int = 0
    divergences: int = 0
    paid_twice: int = 0
    """LLM calls whose completion the log recorded more than once (asked again after it was recorded)."""
    asked_again: int = 0
    """LLM calls the fake provider answered more than once (its request log). The agent dies only
    between calls, never inside one, so each call it asked for completed: none may be asked again."""
    problems: list[str] = field(default_factory=list)


def normal_bank(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    db = bank_at(path)
    return {t: sorted((key.split(":")[1], step, amount) for key, step, amount in db.execute(f"SELECT * FROM {t}"))
            for t in ("deposits", "transfers")}


def duplicates(path: Path) -> int:
    db = bank_at(path)
    return sum(n - 1 for t in ("deposits", "transfers")
               for (n,) in db.execute(f"SELECT count(*) FROM {t} GROUP BY key HAVING count(*) > 1"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.adapters.chaos_resume", description=__doc__)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--fake", required=True, help="the fake provider's OpenAI base URL")
    parser.add_argument("--gateway", help="the tether gateway's OpenAI base URL")
    parser.add_argument("--gateway-key")
    parser.add_argument("--scenarios", type=int, default=50)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-deaths", type=int, default=3, help="deaths per scenario at most")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--max-seconds", type=float, default=0,
                        help="stop starting scenarios after this long (0: run them all); the figures say how many ran")
    parser.add_argument("--progress", type=int, default=0, help="print the figures so far to stderr every N scenarios")
    args = parser.parse_args(argv)
    setup = Setup(args.nats, args.fake, args.gateway, args.gateway_key, args.workdir, args.steps)
    args.workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{args.seed}-{time.time_ns() % 10**9}"
    figures = Figures()
    started = time.perf_counter()

    reference_bank = args.workdir / "reference.db"
    # The uninterrupted run, in this process: what it imports on first use, every child then has (a fork
    # copies it), so a death costs milliseconds. Its loop, connections and threads are closed before a fork.
    ref = asyncio.run(attempt(setup, f"chaos-{tag}-reference", reference_bank, None, False,
                              args.workdir / "reference.where"))
    state = str(ref["state"])
    if state != DONE:
        print(json.dumps({"error": f"the uninterrupted run did not finish: {state} {ref}"}))
        return 1
    total_points = int(ref["points"])
    expected_bank = normal_bank(reference_bank)

    for scenario in range(args.scenarios):
        if args.max_seconds and time.perf_counter() - started > args.max_seconds:
            break
        if args.progress and scenario and scenario % args.progress == 0:
            print(json.dumps({**figures.__dict__, "problems": figures.problems[:5],
                              "seconds": round(time.perf_counter() - started, 1)}), file=sys.stderr, flush=True)
        rng = random.Random(args.seed * 1_000_003 + scenario)
        run_id = f"chaos-{tag}-{scenario}"
        bank = args.workdir / f"bank-{scenario}.db"
        deaths_left = rng.randint(1, args.max_deaths)
        resume = False
        expect_attention = False
        figures.scenarios += 1
        for _ in range(50):
            kill_at = rng.randrange(total_points) if deaths_left and not expect_attention else None
            state, data = in_child(partial(attempt, setup, run_id, bank, kill_at, resume))
            if resume:
                figures.resumes += 1
            if expect_attention and state != ATTENTION:
                figures.silent_repeats += 1
                figures.problems.append(f"{run_id}: died inside deposit, then resumed to {state}, not "
                                        "needs_attention")
            expect_attention = False
            resume = True
            if state == KILLED:
                figures.deaths += 1
                deaths_left -= 1
                if data["where"].startswith("deposit:"):
                    figures.deaths_in_non_idempotent_tool += 1
                    expect_attention = True
                continue
            if state == ATTENTION:
                figures.needs_attention += 1
                if data["tool"] != "deposit":
                    figures.problems.append(f"{run_id}: needs attention at {data['tool']}, which is idempotent")
                state, data = in_child(partial(resolve, setup, run_id, bank))
                if state != DONE:
                    figures.problems.append(f"{run_id}: resolving failed: {data}")
                    break
                continue
            if state == DONE:
                if data["output"] != ref["output"]:
                    figures.divergences += 1
                    figures.problems.append(f"{run_id}: output {data['output']} != {ref['output']}")
                elif normal_bank(bank) != expected_bank:
                    figures.divergences += 1
                    figures.problems.append(f"{run_id}: bank {normal_bank(bank)} != {expected_bank}")
                break
            figures.problems.append(f"{run_id}: {state} {data}")
            break
        figures.duplicates += duplicates(bank)

    with urllib.request.urlopen(args.fake.removesuffix("/v1") + "/_fake/log") as answer:
        log = json.loads(answer.read())
    asked = Counter(r["model"] for r in log["requests"] if str(r.get("model")).startswith(f"chaos-{tag}-")
                    and r.get("outcome") == "200")
    _, found = in_child(partial(_completions, setup, tag))
    completed: dict[str, int] = found.get("completed", {})
    for model, n in asked.items():
        recorded = completed.get(model, 0)
        figures.paid_twice += max(0, recorded - 1)  # asked again after its completion was in the log
        figures.asked_again += n - 1
    out = {**figures.__dict__, "kill_points_per_run": total_points, "llm_requests": sum(asked.values()),
           "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(out))
    return 0


async def _completions(setup: Setup, tag: str, where: Path) -> dict[str, Any]:
    """How many ``llm.call.completed`` each model (each call of the harness) has in the log."""
    from tether.bus import event_filter, read_subject

    bus = await connect(setup.nats, home=setup.workdir / "home")
    try:
        results = await read_subject(bus, event_filter(kind="llm", action="completed"), timeout=30)
        counts = Counter(str(r.event.data.model) for r in results if r.event is not None  # type: ignore[attr-defined]
                         and str(getattr(r.event.data, "model", "")).startswith(f"chaos-{tag}-"))
        return {"state": DONE, "completed": dict(counts)}
    finally:
        await bus.close()


if __name__ == "__main__":
    sys.exit(main())
