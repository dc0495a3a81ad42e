"""pydantic-ai agents (one tool, two model calls; and one that asks another agent from a tool) run
by .venv-pydantic-ai's python, one scenario after another in one process:
tests/frameworks/test_pydantic_ai.py.

The two lines a user adds are marked. The model is the fake provider (``OPENAI_BASE_URL``: each
scenario sets its faults there first and reads back what reached it), the bus ``TETHER_NATS_URL``,
the policies ``tether.toml`` in the working directory (the agent ``budget-bot`` may make one
call). Prints one JSON line: per scenario, what the agent gave or raised and the upstream requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from typing import Any

from pydantic_ai import Agent

import tether
import tether.adapters
from tether.adapters.pydantic_ai import capability, model
from tether.memory import AsyncMemory

FAKE = os.environ["OPENAI_BASE_URL"].removesuffix("/v1")
REMEMBER = "Weather in Paris: the user wants degrees Celsius."


def fake(path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(f"{FAKE}/_fake/{path}", method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


def get_forecast(city: str) -> str:
    """The forecast for a city."""
    raise ValueError(f"no forecast for {city}")


def agent(name: str, tools: list[Any], memory: Any = None) -> Agent[None, str]:
    return Agent(model("gpt-4o-mini"),  # line 1: the model's requests under tether's policy
                 name=name, instructions="Answer about the weather.", tools=tools,
                 capabilities=[capability(memory, namespaces="agent:weather-bot", token_budget=200)])  # line 2


async def ask_forecaster(city: str) -> str:
    """Ask the forecaster agent about a city."""
    result = await agent("forecaster", []).run(f"The weather in {city}?")
    return result.output


async def scenario(name: str, faults: str, *, agent_name: str = "weather-bot",
                   tools: list[Any] | None = None, memory: Any = None) -> dict[str, Any]:
    fake("faults", {"spec": faults})
    before = fake("log")["total"]
    out: dict[str, Any] = {}
    try:
        result = await agent(agent_name, [get_weather] if tools is None else tools, memory).run(
            "What is the weather in Paris?")
        out.update(ok=True, answer=result.output, messages=len(result.all_messages()))
    except Exception as exc:  # what pydantic-ai raised, as the agent's code sees it
        out.update(ok=False, error=f"{type(exc).__module__}.{type(exc).__name__}", message=str(exc)[:500],
                   status=getattr(exc, "status_code", None))
    out["upstream"] = [r["outcome"] for r in fake("log")["requests"][before:]]
    return out


async def main() -> dict[str, Any]:
    said: dict[str, Any] = {"installed": tether.init()}
    said["faults"] = await scenario("faults", "500#1/chat,503#3/chat")
    said["persistent"] = await scenario("persistent", "429/chat")
    said["budget"] = await scenario("budget", "", agent_name="budget-bot")
    said["tool_error"] = await scenario("tool_error", "", agent_name="forecast-bot", tools=[get_forecast])
    said["sub_agent"] = await scenario("sub_agent", "", agent_name="triage", tools=[ask_forecaster])
    bus = await tether.connect()
    memory = await AsyncMemory(bus, agent="weather-bot").start()
    written = await memory.write("agent:weather-bot", REMEMBER, key="home-city")
    await memory.wait_for(written.seq)
    said["memory"] = await scenario("memory", "", agent_name="remembering-bot", memory=memory)
    await memory.close()
    await bus.close()
    try:
        model("anthropic:claude-sonnet-4-5")
        said["refused"] = "accepted"
    except ValueError as exc:
        said["refused"] = str(exc)
    await asyncio.to_thread(tether.adapters.flush)
    return said


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
