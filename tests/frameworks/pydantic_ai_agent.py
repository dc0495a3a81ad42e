"""pydantic-ai agents (one tool, two model calls; and one that asks another agent from a tool) run
by .venv-pydantic-ai's python, one scenario after another in one process:
tests/frameworks/test_pydantic_ai.py. Then tools under tether's tool policy (a timeout, an
idempotent tool retried, a resumed run whose tool call is replayed: each tool counts its
executions) and a conversation kept in ``MessageHistory``; with ``--continue`` (a second process,
after NATS restarted), only that conversation's next turn.

The two lines a user adds are marked. The model is the fake provider (``OPENAI_BASE_URL``: each
scenario sets its faults there first and reads back what reached it), the bus ``TETHER_NATS_URL``,
the policies ``tether.toml`` in the working directory (the agent ``budget-bot`` may make one
call). Prints one JSON line: per scenario, what the agent gave or raised and the upstream requests.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from typing import Any

from _scenario import faults as set_faults
from _scenario import outcomes, received
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessagesTypeAdapter

import tether
import tether.adapters
from tether.adapters.pydantic_ai import MessageHistory, capability, model
from tether.memory import AsyncMemory

REMEMBER = "Weather in Paris: the user wants degrees Celsius."
RAN: Counter[str] = Counter()


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


def get_forecast(city: str) -> str:
    """The forecast for a city."""
    raise ValueError(f"no forecast for {city}")


async def slow_lookup(city: str) -> str:
    """The weather in a city (slow)."""
    RAN["slow_lookup"] += 1
    await asyncio.sleep(5)
    return f"It is sunny in {city}."


async def flaky_lookup(city: str) -> str:
    """The weather in a city (its first call hangs)."""
    RAN["flaky_lookup"] += 1
    if RAN["flaky_lookup"] == 1:
        await asyncio.sleep(5)
    return f"It is cloudy in {city}."


def counted_lookup(city: str) -> str:
    """The weather in a city (counted)."""
    RAN["counted_lookup"] += 1
    return f"It is windy in {city}."


def agent(name: str, tools: list[Any], memory: Any = None, **options: Any) -> Agent[None, str]:
    return Agent(model("gpt-4o-mini"),  # line 1: the model's requests under tether's policy
                 name=name, instructions="Answer about the weather.", tools=tools,
                 capabilities=[capability(memory, namespaces="agent:weather-bot", token_budget=200,  # line 2
                                          **options)])


async def ask_forecaster(city: str) -> str:
    """Ask the forecaster agent about a city."""
    result = await agent("forecaster", []).run(f"The weather in {city}?")
    return result.output


async def scenario(name: str, faults: str, *, agent_name: str = "weather-bot", tools: list[Any] | None = None,
                   memory: Any = None, resume: str | None = None, **options: Any) -> dict[str, Any]:
    set_faults(faults)
    before = received()
    out: dict[str, Any] = {}
    try:
        bot = agent(agent_name, [get_weather] if tools is None else tools, memory, **options)
        if resume:  # the agent's run inside a run of the user's, opened with resume=True
            async with tether.run(run_id=resume, resume=True):
                result = await bot.run("What is the weather in Paris?")
        else:
            result = await bot.run("What is the weather in Paris?")
        out.update(ok=True, answer=result.output, messages=len(result.all_messages()), ran=dict(RAN),
                   tool_returns=[part.content for message in result.new_messages() for part in message.parts
                                 if part.part_kind in ("tool-return", "retry-prompt")])
    except Exception as exc:  # what pydantic-ai raised, as the agent's code sees it
        out.update(ok=False, error=f"{type(exc).__module__}.{type(exc).__name__}", message=str(exc)[:500],
                   status=getattr(exc, "status_code", None), ran=dict(RAN))
    out["upstream"] = outcomes(before)
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
    said["tool_timeout"] = await scenario("tool_timeout", "", agent_name="slow-bot", tools=[slow_lookup],
                                          timeout_s=0.3)
    said["tool_retried"] = await scenario("tool_retried", "", agent_name="flaky-bot", tools=[flaky_lookup],
                                          timeout_s=0.3, idempotent={"flaky_lookup"})
    # the second model call fails past tether's three attempts, after the tool call; then resumed
    said["crashed"] = await scenario("crashed", "500#2-4/chat", agent_name="resume-bot", tools=[counted_lookup],
                                     resume="job-pai")
    said["resumed"] = await scenario("resumed", "", agent_name="resume-bot", tools=[counted_lookup],
                                     resume="job-pai")
    said["history"] = await converse(bus, "What is the weather in Paris?")
    await bus.close()
    try:
        model("anthropic:claude-sonnet-4-5")
        said["refused"] = "accepted"
    except ValueError as exc:
        said["refused"] = str(exc)
    await asyncio.to_thread(tether.adapters.flush)
    return said


def dump(messages: list[Any]) -> Any:
    return ModelMessagesTypeAdapter.dump_python(messages, mode="json")


async def converse(bus: Any, prompt: str) -> dict[str, Any]:
    """One turn of the conversation ``conv-1``, its history read from tether and the new messages added."""
    history = MessageHistory("conv-1", bus)
    before = await history.load()
    result = await agent("history-bot", [get_weather]).run(prompt, message_history=before)
    await history.append(result.new_messages())
    kept = await history.load()
    return {"restored": len(before), "kept": len(kept), "same": dump(kept) == dump(result.all_messages()),
            "first_prompt": next(part.content for part in kept[0].parts if part.part_kind == "user-prompt")}


async def next_turn() -> dict[str, Any]:
    """The conversation's next turn, in a new process."""
    tether.init()
    bus = await tether.connect()
    said = {"history": await converse(bus, "And in Lisbon?")}
    history = MessageHistory("conv-1", bus)
    await history.clear()
    said["history"]["cleared"] = len(await history.load())
    await bus.close()
    await asyncio.to_thread(tether.adapters.flush)
    return said


if __name__ == "__main__":
    print(json.dumps(asyncio.run(next_turn() if "--continue" in sys.argv else main())))
