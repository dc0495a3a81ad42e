"""``tether worker`` and ``tether dlq``: the reliability commands."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.bus import BusConfig, connect

from ._format import Style

if TYPE_CHECKING:
    from tether.middleware import WorkerConfig

__all__ = ["add_commands", "run_dlq", "run_worker"]


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    worker = sub.add_parser(
        "worker", help="run durable LLM and tool calls from the WORK stream",
        description="Run the executor: take durable calls from WORK, apply the policy (retry, breaker, "
        "fallback, rate limits, budgets) and record every step on the log. Start as many as you like; "
        "they share one consumer. Configuration: tether.toml or [tool.tether] in pyproject.toml.",
    )
    common(worker)
    worker.add_argument("--config", type=Path, help="configuration file (default: ./tether.toml or pyproject.toml)")
    worker.add_argument("--concurrency", type=int, help="calls in flight in this worker (default from config, 64)")
    worker.add_argument("--ack-wait", type=float, default=30.0, metavar="SECONDS",
                        help="how long a call held by a worker that died waits before another worker "
                        "takes it over (default 30)")
    worker.add_argument("--tools", action="append", default=[], metavar="MODULE",
                        help="import MODULE, which registers tools on tether.middleware.tools (repeatable)")
    worker.add_argument("--resume-interrupted", action=argparse.BooleanOptionalAction, default=None,
                        help="also resume interrupted runs, as `tether resume --interrupted` does, every "
                        "--resume-every seconds (each under its run's lease: one resumer per run at a time); "
                        "default: [worker] resume_interrupted in the config, else off")
    worker.add_argument("--resume-every", type=float, metavar="SECONDS",
                        help="with --resume-interrupted: seconds between passes (default: [worker] "
                        "resume_every_s, else 30)")
    worker.add_argument("--heartbeat-s", type=float, metavar="SECONDS",
                        help="with --resume-interrupted: a run open with no event for SECONDS is interrupted "
                        "(default: [worker] resume_heartbeat_s, else 300)")
    worker.add_argument("--resume-views", type=Path, metavar="DIR",
                        help="with --resume-interrupted: the projector's views to find interrupted runs in "
                        "(default TETHER_HOME/views)")

    dlq = sub.add_parser("dlq", help="inspect, redrive and purge dead letters",
                         description="Dead letters are calls that exhausted their policy, could not be "
                         "retried, were refused, or arrived malformed; each keeps its request, every "
                         "attempt and the final error.")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION")
    dlq.set_defaults(print_help=dlq.print_help)
    filt = "KEY=VALUE filter: reason, kind, route, error or call_id; VALUE may end in * (repeatable)"
    ls = dlq_sub.add_parser("ls", help="list dead letters")
    show = dlq_sub.add_parser("show", help="one dead letter, whole")
    show.add_argument("id", metavar="ID", help="call id or DLQ sequence")
    redrive = dlq_sub.add_parser("redrive", help="resubmit dead letters with a fresh attempt budget",
                                 description="Resubmit each dead letter as a new call linked to the original "
                                 "(a call.redriven event), and remove it from the DLQ.")
    redrive.add_argument("ids", nargs="*", metavar="ID")
    purge = dlq_sub.add_parser("purge", help="delete dead letters for good (they stay in the event log)")
    purge.add_argument("ids", nargs="*", metavar="ID")
    purge.add_argument("--all", action="store_true", help="every dead letter")
    purge.add_argument("--yes", action="store_true", help="do not ask")
    for p in (ls, show, redrive, purge):
        common(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
    for p in (ls, redrive, purge):
        p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help=filt)


def _bus_config(args: argparse.Namespace, **extra: Any) -> BusConfig:
    return BusConfig.from_env(url=args.url, home=args.home, **extra)


async def run_worker(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from tether._config import worker_config
    from tether.middleware import Executor, PolicyConfigError, tools

    entrypoints: dict[str, str] = {}
    if any(value is not None and value <= 0 for value in (args.resume_every, args.heartbeat_s)):
        print("tether worker: --resume-every and --heartbeat-s are seconds greater than 0", file=sys.stderr)
        return 2
    try:
        cfg = worker_config(args.config)
        cfg = dataclasses.replace(cfg, tool_modules=(*cfg.tool_modules, *args.tools))
        cfg.import_tools()
        resume = resume_options(args, cfg)
        if resume is not None:
            from tether._config import load_config

            entrypoints = dict(load_config(args.config)[0].resume.entrypoints)
    except PolicyConfigError as exc:
        print(f"tether worker: {exc}", file=sys.stderr)
        return 2
    bus = await connect(config=_bus_config(args, embedded=False))
    executor = Executor(bus, policies=cfg.policies, providers=cfg.providers, tools=tools,
                        concurrency=args.concurrency or cfg.concurrency, ack_wait_s=args.ack_wait)
    resuming: asyncio.Task[None] | None = None
    try:
        await executor.start()
        print(f"worker {executor.worker_id} running: {len(cfg.providers)} provider(s) "
              f"[{', '.join(cfg.providers) or 'none'}], {len(tools.names())} tool(s) "
              f"[{', '.join(tools.names()) or 'none'}], concurrency {executor.concurrency}"
              f"{', config ' + cfg.source if cfg.source else ''}. Ctrl-C stops it.", flush=True)
        if resume is not None:
            from tether.bus import tether_home

            from ._autoresume import AutoResume

            every_s, heartbeat_s = resume
            auto = AutoResume(bus, args.resume_views or tether_home(args.home) / "views", every_s=every_s,
                              heartbeat_s=heartbeat_s, entrypoints=entrypoints)
            print(f"worker: resuming the runs the views in {auto.views} show interrupted (no event for "
                  f"{auto.heartbeat_s:g} s), every {auto.every_s:g} s", flush=True)
            resuming = asyncio.get_running_loop().create_task(auto.run(stop))
        await stop.wait()
        return 0
    finally:
        print("worker stopping (in-flight calls finish or return to the queue)...", flush=True)
        if resuming is not None:
            stop.set()
            await resuming  # it stops after the run it resumes now, if any
        await executor.stop()
        await bus.close()
        print("worker stopped.", flush=True)


def resume_options(args: argparse.Namespace, cfg: WorkerConfig) -> tuple[float, float] | None:
    """Whether the worker resumes interrupted runs, and if so every how many seconds and after
    how long a quiet run counts as interrupted: the command line's options, else ``[worker]``'s."""
    if not (cfg.resume_interrupted if args.resume_interrupted is None else args.resume_interrupted):
        return None
    return (cfg.resume_every_s if args.resume_every is None else args.resume_every,
            cfg.resume_heartbeat_s if args.heartbeat_s is None else args.heartbeat_s)


async def run_dlq(args: argparse.Namespace) -> int:
    from tether.middleware import DeadLetterError, deadletter

    s = Style()
    try:
        filters = deadletter.parse_filters(getattr(args, "filter", []))
    except ValueError as exc:
        print(f"tether dlq: {exc}", file=sys.stderr)
        return 2
    bus = await connect(config=_bus_config(args, embedded=False, provision=False))
    try:
        if args.dlq_command == "ls":
            letters = await deadletter.list_dead_letters(bus, filters)
            if args.json:
                print(json.dumps([d.summary() for d in letters], indent=2))
                return 0
            if not letters:
                print("no dead letters" + (" matching the filter" if filters else ""))
                return 0
            print(f"{'seq':>6}  {'when':<19}  {'reason':<14} {'route':<32} {'tries':>5}  error / call id")
            for d in letters:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.dead_lettered_at))
                print(f"{d.seq:>6}  {when:<19}  {d.reason:<14} {d.route[:32]:<32} {d.attempts:>5}  "
                      f"{s.red(d.error_type)}: {d.error_message[:60]}\n{'':>36}{s.dim(d.call_id)}")
            print(s.dim(f"{len(letters)} dead letter(s). `tether dlq show ID` for one, "
                        "`tether dlq redrive ID` to retry."))
            return 0
        if args.dlq_command == "show":
            d = await deadletter.get_dead_letter(bus, args.id)
            print(json.dumps({"seq": d.seq, **d.doc}, indent=2, ensure_ascii=False))
            return 0
        if args.dlq_command in ("redrive", "purge"):
            if args.ids:
                letters = [await deadletter.get_dead_letter(bus, i) for i in args.ids]
            elif filters or getattr(args, "all", False):
                letters = await deadletter.list_dead_letters(bus, filters)
            else:
                print(f"tether dlq {args.dlq_command}: name IDs, or use --filter"
                      f"{' or --all' if args.dlq_command == 'purge' else ''}", file=sys.stderr)
                return 2
            if args.dlq_command == "redrive":
                done = []
                for d in letters:
                    try:
                        done.append({"call_id": d.call_id, "new_call_id": await deadletter.redrive(bus, d)})
                    except DeadLetterError as exc:
                        done.append({"call_id": d.call_id, "error": str(exc)})
                if args.json:
                    print(json.dumps(done, indent=2))
                else:
                    for r in done:
                        print(f"{r['call_id']} → {r.get('new_call_id') or s.red(r['error'])}")
                    print(f"redrove {sum('new_call_id' in r for r in done)} of {len(done)}")
                return 0 if all("new_call_id" in r for r in done) else 1
            if not args.yes and not args.json and sys.stdin.isatty():
                answer = await asyncio.to_thread(input, f"delete {len(letters)} dead letter(s) for good? [y/N] ")
                if answer.strip().lower() not in ("y", "yes"):
                    print("nothing deleted")
                    return 1
            n = await deadletter.purge(bus, letters)
            print(json.dumps({"purged": n}) if args.json else f"purged {n} dead letter(s)")
            return 0
        args.print_help()
        return 2
    except DeadLetterError as exc:
        print(f"tether dlq: {exc}", file=sys.stderr)
        return 1
    finally:
        await bus.close()
