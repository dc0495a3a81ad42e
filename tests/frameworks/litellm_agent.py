"""LiteLLM calls (an agent loop of two model calls with one tool, sync and async, streamed and not)
run by .venv-litellm's python, one scenario after another in one process:
tests/frameworks/test_litellm.py.

The line a user adds is marked. The model is the fake provider (``OPENAI_BASE_URL``: each scenario
sets its faults there first and reads back what reached it), the bus ``TETHER_NATS_URL``, the
policies ``tether.toml`` in the working directory (the agent ``budget-bot`` may make one call).
Prints one JSON line: per scenario, what LiteLLM gave or raised and the upstream requests. The
route of ``gpt-4o`` has tether's response cache on: the same question asked in two runs is sent once.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from _scenario import faults as set_faults
from _scenario import outcomes, received

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its price list as shipped: no fetch at import

import httpx
import litellm

import tether
import tether.adapters
from tether.adapters.litellm import route

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


async def agent(mode: str, **options: Any) -> str:
    """Ask, run the tool the model asks for, ask again: two model calls (``cached``: one question, twice)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]
    if mode == "cached":
        answers = []
        for _ in range(2):
            async with tether.run(agent="cached-bot"):
                reply = await litellm.acompletion(model="openai/gpt-4o", messages=messages, temperature=0)
            answers.append(str(reply.choices[0].message.content))
        return json.dumps(answers)
    for _ in range(2):
        if mode == "async":
            reply = await litellm.acompletion(model="openai/gpt-4o-mini", messages=messages, tools=TOOLS, **options)
        elif mode == "stream":
            chunks = [c async for c in await litellm.acompletion(model="openai/gpt-4o-mini", messages=messages,
                                                                  tools=TOOLS, stream=True, **options)]
            reply = litellm.stream_chunk_builder(chunks, messages=messages)
        else:
            reply = await asyncio.to_thread(litellm.completion, model="openai/gpt-4o-mini", messages=messages,
                                            tools=TOOLS, **options)
        message = reply.choices[0].message
        if not message.tool_calls:
            return str(message.content)
        messages.append(message.model_dump())
        for call in message.tool_calls:
            city = json.loads(call.function.arguments)["city"]
            messages.append({"role": "tool", "tool_call_id": call.id, "content": f"It is sunny in {city}."})
    return "no answer"


async def scenario(name: str, faults: str, *, mode: str = "async", agent_name: str = "weather-bot",
                   **options: Any) -> dict[str, Any]:
    set_faults(faults)
    before = received()
    out: dict[str, Any] = {}
    try:
        async with tether.run(agent=agent_name, name=name):
            out.update(ok=True, answer=await agent(mode, **options))
    except Exception as exc:  # what LiteLLM raised, as the agent's code sees it
        out.update(ok=False, error=f"{type(exc).__module__}.{type(exc).__name__}", message=str(exc)[:500])
    out["upstream"] = outcomes(before)
    return out


async def main() -> dict[str, Any]:
    litellm.num_retries = 2  # set by the application: tether unsets it (its retries would multiply tether's)
    installed = tether.init()  # the line: every LiteLLM call under tether's policy
    said: dict[str, Any] = {"installed": installed, "again": tether.init(), "num_retries": litellm.num_retries}
    said["async"] = await scenario("async", "500#1/chat,503#3/chat")
    said["sync"] = await scenario("sync", "500#1/chat,503#3/chat", mode="sync")
    said["stream"] = await scenario("stream", "500#1/chat", mode="stream")
    said["persistent"] = await scenario("persistent", "429/chat")
    said["budget"] = await scenario("budget", "", agent_name="budget-bot")
    said["cached"] = await scenario("cached", "", mode="cached")
    said["sessions"] = [type(s._transport).__name__ for s in (litellm.client_session, litellm.aclient_session)]
    said["upstream_transport"] = type(litellm.aclient_session._transport.wrapped).__name__  # what tether sends on
    ours, litellm.client_session = litellm.client_session, httpx.Client()  # the application's own
    try:
        route()
        said["refused"] = "accepted"
    except ValueError as exc:
        said["refused"] = str(exc)
    said["kept"] = type(litellm.client_session._transport).__name__
    litellm.client_session = ours
    await asyncio.to_thread(tether.adapters.flush)
    return said


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
