"""Reading events back from the log for evaluation: a run's events, an agent's runs, the eval events."""

from __future__ import annotations

from datetime import datetime

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tether.bus import EVENTS_STREAM, Bus, event_filter
from tether.schemas import Event, RunFinished, RunStarted

from ._trace import RunTrace

__all__ = ["EVAL_SUBJECTS", "read_events", "read_run", "runs_matching"]

EVAL_SUBJECTS = event_filter(kind="eval")


async def read_events(bus: Bus, subject: str, *, after: int = 0) -> list[tuple[int, Event | None, str | None]]:
    """Every message on ``subject`` stored after sequence ``after``, in log order: (seq, event,
    or None and why not)."""
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0,
                            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
                            opt_start_seq=after + 1 if after else None)
    sub = await bus.js.pull_subscribe(subject, stream=EVENTS_STREAM, config=config)
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        out: list[tuple[int, Event | None, str | None]] = []
        while remaining > 0:
            msgs = await sub.fetch(min(remaining, 500), timeout=5)
            for m in msgs:
                got = await bus.reader.read_safe(m.subject, m.headers, m.data, m.metadata.sequence.stream)
                out.append((m.metadata.sequence.stream, got.event, None if got.error is None else str(got.error)))
            remaining -= len(msgs)
        return out
    finally:
        await sub.unsubscribe()


async def read_run(bus: Bus, run_id: str) -> RunTrace:
    """The trace of a recorded run, from its events in the log."""
    events = [e for _, e, _ in await read_events(bus, event_filter(run=run_id)) if e is not None]
    return RunTrace.of(run_id, events)


async def runs_matching(bus: Bus, *, agent: str | None = None, status: str | None = None,
                        since: datetime | None = None) -> list[str]:
    """Run ids of ``agent`` (any agent: None) that started at or after ``since`` and finished with
    ``status`` (``ok``, ``error``, ``cancelled``; any: None), in the order they started."""
    started: dict[str, datetime] = {}
    finished: dict[str, str] = {}
    for _, event, _ in await read_events(bus, event_filter(agent=agent, kind="run")):
        if event is None or event.runid is None:
            continue
        if isinstance(event.data, RunStarted):
            started.setdefault(event.runid, event.time)
        elif isinstance(event.data, RunFinished):
            finished[event.runid] = event.data.status
    return [run for run, when in started.items()
            if (since is None or when >= since) and (status is None or finished.get(run) == status)]
