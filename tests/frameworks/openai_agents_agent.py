"""An OpenAI Agents SDK agent with one tool and a handoff, run by .venv-openai-agents's python
(tests/frameworks/test_openai_agents.py).

The two lines a user adds are marked. The model is the fake provider (``OPENAI_BASE_URL``), the bus
``TETHER_NATS_URL``, the policies ``tether.toml`` in the working directory. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from agents import Agent, RunConfig, Runner, function_tool, set_trace_processors

import tether
import tether.adapters
from tether.adapters.openai_agents import TetherSession, memory_filter, use_default_client
from tether.memory import AsyncMemory


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


async def main(session_id: str, question: str, remember: str | None, handoff: bool,
               memory_for: list[str] | None, resume: str | None = None) -> dict[str, Any]:
    set_trace_processors([])  # no export of traces to OpenAI from a test (tether's processor comes after)
    installed = tether.init()  # line 1: runs, handoffs and tool calls of every agent run
    use_default_client()  # line 2: the SDK's model calls under tether's policy, its retries off
    bus = await tether.connect()
    memory = None
    config = RunConfig()
    if remember:
        memory = await AsyncMemory(bus, agent="weather-bot").start()
        written = await memory.write("agent:weather-bot", remember, key="home-city")
        await memory.wait_for(written.seq)
        config = RunConfig(call_model_input_filter=memory_filter(memory, agents=memory_for,
                                                                 namespaces="agent:weather-bot", token_budget=200))
    weather = Agent(name="weather-bot", instructions="Answer about the weather.", tools=[get_weather])
    agent = Agent(name="triage", instructions="Hand off to the weather agent.", handoffs=[weather]) if handoff \
        else weather
    session = TetherSession(session_id, bus)
    out: dict[str, Any] = {"installed": installed, "restored": len(await session.get_items())}
    try:
        if resume:  # the agent's run inside a run of the user's, started again after a crash
            async with tether.run(run_id=resume, resume=True, bus=bus):
                result = await Runner.run(agent, question, session=session, run_config=config)
        else:
            result = await Runner.run(agent, question, session=session, run_config=config)
        out.update(ok=True, answer=str(result.final_output), last_agent=result.last_agent.name)
    except Exception as exc:  # what the framework raised, as the agent's code sees it
        out.update(ok=False, error=f"{type(exc).__module__}.{type(exc).__name__}", message=str(exc)[:500],
                   kinds=[f"{k.__module__}.{k.__name__}" for k in type(exc).__mro__])
    out["items"] = [item.get("type") or item.get("role") for item in await session.get_items()]
    if memory is not None:
        await memory.close()
    await bus.close()
    await asyncio.to_thread(tether.adapters.flush)
    return out


if __name__ == "__main__":
    argv = sys.argv[1:]
    only = [a.removeprefix("--memory-for=") for a in argv if a.startswith("--memory-for=")]
    resumed = next((a.removeprefix("--resume=") for a in argv if a.startswith("--resume=")), None)
    print(json.dumps(asyncio.run(main(argv[0], argv[1], argv[2] or None if len(argv) > 2 else None,
                                      "--handoff" in argv, only or None, resumed))))
