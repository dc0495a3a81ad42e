"""A small projection for runtime tests: every merge rule, and counts that expose double application."""

from __future__ import annotations

from collections.abc import Iterable

from tether.projections import Delete, Op, Projection, Table, Upsert
from tether.schemas import Event


class Toy(Projection):
    name = "toy"
    version = 1
    tables = (
        Table("by_type", {"type": "TEXT", "n": "INTEGER", "first_seq": "INTEGER", "last_seq": "INTEGER"},
              key=("type",)),
        Table("runs", {"run": "TEXT", "agent": "TEXT", "events": "INTEGER", "first_seen": "TEXT", "last_type": "TEXT"},
              key=("run",), indexes=(("agent",),)),
        Table("calls", {"call_id": "TEXT", "run": "TEXT", "state": "TEXT"}, key=("call_id",)),
    )

    def apply(self, event: Event, seq: int) -> Iterable[Op]:
        if event.type == "tether.tool.call.failed" and getattr(event.data, "tool", "") == "explode":
            raise ValueError("this fold cannot take exploding tools")
        yield Upsert("by_type", {"type": event.type, "n": 1, "first_seq": seq, "last_seq": seq},
                     {"n": "add", "first_seq": "min", "last_seq": "max"})
        if event.runid:
            yield Upsert("runs", {"run": event.runid, "agent": event.agentid, "events": 1,
                                  "first_seen": event.time.isoformat(), "last_type": event.type},
                         {"events": "add", "agent": "keep", "first_seen": "min"})
        call_id = getattr(event.data, "call_id", None)
        if call_id and event.type.endswith("requested"):
            yield Upsert("calls", {"call_id": call_id, "run": event.runid, "state": "requested"},
                         {"state": "keep"})
        elif call_id and event.type.endswith("completed"):
            yield Upsert("calls", {"call_id": call_id, "run": event.runid, "state": "completed"})
        elif call_id and event.type == "tether.call.redriven":
            yield Delete("calls", {"call_id": call_id})


class ToyV2(Toy):
    version = 2


class Brittle(Toy):
    """Toy, whose notifications break on a ``crash-the-fold`` run: an error outside the
    per-event guard, which stops the fold itself (after the batch is committed)."""

    name = "brittle"

    def notify_key(self, op: Op) -> str | None:
        if isinstance(op, Upsert) and op.values.get("run") == "crash-the-fold":
            raise RuntimeError("notifications broke")
        return super().notify_key(op)
