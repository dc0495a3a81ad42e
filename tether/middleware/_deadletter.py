"""Reading, redriving and purging the DLQ stream.

Each dead letter is one message on ``tether.dlq.<kind>.<provider|tool>`` holding the
original work item, every attempt and the final error. Redriving resubmits the work
item under a new call id with a fresh attempt budget, records ``call.redriven`` linking
the two, and removes the dead letter; the log keeps the whole story.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tether.bus import DLQ_STREAM, Bus
from tether.schemas import CallRedriven, Event, uuid7

from ._engine import terminal_id
from ._work import WorkItem, work_subject

__all__ = ["DeadLetter", "DeadLetterError", "list_dead_letters", "match", "purge", "redrive"]

FILTER_KEYS = ("reason", "kind", "route", "error", "call_id")


class DeadLetterError(LookupError):
    """No such dead letter, or one that cannot be redriven."""


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    call_id: str
    reason: str
    kind: str
    route: str
    error_type: str
    error_message: str
    attempts: int
    dead_lettered_at: float
    doc: Mapping[str, Any]

    def summary(self) -> dict[str, Any]:
        return {"seq": self.seq, "call_id": self.call_id, "reason": self.reason, "kind": self.kind,
                "route": self.route, "error": f"{self.error_type}: {self.error_message}",
                "attempts": self.attempts, "dead_lettered_at": self.dead_lettered_at}


def _parse(seq: int, data: bytes) -> DeadLetter:
    try:
        doc = json.loads(data)
    except ValueError:
        doc = {"call_id": f"unreadable-{seq}", "reason": "malformed", "raw": data.decode(errors="replace")}
    err = doc.get("error") or {}
    return DeadLetter(seq=seq, call_id=str(doc.get("call_id")), reason=str(doc.get("reason")),
                      kind=str(doc.get("kind", "unknown")), route=str(doc.get("route", "")),
                      error_type=str(err.get("type", "")), error_message=str(err.get("message", "")),
                      attempts=len(doc.get("attempts") or []),
                      dead_lettered_at=float(doc.get("dead_lettered_at") or 0.0), doc=doc)


def parse_filters(pairs: Iterable[str]) -> dict[str, str]:
    """``["reason=exhausted", "route=openai:gpt-4o"]`` → a filter dict; clear error otherwise."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in FILTER_KEYS:
            raise ValueError(f"bad filter {pair!r}: use KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}")
        out[key] = value
    return out


def match(dl: DeadLetter, filters: Mapping[str, str]) -> bool:
    for key, want in filters.items():
        have = {"reason": dl.reason, "kind": dl.kind, "route": dl.route, "call_id": dl.call_id,
                "error": dl.error_type}[key]
        if want.endswith("*") and have.startswith(want[:-1]):
            continue
        if have != want:
            return False
    return True


async def list_dead_letters(bus: Bus, filters: Mapping[str, str] | None = None) -> list[DeadLetter]:
    """Every dead letter now in the DLQ stream (oldest first), optionally filtered."""
    sub = await bus.js.pull_subscribe(
        "tether.dlq.>", stream=DLQ_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0))
    out: list[DeadLetter] = []
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        while remaining > 0:
            msgs = await sub.fetch(min(remaining, 500), timeout=5)
            for m in msgs:
                out.append(_parse(m.metadata.sequence.stream, m.data))
            remaining -= len(msgs)
    finally:
        await sub.unsubscribe()
    return [d for d in out if match(d, filters or {})]


async def get_dead_letter(bus: Bus, ident: str) -> DeadLetter:
    """By call id, or by DLQ stream sequence."""
    if ident.isdigit():
        try:
            msg = await bus.js.get_msg(DLQ_STREAM, int(ident))
            return _parse(int(ident), msg.data or b"")
        except Exception:
            pass
    for dl in await list_dead_letters(bus, {"call_id": ident}):
        return dl
    raise DeadLetterError(f"no dead letter {ident!r} (see `tether dlq ls`)")


async def redrive(bus: Bus, dl: DeadLetter) -> str:
    """Resubmit a dead letter as a new call (fresh attempt budget). Returns the new call id."""
    raw_item = dl.doc.get("item")
    if not raw_item:
        raise DeadLetterError(f"dead letter {dl.call_id} ({dl.reason}) has no work item to redrive: "
                              "fix its producer and submit it again")
    old = WorkItem.model_validate(raw_item)
    now = time.time()
    budget = (old.deadline_at - old.submitted_at) if old.deadline_at else None
    new_id = uuid7()
    # A streamed call's caller is gone: the redrive runs without a relay, its answer in the log.
    item = old.model_copy(update={"call_id": new_id, "redrive_of": old.call_id, "reply_to": None, "relay": None,
                                  "submitted_at": now, "deadline_at": now + budget if budget else None})
    await bus.publish(Event.of(CallRedriven(call_id=old.call_id, new_call_id=new_id, dlq_seq=dl.seq),
                               id=terminal_id(old.call_id, f"redriven/{new_id}"), runid=old.runid,
                               agentid=old.agentid, source="urn:tether:dlq"))
    from ._calls import DurableCalls

    await DurableCalls(bus).submit(item)
    await bus.js.delete_msg(DLQ_STREAM, dl.seq)
    return new_id


async def purge(bus: Bus, letters: Iterable[DeadLetter]) -> int:
    n = 0
    for dl in letters:
        await bus.js.delete_msg(DLQ_STREAM, dl.seq)
        n += 1
    return n


__all__ += ["get_dead_letter", "parse_filters", "work_subject"]
