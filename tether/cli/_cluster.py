"""``tether cluster up | status | down``: a three-node JetStream cluster on this machine, its data
and logs under ``TETHER_HOME/cluster``; every command run with that home connects to it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from tether.bus import LocalCluster, ServerError, tether_home

from ._format import Style

__all__ = ["add_commands", "run"]


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "cluster", help="a local three-node JetStream cluster (up, status, down)",
        description="Run a JetStream cluster of nats-server processes with routes on loopback, data and "
        "logs in TETHER_HOME/cluster. Every tether command with this TETHER_HOME then connects to it (or set "
        "TETHER_NATS_URL to the URLs `tether cluster up` prints), and streams, KV buckets and the object store "
        "get 3 replicas. Docs: docs/cluster.md.")
    p.set_defaults(print_help=p.print_help)
    actions = p.add_subparsers(dest="cluster_command", metavar="ACTION")
    up = actions.add_parser("up", help="start the nodes (those not running yet) and wait until they are healthy")
    common(up)
    up.add_argument("--nodes", type=int, default=3, metavar="N", help="how many servers (default 3)")
    up.add_argument("--name", default="tether", help="the cluster's name (default tether)")
    up.add_argument("--auth", action="store_true",
                    help="require the credentials `tether auth` issues (includes TETHER_HOME/auth/server.conf)")
    up.add_argument("--config-include", metavar="FILE",
                    help="a nats-server configuration file every node includes (TLS, `tether auth` operator)")
    status = actions.add_parser("status", help="each node: pid, URL, healthy; which node leads each stream")
    common(status)
    status.add_argument("--json", action="store_true", help="print as JSON")
    down = actions.add_parser("down", help="stop every node (its data stays)")
    common(down)


def _cluster(args: argparse.Namespace, **options: Any) -> LocalCluster:
    return LocalCluster(tether_home(args.home) / "cluster", **options)


async def run(args: argparse.Namespace) -> int:
    if args.cluster_command is None:
        args.print_help()
        return 2
    if args.cluster_command == "up":
        return await _up(args)
    if args.cluster_command == "down":
        cluster = _cluster(args)
        running = [n.name for n in cluster.nodes if n.running]
        await asyncio.to_thread(cluster.stop)
        print(f"stopped {', '.join(running) or 'nothing (no node was running)'}; data kept in {cluster.directory}")
        return 0
    return await _status(args)


async def _up(args: argparse.Namespace) -> int:
    s = Style()
    if args.nodes < 1:
        print("tether cluster up: --nodes takes 1 or more (3 for a cluster that survives losing a node)",
              file=sys.stderr)
        return 2
    extra = _include(args.config_include) if args.config_include else ""
    if args.auth:
        conf = tether_home(args.home) / "auth" / "server.conf"
        if not await asyncio.to_thread(conf.is_file):
            print(f"tether cluster up: --auth needs {conf}: run `tether auth init` first", file=sys.stderr)
            return 2
        extra += "\n" + _include(str(conf))
    cluster = _cluster(args, size=args.nodes, name=args.name, extra_config=extra, detach=True)
    try:
        await asyncio.to_thread(cluster.start)
    except ServerError as exc:
        print(f"tether cluster up: {exc}", file=sys.stderr)
        return 1
    for node in cluster.nodes:
        print(f"  {node.name}: pid {node.pid}  {node.url}  (data {node.store_dir}, log {node.log_file})")
    print(s.bold(f"cluster {cluster.name} is up") + f" ({len(cluster.nodes)} nodes). Every tether command with "
          f"TETHER_HOME={tether_home(args.home)} uses it; elsewhere set\n"
          f"  TETHER_NATS_URL={cluster.url}\n"
          "`tether cluster down` stops it.")
    return 0


def _include(path: str) -> str:
    """The text of ``path``, added to each node's configuration (nats-server's ``include`` takes
    paths relative to the including file only)."""
    with open(path, encoding="utf-8") as f:
        return f.read()


async def _status(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    nodes = [{"name": n.name, "pid": n.pid if n.running else None, "url": n.url, "running": n.running,
              "healthy": n.running and await asyncio.to_thread(n.healthy)} for n in cluster.nodes]
    leaders: dict[str, Any] = {}
    live = [n.url for n in cluster.nodes if n.running]
    if live:
        leaders = await _leaders(",".join(live), args)
    if args.json:
        print(json.dumps({"directory": str(cluster.directory), "nodes": nodes, "streams": leaders}, indent=2))
    else:
        s = Style()
        for n in nodes:
            state = s.green("healthy") if n["healthy"] else (s.yellow("running") if n["running"] else s.red("down"))
            print(f"  {n['name']}: {state}  {n['url']}" + (f"  pid {n['pid']}" if n["pid"] else ""))
        for name, info in leaders.items():
            print(f"  {name}: leader {info['leader']}, replicas {info['replicas']}")
    return 0 if nodes and all(n["healthy"] for n in nodes) else 1


async def _leaders(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Which node leads each stream (KV buckets and the object store are streams too)."""
    from tether.bus import BusUnavailable, connect

    try:
        bus = await connect(url, home=args.home, embedded=False, provision=False, connect_attempts=1)
    except BusUnavailable:
        return {}
    try:
        found: dict[str, Any] = {}
        for si in await bus.js.streams_info():
            cl = si.cluster
            found[si.config.name or "?"] = {"leader": cl.leader if cl else None, "replicas": si.config.num_replicas}
        return found
    finally:
        await bus.close()
