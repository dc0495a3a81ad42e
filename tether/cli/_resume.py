"""``tether resume RUN`` and ``tether runs resolve RUN``: a run whose process died, picked up again.

Both read the run's events from the log (they need NATS, not the views). ``resume`` calls the agent's
entry point with the run's recorded input under the run's lease; ``runs resolve`` records whether a tool
call the process died in happened, so the run can be resumed past it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.bus import Bus, BusConfig, connect
from tether.schemas import Event, RunFinished, RunNeedsAttention, RunStarted, ToolCallResolved

__all__ = ["add_commands", "add_resolve", "interrupted_runs", "resume_one", "run_resolve", "run_resume"]


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    resume = sub.add_parser(
        "resume", help="resume a run whose process died, from its log",
        description="Call the entry point of RUN's agent again with the run's recorded input, under the same "
        "run id and the run's lease (one resumer at a time): tool calls that completed return their recorded "
        "results, the rest run live. Entry points: @tether.entrypoint in a module named by [resume.entrypoints] "
        "in tether.toml, or --entrypoint. Exit status 3: the run stopped at a tool call that needs attention "
        "(`tether runs resolve`).")
    resume.add_argument("run_id", metavar="RUN", nargs="?")
    resume.add_argument("--interrupted", action="store_true",
                        help="instead of RUN: every run the traces view shows as interrupted, one after the other "
                        "(a run another process holds the lease of is skipped): run it from a scheduler")
    resume.add_argument("--heartbeat-s", type=float, default=300.0, metavar="S",
                        help="with --interrupted: a run open with no event for S seconds is interrupted (default 300)")
    resume.add_argument("--views", type=Path, metavar="DIR",
                        help="with --interrupted: read the traces view in DIR (default TETHER_HOME/views)")
    resume.add_argument("--entrypoint", metavar="MODULE:FUNCTION",
                        help="the function to call (default: the agent's entry point, registered or in tether.toml)")
    resume.add_argument("--config", type=Path,
                        help="tether.toml to read [resume.entrypoints] from (default: ./tether.toml or pyproject.toml)")
    common(resume)


def add_resolve(runs: argparse.ArgumentParser, common: Callable[[argparse.ArgumentParser], None]) -> None:
    sub = runs.add_subparsers(dest="runs_command", metavar="COMMAND")
    resolve = sub.add_parser(
        "resolve", help="say whether a tool call a run stopped at happened",
        description="A resumed run stops in needs_attention at a tool call that is not idempotent and whose "
        "process died inside it: nobody knows whether its effect happened. Check (the bank, the mailbox...), "
        "then record the answer: --happened (with the --result the tool would have returned, which the resumed "
        "run gets) or --not-happened (the resumed run calls the tool again). Then `tether resume RUN`.")
    resolve.add_argument("run_id", metavar="RUN")
    how = resolve.add_mutually_exclusive_group(required=True)
    how.add_argument("--happened", action="store_true", help="its effect happened: the run goes on with --result")
    how.add_argument("--not-happened", action="store_true", help="its effect did not happen: the run calls it again")
    resolve.add_argument("--result", metavar="JSON", help="with --happened: what the tool returned, as JSON")
    resolve.add_argument("--call", metavar="CALL_ID", help="which call, when the run waits on more than one")
    resolve.add_argument("--note", metavar="TEXT", help="why (recorded with the answer)")
    common(resolve)


async def _bus(args: argparse.Namespace) -> Bus:
    return await connect(config=BusConfig.from_env(url=args.url, home=args.home))


def _err(command: str, text: str) -> None:
    print(f"tether {command}: {text}", file=sys.stderr)


def _unresolved(events: list[Event]) -> list[RunNeedsAttention]:
    from tether.adapters import unresolved

    return unresolved(events)


async def run_resolve(args: argparse.Namespace) -> int:
    command = "runs resolve"
    result: Any = None
    if args.result is not None:
        if args.not_happened:
            _err(command, "--result goes with --happened (a call that did not happen returned nothing)")
            return 2
        try:
            result = json.loads(args.result)
        except ValueError as exc:
            _err(command, f"--result is not JSON ({exc}); quote it for the shell, e.g. --result '{{\"id\": 7}}'")
            return 2
    from tether.adapters import read_run

    async with await _bus(args) as bus:
        events = await read_run(bus, args.run_id)
        if not events:
            _err(command, f"no events of run {args.run_id!r} in the log (`tether runs` lists runs)")
            return 1
        waiting = _unresolved(events)
        if args.call is not None:
            waiting = [w for w in waiting if w.call_id == args.call]
        if not waiting:
            _err(command, f"run {args.run_id} waits on no tool call" + (f" {args.call}" if args.call else "") +
                 " (a run needs attention only after a resume found a non-idempotent call its process died in)")
            return 1
        if len(waiting) > 1:
            _err(command, f"run {args.run_id} waits on {len(waiting)} calls; name one with --call: " +
                 ", ".join(f"{w.call_id} ({w.tool})" for w in waiting))
            return 2
        call = waiting[0]
        started = next((e for e in events if isinstance(e.data, RunStarted)), events[0])
        await bus.publish(Event.of(ToolCallResolved(call_id=call.call_id, tool=call.tool, happened=args.happened,
                                                    result=result if args.happened else None, note=args.note),
                                   runid=args.run_id, agentid=started.agentid, source="urn:tether:cli"))
    said = "happened" if args.happened else "did not happen"
    print(f"run {args.run_id}: tool call {call.position} ({call.tool}, call {call.call_id}) {said}. "
          f"`tether resume {args.run_id}` goes on from there.")
    return 0


async def run_resume(args: argparse.Namespace) -> int:
    command = "resume"
    if (args.run_id is None) == (not args.interrupted):
        _err(command, "name a RUN, or pass --interrupted for every interrupted run (not both)")
        return 2
    entrypoints: dict[str, str] = {}
    if args.entrypoint is None:
        from tether._config import load_config

        entrypoints = dict(load_config(args.config)[0].resume.entrypoints)
    if not args.interrupted:
        async with await _bus(args) as bus:
            return await resume_one(bus, args.run_id, args.entrypoint, entrypoints)
    runs = _interrupted(args)
    if runs is None:
        return 1
    if not runs:
        print("no interrupted runs")
        return 0
    codes = []
    async with await _bus(args) as bus:
        for run_id in runs:
            codes.append(await resume_one(bus, run_id, args.entrypoint, entrypoints, skip_held=True))
    return max(codes)


def _interrupted(args: argparse.Namespace) -> list[str] | None:
    """The runs the traces view shows as interrupted, oldest first; None when there is no view."""
    from tether.bus import tether_home

    directory = args.views or tether_home(args.home) / "views"
    runs = interrupted_runs(directory, args.heartbeat_s)
    if runs is None:
        _err("resume", f"no traces view in {directory}: run `tether up` (its projector writes the views), or pass "
                       "--views DIR")
    return runs


def interrupted_runs(directory: Path, heartbeat_s: float) -> list[str] | None:
    """The runs the traces view in ``directory`` shows as interrupted, oldest first; None when there is none."""
    import sqlite3

    from tether.projections import open_view
    from tether.projections.traces import list_runs

    path = open_view(directory, "traces") if directory.is_dir() else None
    if path is None:
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = list_runs(db, status="interrupted", heartbeat_s=heartbeat_s, limit=10_000)
    finally:
        db.close()
    return [r["run_id"] for r in reversed(rows)]


async def resume_one(bus: Bus, run_id: str, named: str | None, entrypoints: dict[str, str], *,
                     skip_held: bool = False, skip_finished: bool = False) -> int:
    """Resume ``run_id``, saying how it went; the exit status of ``tether resume RUN``. ``skip_held``: a run
    whose lease someone holds is skipped (0); ``skip_finished``: so is a run that finished (a view behind)."""
    from tether.adapters import FinishedMeanwhile, LeaseHeld, NeedsAttention, entrypoint_for, read_run

    command = "resume"
    events = await read_run(bus, run_id)
    started = next((e for e in events if isinstance(e.data, RunStarted)), None)
    if started is None:
        _err(command, f"no run.started of run {run_id!r} in the log (`tether runs` lists runs)")
        return 1
    finished = next((e.data for e in reversed(events) if isinstance(e.data, RunFinished)), None)
    if finished is not None:
        if skip_finished:
            return 0
        _err(command, f"run {run_id} finished ({finished.status}): there is nothing to resume")
        return 1
    waiting = _unresolved(events)
    if waiting:
        _err(command, f"run {run_id} needs attention first: " + "; ".join(
            f"tool call {w.position} ({w.tool}, call {w.call_id}): {w.reason}" for w in waiting) +
            f". Say what became of it: `tether runs resolve {run_id} --happened --result JSON` or "
            "`--not-happened`")
        return 3
    try:
        entry = entrypoint_for(started.agentid, named=named, entrypoints=entrypoints)
    except LookupError as exc:
        _err(command, str(exc))
        return 2
    assert isinstance(started.data, RunStarted)
    given = started.data.input
    try:
        if entry.is_async:
            output = await entry.resume(run_id, given, bus=bus, if_open=True)
        else:
            output = await asyncio.to_thread(entry.resume, run_id, given, bus=bus, if_open=True)
    except FinishedMeanwhile as exc:
        if skip_finished:
            return 0
        _err(command, str(exc))
        return 1
    except LeaseHeld as exc:
        if skip_held:
            print(f"run {run_id}: skipped, another process runs it ({exc.holder})")
            return 0
        _err(command, str(exc))
        return 1
    except NeedsAttention as exc:
        _err(command, str(exc))
        return 3
    except Exception as exc:
        _err(command, f"run {run_id} failed again: {type(exc).__name__}: {exc}")
        return 1
    finally:
        from tether.adapters import Hub

        await Hub.of(bus).flush()
    print(f"run {run_id} resumed and finished: "
          f"{json.dumps(output, default=repr, ensure_ascii=False)[:400]}")
    return 0
