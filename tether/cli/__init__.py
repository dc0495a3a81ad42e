"""The ``tether`` command line: its parser, and :func:`main`, which hands each command to its module."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tether import __version__
from tether._loop import run as run_loop
from tether.bus import BusUnavailable
from tether.schemas import export_schemas

from ._process import stop_on_signals

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
                    help="also serve the OpenAI/Anthropic/Gemini-compatible gateway on this port "
                         "([gateway] in tether.toml)")
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
    from ._ui import add_up_options

    add_up_options(up)

    tail = sub.add_parser(
        "tail", help="show events live, one line each",
        description="Follow the event log. Filters combine; ids are matched exactly.",
    )
    _common(tail)
    tail.add_argument("--agent", help="only this agent's events")
    tail.add_argument("--run", help="only this run's events")
    tail.add_argument("--kind", choices=["run", "llm", "tool", "memory", "call", "circuit", "budget", "eval"],
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

    from . import (
        _auth,
        _cluster,
        _eval,
        _gateway,
        _mcp,
        _memory,
        _otel,
        _projector,
        _reliability,
        _resume,
        _stats,
        _ui,
        _views,
    )

    _reliability.add_commands(sub, _common)
    _memory.add_commands(sub, _common)
    _eval.add_commands(sub, _common)
    _gateway.add_commands(sub, _common)
    _mcp.add_commands(sub, _common)
    _otel.add_commands(sub, _common)
    _views.add_commands(sub, _common)
    _resume.add_commands(sub, _common)
    _stats.add_commands(sub, _common)
    _projector.add_commands(sub, _common)
    _ui.add_commands(sub, _common)
    _cluster.add_commands(sub, _common)
    _auth.add_commands(sub, _common)
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
        if args.command == "runs" and getattr(args, "runs_command", None) == "resolve":
            from ._resume import run_resolve

            return run_loop(run_resolve(args))
        if args.command == "resume":
            from ._resume import run_resume

            return run_loop(run_resume(args))
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
        if args.command == "eval":
            from ._eval import run as run_eval

            return run_loop(run_eval(args))
        if args.command == "gateway":
            from ._gateway import run as run_gateway

            return run_loop(run_gateway(args))
        if args.command == "mcp":
            from ._mcp import run as run_mcp

            return run_loop(run_mcp(args))
        if args.command == "otel-export":
            from ._otel import run as run_otel

            return run_loop(run_otel(args))
        if args.command == "replay":
            from ._projector import run_replay

            return run_loop(run_replay(args))
        if args.command == "ui":
            from ._ui import run as run_ui

            return run_loop(run_ui(args))
        if args.command == "auth":
            from ._auth import run as run_auth

            return run_loop(run_auth(args))
        if args.command == "cluster":
            from ._cluster import run as run_cluster

            return run_loop(run_cluster(args))
        if args.command == "up":
            from ._up import run_up

            return run_loop(run_up(args))
        if args.command == "tail":
            from ._tail import run_tail

            return run_loop(run_tail(args))
        from ._status import run_status

        return run_loop(run_status(args))
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


async def _until_signal(args: argparse.Namespace) -> int:
    from ._projector import run_projector, run_watch

    with stop_on_signals() as stop:
        return await (run_projector if args.command == "projector" else run_watch)(args, stop)


async def _worker(args: argparse.Namespace) -> int:
    from ._reliability import run_worker

    with stop_on_signals() as stop:
        return await run_worker(args, stop)
