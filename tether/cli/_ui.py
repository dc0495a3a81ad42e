"""``tether ui``: the live web dashboard, alone (``run``) or inside ``tether up`` (``start_in_up``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.bus import Bus, BusConfig, connect, tether_home

from ._process import stop_on_signals

__all__ = ["add_commands", "add_up_options", "run", "start_in_up"]

DESCRIPTION = """\
Serve the live web dashboard: runs (filter, search), each run's trace as a tree and a
waterfall (every attempt, retry, backoff, fallback, breaker refusal, tool call, memory write
and dead letter, with the request and response as stored, redacted), cost, latency, errors
grouped by fingerprint, breakers, and dead letters to redrive or purge. Pages update live,
pushed over SSE from the projector's change notifications (tether.proj.>), and say how far
each view is behind the log.

It reads TETHER_HOME/views read-only (a projector must run: `tether up` or `tether
projector`) and needs a NATS server (live updates, the DLQ, span contents). `tether up`
starts it too (--ui-port, --no-ui).

Security: it listens on 127.0.0.1 unless --host says otherwise. Redrive and purge always need
the token: open the URL this command prints (it ends in ?token=...; the token then stays in
a cookie of that browser). Beyond loopback, every page needs it, and --token is required.
Actions are also checked for a CSRF token and the page's own Origin. Docs: docs/ui.md.
"""


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    from tether.ui import DEFAULT_PORT, TOKEN_ENV

    ui = sub.add_parser("ui", help="the live web dashboard: runs, traces, cost, latency, errors, dead letters",
                        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(ui)
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; any other needs --token)")
    ui.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="PORT",
                    help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    ui.add_argument("--token", default=None, metavar="TOKEN",
                    help=f"the token actions (and, beyond loopback, pages) need (default ${TOKEN_ENV}; on "
                    "loopback a random one is made when none is given)")
    ui.add_argument("--views", type=Path, metavar="DIR", help="read the views in DIR (default TETHER_HOME/views)")


def add_up_options(up: argparse.ArgumentParser) -> None:
    from tether.ui import DEFAULT_PORT

    up.add_argument("--ui-port", type=int, default=DEFAULT_PORT, metavar="PORT",
                    help=f"the web dashboard's port on 127.0.0.1 (default {DEFAULT_PORT}, or a free one if it is "
                    "taken; 0 picks a free one); see `tether ui --help`")
    up.add_argument("--no-ui", action="store_true", help="do not start the web dashboard")


def _token(args: argparse.Namespace) -> str | None:
    from tether.ui import TOKEN_ENV

    return args.token or os.environ.get(TOKEN_ENV) or None


async def run(args: argparse.Namespace) -> int:
    """``tether ui``: serve until SIGINT/SIGTERM; 2 on a refused bind, 1 when NATS cannot be reached."""
    from tether.ui import UiServer, bind_refusal

    token = _token(args)
    refusal = bind_refusal(args.host, token)
    if refusal:
        print(f"tether ui: {refusal}", file=sys.stderr)
        return 2
    views = args.views or tether_home(args.home) / "views"
    with stop_on_signals() as stop:
        bus = await connect(config=BusConfig.from_env(url=args.url, home=args.home, embedded=False, provision=False))
        try:
            server = UiServer(bus, views, host=args.host, port=args.port, token=token)
            try:
                await server.start()
            except OSError as exc:
                print(f"tether ui: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; "
                      "choose another --port (0 picks a free one)", file=sys.stderr)
                return 2
            print(f"tether ui: the dashboard is at {server.login_url}", flush=True)
            print(f"  reading the views in {views} (read-only), live from {bus.url}. Ctrl-C stops it.", flush=True)
            try:
                await stop.wait()
            finally:
                await server.stop()
            print("tether ui stopped.", flush=True)
            return 0
        finally:
            await bus.close()


async def start_in_up(bus: Bus, home: Path, port: int) -> Any:
    """The dashboard for ``tether up`` on 127.0.0.1 (a free port if ``port`` is taken), its URL printed."""
    from tether.ui import TOKEN_ENV, UiServer

    server = UiServer(bus, home / "views", port=port, token=os.environ.get(TOKEN_ENV) or None)
    try:
        try:
            await server.start()
        except OSError:
            server = UiServer(bus, home / "views", port=0, token=server.guard.token)
            await server.start()
            print(f"  ui: port {port} is taken, using {server.port} instead")
    except Exception as exc:  # the dashboard is an extra: tether runs on without it
        print(f"  ui: the dashboard did not start ({exc}); `tether ui` starts it alone", file=sys.stderr)
        return None
    print(f"  ui: the dashboard is at {server.login_url}  (runs, traces, cost, dead letters; `tether ui --help`)")
    return server
