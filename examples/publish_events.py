"""Publish a small agent run to tether's log and read it back.

Run it with ``.venv/bin/python examples/publish_events.py``: with no ``TETHER_NATS_URL``
it starts the embedded nats-server under ``./.tether`` (or reuses the one ``tether up``
runs), publishes five events and prints what the log now holds for that run.
"""

import asyncio

import tether
from tether.bus import event_filter
from tether.schemas import (
    Event,
    LlmCallCompleted,
    RunFinished,
    RunStarted,
    ToolCallCompleted,
    Usage,
    uuid7,
)
from tether.testing import collect


async def main() -> None:
    run = f"example-{uuid7()}"
    async with await tether.connect() as bus:
        # publish(): waits for the stream's ack (or the local outbox), at most ack_timeout_s.
        await bus.publish(Event.of(RunStarted(name="example"), runid=run, agentid="example-agent"))

        # emit(): many in flight at once; flush() makes them durable.
        for payload in (
            LlmCallCompleted(call_id="c1", provider="openai", model="gpt-4o-mini",
                             usage=Usage(input_tokens=120, output_tokens=30)),
            ToolCallCompleted(call_id="t1", tool="web_search", result={"hits": 3}),
            # Untyped data (say, JSON from another language) is validated the same way:
            Event.create("tether.memory.written",
                         {"namespace": "agent:example-agent", "key": "fact", "version": 1,
                          "text": "NATS dedupes on Nats-Msg-Id"}).data,
            RunFinished(status="ok", duration_ms=42.0),
        ):
            await bus.emit(Event.of(payload, runid=run, agentid="example-agent"))
        await bus.flush()

        for result in await collect(bus, event_filter(run=run)):
            assert result.event is not None
            print(result.stream_seq, result.subject, result.event.type)


if __name__ == "__main__":
    asyncio.run(main())
