"""``tether tail``: the event log live, one line (or one CloudEvents JSON document) per event."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from tether.bus import connect, event_filter

from ._format import Style, result_line
from ._process import bus_config, wait_for_signal

__all__ = ["run_tail"]


async def run_tail(args: argparse.Namespace) -> int:
    from nats.js.api import ConsumerConfig, DeliverPolicy

    s = Style()
    bus = await connect(config=bus_config(args, embedded=False, provision=False))
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
        stop = asyncio.create_task(wait_for_signal())
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
