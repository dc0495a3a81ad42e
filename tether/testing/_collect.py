"""Read back what is in the log, for assertions."""

from __future__ import annotations

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tether.bus import EVENT_SUBJECTS, EVENTS_STREAM, Bus, ReadResult

__all__ = ["collect"]


async def collect(bus: Bus, subject: str = EVENT_SUBJECTS, *,
                  stream: str = EVENTS_STREAM) -> list[ReadResult]:
    """Every message now stored in ``stream`` on ``subject``, in stream order, decoded.

    Invalid messages are included with their error, so tests can assert on them too.
    """
    sub = await bus.js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                              inactive_threshold=30.0),
    )
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        out: list[ReadResult] = []
        while remaining > 0:
            msgs = await sub.fetch(min(remaining, 500), timeout=5)
            for m in msgs:
                out.append(await bus.reader.read_safe(m.subject, m.headers, m.data,
                                                      m.metadata.sequence.stream))
            remaining -= len(msgs)
        return out
    finally:
        await sub.unsubscribe()
