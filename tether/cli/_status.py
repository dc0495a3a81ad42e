"""``tether status``: the server, the streams and their consumers, the outbox and the views at a glance."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from tether.bus import BusUnavailable, connect, outbox_depth, set_aside, tether_home

from ._format import Style
from ._process import bus_config

__all__ = ["run_status"]


def _print_set_aside(s: Style, entries: list[dict[str, Any]], total: int) -> None:
    """The events set aside in the outbox (NATS can never accept them), newest first, with why."""
    for r in entries:
        print(s.yellow(f"  set aside {r['id']} on {r['subject']!r} ({r['file']}): {r['error']}"))
    if total > len(entries):
        print(s.yellow(f"  ... and {total - len(entries)} more (tether status --json lists the newest)"))


async def run_status(args: argparse.Namespace) -> int:
    s = Style()
    cfg = bus_config(args, embedded=False, provision=False)
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
