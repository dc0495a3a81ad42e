"""An openai client under tether: retries it owns, a streamed answer, a tool, one run, every step logged.

Run it with ``.venv/bin/python examples/instrument_openai.py``. It starts tether's fake
provider with a scripted rate limit and a server error (in production the base URL is the
real one), instruments a plain ``openai.AsyncOpenAI`` client, and prints the events of the
run and the conversation read back from them.
"""

import asyncio
import json

import openai

import tether
from tether.adapters import Hub, conversation
from tether.bus import event_filter
from tether.testing import FakeProvider, collect

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Today's weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


async def main() -> None:
    async with FakeProvider(seed=1, faults="429(0.2s)#1,500#3") as fake, await tether.connect() as bus:
        client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="sk-example-key"), bus=bus)

        @tether.tool(bus=bus, idempotent=True)
        def get_weather(city: str) -> dict[str, str]:
            return {"city": city, "weather": "sunny", "celsius": "24"}

        messages: list[dict[str, object]] = [{"role": "user", "content": "What's the weather in Lisbon?"}]
        async with client, tether.run(agent="weather-bot", bus=bus, name="example") as run:
            # 1. A rate limit (429, Retry-After 0.2 s): tether waits and retries; the SDK does not.
            first = await client.chat.completions.create(model="gpt-4o-mini", messages=messages,  # type: ignore[arg-type]
                                                         tools=TOOLS)  # type: ignore[arg-type]
            call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
            result = get_weather(**json.loads(call.function.arguments))  # type: ignore[union-attr]
            print(f"tool call: {call.function.name}({call.function.arguments}) -> {result}")  # type: ignore[union-attr]
            messages += [first.choices[0].message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]
            # 2. A server error before the first byte of a stream: retried before the caller sees anything.
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=messages,  # type: ignore[arg-type]
                                                          stream=True)
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
            print(f"streamed answer: {text[:60]}...")
            run.output = text

        await Hub.of(bus).flush()
        events = [r.event for r in await collect(bus, event_filter(run=run.run_id)) if r.event is not None]
        print(f"\nrun {run.run_id}: {len(events)} events")
        for event in events:
            d = event.data
            detail = ""
            if event.type.endswith("attempt_failed"):
                detail = f"{d.error.type} {d.error.status_code} -> {d.decision} in {d.retry_in_s:.2f}s"  # type: ignore[attr-defined]
            elif event.type == "tether.llm.call.completed":
                ttft = f", first token {d.ttft_ms:.1f} ms" if d.ttft_ms else ""  # type: ignore[attr-defined]
                detail = (f"attempt {d.attempt}, {d.usage.input_tokens} in / {d.usage.output_tokens} out "  # type: ignore[attr-defined]
                          f"tokens, {d.latency_ms:.1f} ms{ttft}")  # type: ignore[attr-defined]
            elif event.type == "tether.run.finished":
                detail = f"{d.status} in {d.duration_ms:.0f} ms"  # type: ignore[attr-defined]
            print(f"  {event.type:34} {detail}")
        retries = {r.retry_count for r in fake.log}
        print(f"\nprovider saw {len(fake.log)} requests, SDK retry counts {sorted(retries)} (tether owned the retries)")
        print("\nconversation, read back from the log:")
        for message in conversation(events):
            content = message.get("content") or message.get("tool_calls") or ""
            print(f"  [{message['source']:8}] {message.get('role', '?'):9} {str(content)[:70]}")
        assert retries == {0}


if __name__ == "__main__":
    asyncio.run(main())
