"""``tether auth init | service | agent``: NATS credentials the server enforces, per agent.

The realm (operator, account, their seeds) lives in ``TETHER_HOME/auth``; see docs/cluster.md."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tether.bus import Realm, agent_permissions, tether_home

__all__ = ["add_commands", "run"]


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "auth", help="per-agent NATS credentials the server enforces (init, service, agent)",
        description="NATS decentralized auth for tether: `init` makes an operator and an account (their keys in "
        "TETHER_HOME/auth, and server.conf for nats-server: `tether cluster up --auth` uses it); `service` "
        "issues credentials for tether's own processes; `agent NAME` issues credentials confining an agent to "
        "its own events and the memory namespaces it is granted. Docs: docs/cluster.md.")
    p.set_defaults(print_help=p.print_help)
    actions = p.add_subparsers(dest="auth_command", metavar="ACTION")
    init = actions.add_parser("init", help="make the operator and account keys and server.conf (once)")
    common(init)
    service = actions.add_parser("service", help="credentials for tether's workers, projector and gateway")
    common(service)
    service.add_argument("--name", default="tether", help="the identity's name (default tether)")
    agent = actions.add_parser("agent", help="credentials confining one agent")
    common(agent)
    agent.add_argument("agent", metavar="NAME", help="the agent id (as in its events and gateway key)")
    agent.add_argument("--write", action="append", default=[], metavar="NAMESPACE",
                       help="a memory namespace it may write (repeat; its own is agent:NAME)")
    agent.add_argument("--read", action="append", default=[], metavar="NAMESPACE",
                       help="a memory namespace it may read (repeat)")
    agent.add_argument("--gateway-key", action="store_true",
                       help="also print a new gateway key for the same agent, for [gateway.keys] in tether.toml")


async def run(args: argparse.Namespace) -> int:
    from tether.bus import AuthUnavailable

    if args.auth_command is None:
        args.print_help()
        return 2
    directory = tether_home(args.home) / "auth"
    try:
        if args.auth_command == "init":
            existing = Realm.load(directory)
            if existing is not None:
                print(f"tether auth: a realm exists in {directory} (account {existing.account.public}); "
                      "kept as it is")
                return 0
            made = Realm.create(directory)
            print(f"made operator {made.operator.public} and account {made.account.public} in {directory}\n"
                  f"  nats-server configuration: {made.server_conf} (`tether cluster up --auth` includes it)\n"
                  "next: `tether auth service` for tether's processes, `tether auth agent NAME` for each agent")
            return 0
        realm = Realm.load(directory)
        if realm is None:
            print(f"tether auth: no realm in {directory}: run `tether auth init` first", file=sys.stderr)
            return 2
        if args.auth_command == "service":
            path = realm.service(args.name)
            print(f"wrote {path}: the whole TETHER account, for tether's own processes\n"
                  f"  TETHER_NATS_CREDS={path}")
            return 0
        path = realm.agent(args.agent, writes=args.write, reads=args.read)
        perms = agent_permissions(args.agent, writes=args.write, reads=args.read)
        print(f"wrote {path}: agent {args.agent} may publish")
        for subject in perms.publish:
            print(f"    {subject}")
        print("  and subscribe to")
        for subject in perms.subscribe:
            print(f"    {subject}")
        print(f"  TETHER_NATS_CREDS={path}")
        if args.gateway_key:
            from ._gateway import new_key

            print(f'  gateway key for the same agent, in tether.toml:\n    [gateway.keys]\n    "{new_key()}" = '
                  f'"{args.agent}"')
        return 0
    except AuthUnavailable as exc:
        print(f"tether auth: {exc}", file=sys.stderr)
        return 1
