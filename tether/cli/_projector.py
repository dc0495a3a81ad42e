"""``tether projector``, ``tether replay``, ``tether watch``, and view lag for ``tether status``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tether.bus import Bus, BusConfig, connect, tether_home

from ._format import Style

__all__ = ["add_commands", "default_views", "run_projector", "run_replay", "run_watch", "view_lag"]


def default_views() -> list[Any]:
    """Every view tether ships, newest versions."""
    from tether.projections import CostLedger, ErrorsView, EvalView, MetricsView, TracesView

    return [TracesView(), CostLedger(), ErrorsView(), MetricsView(), EvalView()]


def views_dir(args: argparse.Namespace) -> Path:
    return tether_home(getattr(args, "home", None)) / "views"


def add_processes_option(parser: argparse.ArgumentParser) -> None:
    from tether.projections import default_processes

    auto = default_processes()
    parser.add_argument("--processes", type=int, default=auto, metavar="N",
                        help=f"fold the views in N child processes, split by cost (default here: {auto}, "
                        "from the CPU count); 0 folds them in this process")


async def start_views(bus: Bus, directory: Path, processes: int) -> Any:
    """The live views: a :class:`ProjectorPool` of ``processes`` children, or (0) a
    :class:`Projector` in this process. Raises ``ProjectorBusy``."""
    from tether.projections import Projector, ProjectorPool

    if processes > 0:
        return await ProjectorPool(bus, default_views(), directory, processes=processes).start()
    return await Projector(bus, default_views(), directory).start()


def describe_views(projector: Any) -> str:
    pool = getattr(projector, "groups", None)
    where = (f"in {len(pool)} process(es): " + "; ".join(", ".join(p.name for p in g) for g in pool)
             if pool else "in this process")
    return f"{', '.join(projector.stores)} views {where}"


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    proj = sub.add_parser("projector", help="fold the event log into the SQLite views, live",
                          description="Run the projections (traces, cost, errors, metrics, eval) from the EVENTS "
                          "stream into SQLite views under TETHER_HOME/views, announcing changes on "
                          "tether.proj.<view>.<key>. `tether up` runs one; run at most one per views directory.")
    common(proj)
    add_processes_option(proj)
    replay = sub.add_parser("replay", help="rebuild views from the log (or as of a point in it)",
                            description="Rebuild views from the start of the event log, with a progress bar. "
                            "Only recorded outputs are folded: replay never calls a model or a provider. "
                            "With --to-seq or --to-time, build the views as they were at that point "
                            "(into --out, default TETHER_HOME/views-asof-<point>). The memory view is rebuilt "
                            "in its own directory (default TETHER_HOME/memory, or --out) with its keystore; "
                            "erased namespaces stay erased.")
    common(replay)
    replay.add_argument("views", nargs="*", metavar="VIEW",
                        help="traces, cost, errors, metrics, eval, memory (default: all)")
    point = replay.add_mutually_exclusive_group()
    point.add_argument("--to-seq", type=int, metavar="N", help="stop after stream sequence N")
    point.add_argument("--to-time", metavar="T", help="stop at time T (ISO 8601, UTC if no zone)")
    replay.add_argument("--out", type=Path, metavar="DIR", help="write the views here instead")
    replay.add_argument("--json", action="store_true", help="print the result as JSON")
    add_processes_option(replay)
    watch = sub.add_parser("watch", help="show a view's change notifications live",
                           description="Subscribe to tether.proj.<VIEW>.> and print each change as it is "
                           "announced (the projector must be running, e.g. in `tether up`).")
    common(watch)
    watch.add_argument("view", metavar="VIEW", help="traces, cost, errors, metrics, or * for all")
    watch.add_argument("-n", "--count", type=int, metavar="N", help="exit after N notifications")
    watch.add_argument("--json", action="store_true", help="print the raw notifications")


async def run_projector(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from tether.projections import ProjectorBusy

    bus = await connect(config=BusConfig.from_env(url=args.url, home=args.home, embedded=False))
    try:
        try:
            projector = await start_views(bus, views_dir(args), args.processes)
        except ProjectorBusy as exc:
            print(f"tether projector: {exc}", file=sys.stderr)
            return 1
        from ._freshness import catch_up_words

        print(f"projector running: {describe_views(projector)}, into {views_dir(args)}: "
              f"{catch_up_words(projector.applied_seq, projector.head_seq)}. Ctrl-C stops it.", flush=True)
        try:
            await stop.wait()
        finally:
            await projector.stop()
        print("projector stopped.", flush=True)
        return 0
    finally:
        await bus.close()


def _progress(stream: Any) -> Callable[[int, int], None]:
    started = time.monotonic()
    last = [0.0]

    def show(seq: int, head: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and seq < head:
            return
        last[0] = now
        total = max(head, seq, 1)
        width = 30
        filled = int(width * seq / total)
        rate = seq / max(now - started, 1e-6)
        stream.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {seq:,}/{total:,} events  {rate:,.0f}/s   ")
        stream.flush()

    return show


MEMORY = "memory"
"""The memory view's name: replayed into the memory directory (``[memory] view_dir``), not
``TETHER_HOME/views``, with the keystore its writers use."""


async def run_replay(args: argparse.Namespace) -> int:
    from tether.projections import ProjectorBusy, replay

    views = default_views()
    names = [v.name for v in views] + [MEMORY]
    with_memory = not args.views or MEMORY in args.views
    if args.views:
        unknown = set(args.views) - set(names)
        if unknown:
            print(f"tether replay: unknown view(s) {', '.join(sorted(unknown))}; "
                  f"views are {', '.join(names)}", file=sys.stderr)
            return 2
        views = [v for v in views if v.name in args.views]
    to_time = None
    if args.to_time:
        try:
            to_time = datetime.fromisoformat(args.to_time.replace("Z", "+00:00"))
        except ValueError:
            print(f"tether replay: --to-time {args.to_time!r} is not ISO 8601 (e.g. 2026-11-27T10:00:00Z)",
                  file=sys.stderr)
            return 2
        if to_time.tzinfo is None:
            to_time = to_time.replace(tzinfo=UTC)
    out = args.out
    if out is None and (args.to_seq is not None or to_time is not None):
        point = f"seq{args.to_seq}" if args.to_seq is not None else to_time.strftime("%Y%m%dT%H%M%S")  # type: ignore[union-attr]
        out = tether_home(args.home) / f"views-asof-{point}"
    target = out or views_dir(args)
    memory = None
    if with_memory:
        from ._memory import memory_settings

        try:
            memory = memory_settings(args.home)
        except ValueError as exc:  # InvalidMemory, PolicyConfigError: a bad tether.toml
            print(f"tether replay: {exc}", file=sys.stderr)
            return 2
    bus = await connect(config=BusConfig.from_env(url=args.url, home=args.home, embedded=False, provision=False))
    try:
        sums: dict[str, str] = {}
        started = time.monotonic()
        report: dict[str, Any] = {}
        memory_dir = out or (memory.view_dir if memory is not None else target)
        if memory is not None:
            # Checked before anything is replaced: without its writers' keys a rebuilt view would be empty.
            problem = None if memory.key_store == "nats" else await _memory_keys_problem(bus, memory.keyfile)
            if problem:
                print(f"tether replay: {problem}", file=sys.stderr)
                return 2
            if _held(memory_dir):  # before the other views are rebuilt: all or nothing
                print(_memory_busy(memory_dir, named=bool(args.views)), file=sys.stderr)
                return 1
        if views:
            if not args.json:
                procs = min(max(1, args.processes), len(views))
                print(f"replaying {', '.join(v.name for v in views)} into {target} "
                      f"in {procs} process(es) (recorded outputs only: no model or provider is called)",
                      file=sys.stderr, flush=True)
            try:
                sums.update(await replay(bus, views, target, to_seq=args.to_seq, to_time=to_time,
                                         on_progress=None if args.json else _progress(sys.stderr),
                                         processes=max(1, args.processes)))
            except ProjectorBusy as exc:
                print(f"\ntether replay: {exc}", file=sys.stderr)
                return 1
            if not args.json:
                print(file=sys.stderr)
        if memory is not None:
            from tether.memory import MemoryView, NatsKeyStore

            if not args.json:
                where = "NATS KV tether-keys" if memory.key_store == "nats" else memory.keyfile
                print(f"replaying memory into {memory_dir} (keys from {where})", file=sys.stderr, flush=True)
            keys = await asyncio.to_thread(memory.open_keys, bus)
            try:
                sums.update(await replay(bus, [MemoryView(keys)], memory_dir,
                                         to_seq=args.to_seq, to_time=to_time,
                                         on_progress=None if args.json else _progress(sys.stderr)))
            except ProjectorBusy:  # a memory client started meanwhile
                print("\n" + _memory_busy(memory_dir, named=True), file=sys.stderr)
                return 1
            finally:
                if isinstance(keys, NatsKeyStore):
                    await asyncio.to_thread(keys.close)
            failed = _failed_count(memory_dir)
            report = {"directory": str(memory_dir), "failed": failed}
            if not args.json:
                print(file=sys.stderr)
                if failed:
                    print(f"memory: {failed} event(s) could not be folded (see the _failed table of "
                          f"{memory_dir}/memory.v1.db); a missing key means another keystore wrote them",
                          file=sys.stderr)
        took = time.monotonic() - started
        if args.json:
            doc: dict[str, Any] = {"directory": str(target), "views": sums, "seconds": round(took, 3)}
            if memory is not None:
                doc["memory"] = report
            print(json.dumps(doc))
        else:
            places = ([str(target)] if views else []) + ([str(memory_dir)] if memory is not None else [])
            print(f"rebuilt {len(sums)} view(s) in {took:.1f}s into {' and '.join(dict.fromkeys(places))}",
                  file=sys.stderr)
            if out is not None:
                print(f"read them with --home, or e.g. sqlite3 {target}/traces.v{default_views()[0].version}.db",
                      file=sys.stderr)
        return 0
    finally:
        await bus.close()


def _memory_busy(directory: Path, *, named: bool) -> str:
    others = "" if named else (" (or rebuild the other views alone: tether replay "
                               + " ".join(v.name for v in default_views()) + ")")
    return (f"tether replay: a process using memory keeps the view in {directory} (an agent, `tether memory`, "
            f"or a projector given the memory view); stop it and replay again, or replay into another "
            f"directory with --out{others}")


def _held(directory: Path) -> bool:
    """Whether a process holds ``directory``'s lock (a memory client leading the view there)."""
    from ._freshness import lock_held

    return lock_held(directory, exclusive_only=False)


async def _memory_keys_problem(bus: Bus, keyfile: Path) -> str | None:
    """Why the memory view cannot be rebuilt here (memory events in the log, and no keystore), or None."""
    from tether.memory import last_memory_seq

    if await asyncio.to_thread(keyfile.exists) or await last_memory_seq(bus) == 0:
        return None
    return (f"the log holds memory events, but there is no keystore at {keyfile}: the view would come back "
            "without them. Replay with the --home (or the [memory] keyfile) their writers used")


def _failed_count(directory: Path) -> int:
    from tether.memory import MemoryView
    from tether.projections import view_path

    db = sqlite3.connect(f"file:{view_path(directory, MemoryView.name, MemoryView.version)}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM _failed").fetchone()[0])
    finally:
        db.close()


async def run_watch(args: argparse.Namespace, stop: asyncio.Event) -> int:
    s = Style()
    bus = await connect(config=BusConfig.from_env(url=args.url, home=args.home, embedded=False, provision=False))
    seen = 0
    done = asyncio.Event()

    async def show(msg: Any) -> None:
        nonlocal seen
        if args.count is not None and seen >= args.count:
            return
        seen += 1
        if args.json:
            print(msg.data.decode(), flush=True)
        else:
            with contextlib.suppress(ValueError):
                doc = json.loads(msg.data)
                what = doc.get("key") if doc.get("key") is not None else f"{doc.get('count')} keys"
                print(f"{s.dim(time.strftime('%H:%M:%S'))} {s.cyan(doc.get('view', '?'))} {what} "
                      f"{s.dim('seq ' + str(doc.get('seq')))}", flush=True)
        if args.count is not None and seen >= args.count:
            done.set()

    subject = "tether.proj.>" if args.view == "*" else f"tether.proj.{args.view}.>"
    sub = await bus.nc.subscribe(subject, cb=show)
    if not args.json:
        print(s.dim(f"watching {subject} on {bus.url} (Ctrl-C to stop)"), file=sys.stderr, flush=True)
    try:
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(done.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        return 0
    finally:
        await sub.unsubscribe()
        await bus.close()


def view_lag(home: Path, head_seq: int | None) -> list[dict[str, Any]]:
    """Each view file's applied sequence, completeness and lag behind ``head_seq``."""
    out: list[dict[str, Any]] = []
    directory = home / "views"
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.v*.db")):
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                meta = dict(db.execute("SELECT key, value FROM _meta").fetchall())
                failed = int(db.execute("SELECT count(*) FROM _failed").fetchone()[0])
            finally:
                db.close()
        except sqlite3.Error:
            continue
        seq = int(meta.get("seq") or 0)
        out.append({"view": path.stem, "seq": seq, "complete": meta.get("complete") == "1", "failed": failed,
                    "lag": None if head_seq is None else max(0, head_seq - seq)})
    return out
