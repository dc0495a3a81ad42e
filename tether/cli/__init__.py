"""The ``tether`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tether import __version__
from tether._loop import run as run_loop
from tether.bus import Bus, BusConfig, BusUnavailable, connect, event_filter, tether_home
from tether.bus._outbox import outbox_depth, set_aside
from tether.schemas import export_schemas

from ._format import Style, result_line

__all__ = ["main"]

EPILOG = """\
Environment: TETHER_HOME (default ./.tether) holds the embedded server's data and the
outbox; TETHER_NATS_URL points every command at an existing NATS server instead;
TETHER_NATS_USER/PASSWORD/TOKEN/CREDS/NKEY and TETHER_NATS_TLS_CA/CERT/KEY authenticate.
Docs: docs/cli.md.
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="NATS server URL (default: $TETHER_NATS_URL, else the local tether server)")
    p.add_argument("--home", type=Path, help="tether home directory (default: $TETHER_HOME or ./.tether)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the bus does")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tether",
        description="tether: production infrastructure for AI agents on an event-sourced NATS log.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser(
        "up", help="start tether: embedded NATS, streams and every service",
        description="Start the embedded nats-server (unless --url/TETHER_NATS_URL names one), "
        "provision the EVENTS, WORK and DLQ streams, and run tether's services until Ctrl-C. "
        "With --demo, a scripted agent publishes runs so you can watch events flow.",
    )
    _common(up)
    up.add_argument("--demo", action="store_true", help="run the scripted demo agent and print its events")
    up.add_argument("--runs", type=int, metavar="N", help="with --demo: stop after N runs and exit")
    up.add_argument("--interval", type=float, default=2.0, metavar="S",
                    help="with --demo: seconds between runs (default 2)")
    up.add_argument("--update-streams", action="store_true",
                    help="fix stream config drift in place where NATS allows it")
    up.add_argument("--replicas", type=int, help="stream replicas (1 locally, 3 on a cluster)")
    up.add_argument("--gateway-port", type=int, metavar="PORT",
                    help="also serve the OpenAI/Anthropic-compatible gateway on this port ([gateway] in tether.toml)")
    up.add_argument("--gateway-host", metavar="HOST", help="the gateway's address (default 127.0.0.1)")
    up.add_argument("--otel-endpoint", metavar="URL",
                    help="also send finished traces to this OpenTelemetry receiver (OTLP/HTTP), "
                    "e.g. http://127.0.0.1:4318; needs tether[otel]")
    up.add_argument("--otel-service-name", metavar="NAME",
                    help="with --otel-endpoint: the service.name, and Phoenix's project "
                    "(default: $OTEL_SERVICE_NAME, else tether)")
    up.add_argument("--otel-capture-content", action="store_true",
                    help="with --otel-endpoint: also send prompts, completions, tool arguments and results "
                    "(see `tether otel-export --help`)")
    up.add_argument("--config", type=Path,
                    help="worker configuration (default: ./tether.toml or [tool.tether] in pyproject.toml)")
    from ._projector import add_processes_option

    add_processes_option(up)

    tail = sub.add_parser(
        "tail", help="show events live, one line each",
        description="Follow the event log. Filters combine; ids are matched exactly.",
    )
    _common(tail)
    tail.add_argument("--agent", help="only this agent's events")
    tail.add_argument("--run", help="only this run's events")
    tail.add_argument("--kind", choices=["run", "llm", "tool", "memory", "call", "circuit", "budget"],
                      help="only this kind of event")
    tail.add_argument("--action", help="only this action (started, completed, attempt_failed...)")
    tail.add_argument("--key", help="only this routing key (tool name, provider, memory namespace)")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--all", action="store_true", help="start from the beginning of the log")
    start.add_argument("--last", type=int, metavar="N", help="start N messages back in the log")
    tail.add_argument("-n", "--count", type=int, metavar="N", help="exit after N events")
    tail.add_argument("--json", action="store_true", help="print each event as CloudEvents JSON")

    status = sub.add_parser("status", help="server, streams, consumers and outbox at a glance",
                            description="Show the NATS server, the streams with message counts, "
                            "their consumers, config drift and the local outbox depth.")
    _common(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    schemas = sub.add_parser("schemas", help="event and tether.toml schemas")
    schemas.set_defaults(print_help=schemas.print_help)  # `tether schemas` alone: its help
    schemas_sub = schemas.add_subparsers(dest="schemas_command", metavar="ACTION")
    export = schemas_sub.add_parser(
        "export", help="write JSON Schema files for every event type and for tether.toml",
        description="Write envelope.json, one <type>.v<N>.json per event payload and index.json "
        "into DIR, so publishers in any language can validate their events; and tether-config.json, "
        "the schema of tether.toml, for editors (a `#:schema DIR/tether-config.json` first line).",
    )
    export.add_argument("directory", type=Path, metavar="DIR")

    from . import _gateway, _memory, _otel, _projector, _reliability, _stats, _views

    _reliability.add_commands(sub, _common)
    _memory.add_commands(sub, _common)
    _gateway.add_commands(sub, _common)
    _otel.add_commands(sub, _common)
    _views.add_commands(sub, _common)
    _stats.add_commands(sub, _common)
    _projector.add_commands(sub, _common)
    sub.add_parser("fake-provider", add_help=False,
                   help="an OpenAI/Anthropic-compatible fake provider with fault injection "
                   "(`tether fake-provider --help`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fake-provider"]:
        from tether.testing.fake_provider import main as fake_provider_main

        return int(fake_provider_main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "schemas":
            if args.schemas_command is None:
                args.print_help()
                return 2
            from tether._config import export_config_schema

            written = [*export_schemas(args.directory), export_config_schema(args.directory)]
            print(f"wrote {len(written)} schema files to {args.directory} (the events', and tether.toml's in "
                  f"{written[-1].name})")
            return 0
        if args.command == "dlq":
            from ._reliability import run_dlq

            if args.dlq_command is None:
                args.print_help()
                return 2
            return run_loop(run_dlq(args))
        if args.command == "worker":
            return run_loop(_worker(args))
        if args.command in ("runs", "trace", "cost"):
            from ._views import run as run_views

            return run_loop(run_views(args))
        if args.command in ("errors", "stats"):
            from ._stats import run as run_stats

            return run_loop(run_stats(args))
        if args.command in ("projector", "watch"):
            return run_loop(_until_signal(args))
        if args.command == "memory":
            from ._memory import run as run_memory

            return run_loop(run_memory(args))
        if args.command == "gateway":
            from ._gateway import run as run_gateway

            return run_loop(run_gateway(args))
        if args.command == "otel-export":
            from ._otel import run as run_otel

            return run_loop(run_otel(args))
        if args.command == "replay":
            from ._projector import run_replay

            return run_loop(run_replay(args))
        runner = {"up": _up, "tail": _tail, "status": _status}[args.command]
        return run_loop(runner(args))
    except BusUnavailable as exc:
        print(f"tether: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`tether tail | head`): stop quietly, as Unix tools do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _say(text: str) -> None:
    """Print during shutdown: a closed stdout (``tether up | head``) must not skip the cleanup."""
    with contextlib.suppress(OSError, ValueError):
        print(text, flush=True)


def _config(args: argparse.Namespace, **extra: Any) -> BusConfig:
    return BusConfig.from_env(url=args.url, home=args.home, **extra)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[asyncio.Event]:
    """While inside, SIGINT and SIGTERM set the event instead of interrupting the process."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _until_signal(args: argparse.Namespace) -> int:
    from ._projector import run_projector, run_watch

    with _stop_on_signals() as stop:
        return await (run_projector if args.command == "projector" else run_watch)(args, stop)


async def _worker(args: argparse.Namespace) -> int:
    from ._reliability import run_worker

    with _stop_on_signals() as stop:
        return await run_worker(args, stop)


async def _wait_for_signal() -> None:
    with _stop_on_signals() as stop:
        await stop.wait()


async def _up(args: argparse.Namespace) -> int:
    s = Style()
    lone = [flag for flag, given in (("--otel-service-name", args.otel_service_name),
                                     ("--otel-capture-content", args.otel_capture_content)) if given]
    if lone and not args.otel_endpoint:
        print(f"tether up: {' and '.join(lone)} go with --otel-endpoint URL (where the traces are sent), "
              "e.g. --otel-endpoint http://127.0.0.1:6006 for Phoenix", file=sys.stderr)
        return 2
    extra: dict[str, Any] = {"update_streams": args.update_streams}
    if args.replicas:
        extra["replicas"] = args.replicas
    cfg = _config(args, **extra)
    where = cfg.url or f"embedded nats-server in {cfg.home}"
    # Signals are handled from the very start (before the first line is printed): Ctrl-C
    # while the server is still coming up stops it too, instead of leaving an orphan that
    # no later `tether up` owns.
    with _stop_on_signals() as stop:
        print(f"tether {__version__} starting: {where}", flush=True)
        connecting = asyncio.create_task(connect(config=cfg))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({connecting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            print("stopped before tether was up.", flush=True)
            return 0
        bus = connecting.result()
        try:
            if bus.server is not None:
                print(f"  nats-server pid {bus.server.pid} listening on {bus.url} "
                      f"(JetStream, data in {cfg.home / 'nats'})")
            else:
                print(f"  connected to {bus.url}")
            rep = bus.provision_report
            if rep is not None:
                made = ", ".join(rep.created) or "none"
                print(f"  streams: EVENTS, WORK, DLQ ready (created: {made})")
                for drift in rep.drift:
                    print(s.yellow(f"  drift: {drift}"))
            left = bus.publisher.outbox_depth()
            if left:
                print(s.yellow(f"  flushing {left} event(s) left in the outbox by an earlier process"))
            executor, fake = await _start_services(args, bus, s)
            if executor is None:
                return 2
            projector = await _start_projector(bus, cfg.home, s, args.processes)
            gateway = None
            if args.gateway_port is not None:
                from ._gateway import start_in_up

                gateway = await start_in_up(bus, args.config, host=args.gateway_host, port=args.gateway_port)
                if gateway is None:
                    await executor.stop()
                    if projector is not None:
                        await projector.stop()
                    return 2
            otel = None
            if args.otel_endpoint:
                from tether.projections.otel import OtelUnavailable

                from ._otel import Follower

                try:
                    otel = await Follower.start(bus, cfg.home, args.otel_endpoint,
                                                service_name=args.otel_service_name,
                                                capture_content=args.otel_capture_content)
                except (OtelUnavailable, ValueError) as exc:
                    print(f"tether up: --otel-endpoint: {exc}", file=sys.stderr)
                    if gateway is not None:
                        await gateway.stop()
                    await executor.stop()
                    if projector is not None:
                        await projector.stop()
                    return 2
                content = "with prompts and results" if otel.exporter.content is not None else "without content"
                print(f"  otel: finished traces to {otel.endpoint} (service and project {otel.service_name}, "
                      f"{content})")
            print(s.bold("tether is up.") + " In another terminal: `tether tail` to watch events, "
                  "`tether status` for counts, `tether dlq ls` for dead letters. Ctrl-C stops everything.",
                  flush=True)
            try:
                if not args.demo or fake is None:
                    await stop.wait()
                    return 0
                return await _play_demo(args, bus, fake, stop, s)
            finally:
                if gateway is not None:
                    await gateway.stop()
                await executor.stop()
                if fake is not None:
                    await fake.aclose()
                if projector is not None:
                    with contextlib.suppress(Exception):  # best effort: views current at exit
                        await projector.catch_up(timeout=10)
                    await projector.stop()
                if otel is not None:
                    await otel.stop()  # one last pass
        finally:
            _say("stopping tether...")
            await bus.close()
            _say("stopped cleanly.")


async def _start_services(args: argparse.Namespace, bus: Bus, s: Style) -> tuple[Any, Any]:
    """The worker (and, for the demo, the fake provider it calls). (None, None) on a config error."""
    from tether._config import worker_config
    from tether.middleware import Executor, PolicyConfigError, tools

    fake = None
    if args.demo:
        from tether.testing.fake_provider import FakeProvider

        from ._demo import demo_policies, demo_providers, demo_tools

        fake = await FakeProvider(seed=0).start()
        executor = Executor(bus, policies=demo_policies(), providers=demo_providers(fake), tools=demo_tools())
        print(f"  fake provider (demo) on {fake.url}")
    else:
        try:
            wcfg = worker_config(args.config)
            wcfg.import_tools()
        except PolicyConfigError as exc:
            print(f"tether up: {exc}", file=sys.stderr)
            return None, None
        executor = Executor(bus, policies=wcfg.policies, providers=wcfg.providers, tools=tools,
                            concurrency=wcfg.concurrency)
    await executor.start()
    print(f"  worker: durable calls from WORK, {len(executor.providers)} provider(s) "
          f"[{', '.join(executor.providers) or 'none: add [providers.*] to tether.toml'}], "
          f"{len(executor.tools.names())} tool(s)")
    return executor, fake


async def _start_projector(bus: Bus, home: Path, s: Style, processes: int) -> Any:
    """The projector for the views under ``home/views``; None (with a note) if one already runs."""
    from tether.projections import ProjectorBusy

    from ._projector import describe_views, start_views

    try:
        projector = await start_views(bus, home / "views", processes)
    except ProjectorBusy:
        print(s.yellow("  projector: another one already serves these views; not starting a second"))
        return None
    from ._freshness import catch_up_words

    print(f"  projector: {describe_views(projector)}, from the log into {home / 'views'}: "
          f"{catch_up_words(projector.applied_seq, projector.head_seq)}")
    return projector


async def _play_demo(args: argparse.Namespace, bus: Bus, fake: Any, stop: asyncio.Event, s: Style) -> int:
    from tether.middleware import DurableCalls

    from ._demo import AGENT, logs_as_notes, run_demo

    print(s.dim(f"demo: a research agent makes real durable calls every {args.interval:g}s against the "
                "fake provider: a rate limit retried, a tool, a fallback (and the circuit breaker of the model "
                "that is down), and every third run a dead letter"), flush=True)

    async def show(msg: Any) -> None:
        result = await bus.reader.read_safe(msg.subject, msg.headers, msg.data)
        print("  " + result_line(result, s), flush=True)

    subs = [await bus.nc.subscribe(f"tether.evt.{AGENT}.>", cb=show),
            await bus.nc.subscribe("tether.evt.*.*.circuit.>", cb=show)]

    def on_run(n: int, run_id: str) -> None:
        print(s.dim(f"run {n} done. Try: tether tail --run {run_id} --all   |   tether tail --kind llm   "
                    "|   tether dlq ls   |   tether status"), flush=True)

    def note(text: str) -> None:
        print(s.yellow(f"  ! {text}"), flush=True)

    # Warnings (a failed worker fetch, say) print as the demo's notes, not as raw log lines on
    # stderr between its event lines; with -v the raw log, as asked.
    with contextlib.nullcontext() if args.verbose else logs_as_notes(note):
        async with DurableCalls(bus) as calls:
            demo = asyncio.create_task(run_demo(bus, calls, fake, runs=args.runs, interval=args.interval,
                                                on_run=on_run, note=note))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({demo, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (demo, stopper):
                if task not in done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if demo in done:
                demo.result()
        await bus.flush()
        await asyncio.sleep(0.05)  # let the last events print
    for sub in subs:
        await sub.unsubscribe()
    return 0


async def _tail(args: argparse.Namespace) -> int:
    from nats.js.api import ConsumerConfig, DeliverPolicy

    s = Style()
    bus = await connect(config=_config(args, embedded=False, provision=False))
    try:
        subject = event_filter(agent=args.agent, run=args.run, kind=args.kind, action=args.action,
                               key=args.key)
        config = ConsumerConfig()
        policy = DeliverPolicy.NEW
        if args.all:
            policy = DeliverPolicy.ALL
        elif args.last:
            info = await bus.js.stream_info("EVENTS")
            policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(1, info.state.last_seq - args.last + 1)
        try:
            sub = await bus.js.subscribe(subject, ordered_consumer=True, deliver_policy=policy,
                                         config=config)
        except Exception as exc:
            print(f"tether: cannot follow {subject}: {exc} (has `tether up` provisioned the streams?)",
                  file=sys.stderr)
            return 1
        if not args.json:
            print(s.dim(f"following {subject} on {bus.url} (Ctrl-C to stop)"), file=sys.stderr, flush=True)
        seen = 0
        stop = asyncio.create_task(_wait_for_signal())
        try:
            while args.count is None or seen < args.count:
                nxt = asyncio.create_task(sub.next_msg(timeout=None))
                done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    nxt.cancel()
                    break
                msg = nxt.result()
                meta = msg.metadata
                result = await bus.reader.read_safe(msg.subject, msg.headers, msg.data,
                                                    meta.sequence.stream if meta else None)
                if args.json:
                    doc = (result.event.to_json() if result.event is not None
                           else {"error": str(result.error), "subject": result.subject,
                                 "stream_seq": result.stream_seq})
                    print(json.dumps(doc, ensure_ascii=False), flush=True)
                else:
                    print(result_line(result, s), flush=True)
                seen += 1
        finally:
            stop.cancel()
            await sub.unsubscribe()
        return 0
    finally:
        await bus.close()


def _print_set_aside(s: Style, entries: list[dict[str, Any]], total: int) -> None:
    """The events set aside in the outbox (NATS can never accept them), newest first, with why."""
    for r in entries:
        print(s.yellow(f"  set aside {r['id']} on {r['subject']!r} ({r['file']}): {r['error']}"))
    if total > len(entries):
        print(s.yellow(f"  ... and {total - len(entries)} more (tether status --json lists the newest)"))


async def _status(args: argparse.Namespace) -> int:
    s = Style()
    cfg = _config(args, embedded=False, provision=False)
    try:
        bus = await connect(config=cfg)
    except BusUnavailable as exc:
        files, queued, rejected = outbox_depth(tether_home(cfg.home) / "outbox")
        aside = [dataclasses.asdict(r) for r in set_aside(tether_home(cfg.home) / "outbox")]
        # Without a URL, connect() looked for the server `tether up` runs for this home.
        error = (f"no tether server is running for {tether_home(cfg.home)}: start one with `tether up` "
                 "(or set TETHER_NATS_URL to use your own NATS)") if cfg.url is None else str(exc)
        if args.json:
            print(json.dumps({"server": None, "error": error, "outbox": {
                "files": files, "queued": queued, "rejected": rejected, "set_aside": aside}}))
        else:
            print(s.red(error))
            print(f"outbox: {queued} event(s) queued in {files} file(s), {rejected} rejected")
            _print_set_aside(s, aside, rejected)
        return 1
    try:
        st = await bus.status()
    finally:
        await bus.close()
    from ._projector import view_lag

    head = next((x.get("last_seq") for x in st["streams"] if x.get("name") == "EVENTS"), None)
    st["views"] = view_lag(tether_home(cfg.home), head)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    srv = st["server"]
    print(s.bold("server  ") + f"{srv['url']}  nats-server {srv['version']}  "
          f"jetstream={'on' if srv['jetstream'] else 'OFF'}  max_payload={srv['max_payload']}")
    print(s.bold("home    ") + st["home"])
    print(s.bold("streams"))
    print(f"  {'name':<8} {'messages':>10} {'bytes':>12} {'first':>8} {'last':>8}  consumers")
    for stream in st["streams"]:
        if "error" in stream:
            print(s.red(f"  {stream['name']:<8} missing: {stream['error']} (run `tether up`)"))
            continue
        cons = _consumers(stream["consumers"])
        print(f"  {stream['name']:<8} {stream['messages']:>10,} {stream['bytes']:>12,} "
              f"{stream['first_seq']:>8} {stream['last_seq']:>8}  {cons}")
    for drift in st["drift"]:
        print(s.yellow(f"drift   {drift}"))
    ob = st["outbox"]
    colour = s.yellow if ob["queued"] or ob["rejected"] else (lambda t: t)
    print(s.bold("outbox  ") + colour(f"{ob['queued']} queued in {ob['files']} file(s), "
                                      f"{ob['rejected']} rejected"))
    _print_set_aside(s, ob["set_aside"], ob["rejected"])
    if st["views"]:
        print(s.bold("views"))
        for v in st["views"]:
            state = "complete" if v["complete"] else s.yellow("building")
            lag = s.yellow(f"lag {v['lag']:,}") if v["lag"] else "up to date"
            failed = s.yellow(f", {v['failed']} event(s) skipped") if v["failed"] else ""
            print(f"  {v['view']:<12} applied seq {v['seq']:>8}  {lag}  {state}{failed}")
    else:
        print(s.bold("views   ") + "none yet (tether up runs the projector)")
    return 0


def _consumers(consumers: list[dict[str, Any]]) -> str:
    """Durable consumers by name; the ephemeral ones (`tether tail`, `tether dlq ls`, gone once their
    reader stops) only counted: their names are random."""
    named = [f"{c['name']} (pending {c['pending']}, unacked {c['ack_pending']})" for c in consumers
             if c.get("durable", True)]
    readers = len(consumers) - len(named)
    if readers:
        named.append(f"{readers} temporary reader(s)")
    return ", ".join(named) or "-"
