"""A LangGraph agent with one tool, run by .venv-langgraph's python (tests/frameworks/test_langgraph.py).

The two lines a user adds are marked. The model is the fake provider (``OPENAI_BASE_URL``), the bus
``TETHER_NATS_URL``, the policies ``tether.toml`` in the working directory. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import warnings
from typing import Any

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

with warnings.catch_warnings():  # create_react_agent: deprecated in favour of langchain's create_agent
    warnings.simplefilter("ignore")
    from langgraph.prebuilt import create_react_agent

import tether
import tether.adapters
from tether.adapters.langgraph import TetherCheckpointer, chat_model, memory_hook
from tether.memory import AsyncMemory


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


async def main(thread: str, question: str, remember: str | None) -> dict[str, Any]:
    installed = tether.init()  # line 1: runs and tool calls of every graph
    llm = chat_model(ChatOpenAI(model="gpt-4o-mini", stream_usage=True))  # line 2: its calls under tether's policy
    bus = await tether.connect()
    memory = None
    hook = None
    if remember:
        memory = await AsyncMemory(bus, agent="weather-bot").start()
        written = await memory.write("agent:weather-bot", remember, key="home-city")
        await memory.wait_for(written.seq)
        hook = memory_hook(memory, namespaces="agent:weather-bot", token_budget=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(llm, [get_weather], name="weather-bot", checkpointer=TetherCheckpointer(bus),
                                   pre_model_hook=hook)
    config: Any = {"configurable": {"thread_id": thread}}
    before = await agent.aget_state(config)
    out: dict[str, Any] = {"installed": installed, "restored": len(before.values.get("messages", []))}
    try:
        result = await agent.ainvoke({"messages": [("user", question)]}, config)
        out.update(ok=True, answer=result["messages"][-1].content)
    except Exception as exc:  # what the framework raised, as the agent's code sees it
        out.update(ok=False, error=f"{type(exc).__module__}.{type(exc).__name__}", message=str(exc)[:500],
                   kinds=[f"{k.__module__}.{k.__name__}" for k in type(exc).__mro__])
    after = await agent.aget_state(config)
    out["messages"] = [m.type for m in after.values.get("messages", [])]
    if memory is not None:
        await memory.close()
    await bus.close()
    await asyncio.to_thread(tether.adapters.flush)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))))
