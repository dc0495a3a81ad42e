"""AutoGen AgentChat agents with one tool, run by .venv-autogen's python (tests/frameworks/test_autogen.py).

The two lines a user adds are marked. The model is the fake provider (``OPENAI_BASE_URL``), the bus
``TETHER_NATS_URL``, the policies ``tether.toml`` in the working directory (``budget.toml`` for the
budget scenario). Each scenario named on the command line runs in turn in this one process, its agent
named ``<scenario>_bot``; prints one JSON line, by scenario. The ``tool-*`` scenarios give the agent its
tool through ``tools(...)`` (tether's tool policy): a timeout, an idempotent tool retried, a resumed run
whose completed tool call is replayed (each tool counts its executions); the ``kinds-*`` scenarios do the
same for an ``AgentTool`` (``tools([AgentTool(...)])``) and a workbench's tools (``workbench(...)``).
``--otel-sdk``: an OpenTelemetry SDK
tracer provider with an in-memory exporter is set before ``tether.init()``; the spans it exported are said.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from _scenario import faults, scenario
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import SourceMatchTermination
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_agentchat.tools import AgentTool
from autogen_core.tools import FunctionTool, StaticWorkbench

import tether
import tether.adapters
from tether.adapters._tools import FrameworkTools
from tether.adapters.autogen import PolicyTool, PolicyWorkbench, TetherMemory, model_client, team, tools, workbench
from tether.memory import AsyncMemory
from tether.middleware import load_policies

QUESTION = "What is the weather in Paris?"
REMEMBER = "Weather in Paris: the user wants degrees Celsius."
FAULTS = {"retries": "500#1/chat,503#3/chat", "down": "500/chat"}


async def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


async def get_weather_broken(city: str) -> str:
    """The weather in a city."""
    raise ConnectionError(f"the weather service for {city} is down")


RAN: dict[str, int] = {"slow": 0, "flaky": 0, "booking": 0, "agent-slow": 0, "agent-booking": 0, "wb-flaky": 0,
                       "wb-broken": 0, "wb-booking": 0}


async def get_weather_slow(city: str) -> str:
    """The weather in a city."""
    RAN["slow"] += 1
    await asyncio.sleep(30)
    return "never"


async def get_weather_flaky(city: str) -> str:
    """The weather in a city."""
    RAN["flaky"] += 1
    if RAN["flaky"] == 1:
        raise ConnectionError("the weather service reset the connection")
    return f"It is sunny in {city}."


async def book_table(city: str) -> str:
    """Book a table in a city (a side effect: must not run twice)."""
    RAN["booking"] += 1
    if RAN["booking"] == 1:
        faults("500/chat")  # the process "dies" after the tool: every later model call fails
    return f"Booked in {city}."


async def agent_slow(city: str) -> str:
    """The weather in a city."""
    RAN["agent-slow"] += 1
    await asyncio.sleep(30)
    return "never"


async def agent_booking(city: str) -> str:
    """Book a table in a city (a side effect: must not run twice)."""
    RAN["agent-booking"] += 1
    if RAN["agent-booking"] == 1:
        faults("500/chat")  # the process "dies" once the sub-agent answered: every later model call fails
    return f"Booked in {city}."


async def wb_flaky(city: str) -> str:
    """The weather in a city (its first call hangs)."""
    RAN["wb-flaky"] += 1
    if RAN["wb-flaky"] == 1:
        await asyncio.sleep(30)
    return f"It is sunny in {city}."


async def wb_broken(city: str) -> str:
    """The weather in a city."""
    RAN["wb-broken"] += 1
    raise ConnectionError(f"the weather service for {city} is down")


async def wb_booking(city: str) -> str:
    """Book a table in a city (a side effect: must not run twice)."""
    RAN["wb-booking"] += 1
    if RAN["wb-booking"] == 1:
        faults("500/chat")
    return f"Booked in {city}."


async def attention_tool(city: str) -> str:
    """Book a table in a city (never run here: the journal stops the call first)."""
    RAN["attention"] = RAN.get("attention", 0) + 1
    return f"Booked in {city}."


class Stopped(FrameworkTools):
    """Tether's journal as a resumed run finds a call the process died inside (the tool not idempotent):
    the call stops for attention before it runs, as ``FrameworkTools.acall`` raises it."""

    async def acall(self, name: str, arguments: Any, run: Any) -> Any:
        raise tether.NeedsAttention("autogen-attention", "call-1", name, 0, dict(arguments),
                                    "the process died inside the call")


async def attention(llm: Any) -> dict[str, Any]:
    """``kinds-attention``: a call stopped by tether's ``NeedsAttention``, through ``tools([...])``'s
    ``PolicyTool`` (inside the agent's own workbench) and through ``workbench(...)``'s ``PolicyWorkbench``:
    what ``agent.run()`` does with it."""
    attention_tool.__name__ = "get_weather"
    out: dict[str, Any] = {}
    function = FunctionTool(attention_tool, description="Book a table.")
    for path in ("tools", "workbench"):
        runner = Stopped()
        given = {"tools": [PolicyTool(function, runner)]} if path == "tools" else \
            {"workbench": PolicyWorkbench(StaticWorkbench([function]), runner)}
        agent = AssistantAgent(f"kinds_attention_{path}_bot", model_client=llm, reflect_on_tool_use=True, **given)
        try:
            out[path] = messages(await agent.run(task=QUESTION))
        except tether.NeedsAttention as exc:  # what the application catches
            out[path] = f"{type(exc).__module__}.{type(exc).__name__}"
    out["ran"] = RAN.get("attention", 0)
    return out


def messages(result: Any) -> dict[str, Any]:
    return {"messages": [type(m).__name__ for m in result.messages],
            "tool_result": [str(m.content) for m in result.messages if type(m).__name__ == "ToolCallExecutionEvent"]}


async def tool_kinds(name: str, llm: Any) -> dict[str, Any]:
    """The ``kinds-*`` scenarios: an agent used as a tool, and a workbench's tools, under tether's tool policy."""
    agent_name = f"{name.replace('-', '_')}_bot"
    if name == "kinds-attention":
        return await attention(llm)
    if name == "kinds-agent-timeout":  # the sub-agent's tool hangs: the AgentTool call is cut at 0.3 s
        agent_slow.__name__ = "get_weather"
        slow = AssistantAgent("kinds_slow_agent", model_client=llm, tools=[agent_slow])
        agent = AssistantAgent(agent_name, model_client=llm, tools=tools([AgentTool(slow)], timeout_s=0.3),
                               reflect_on_tool_use=True)
        return {**messages(await agent.run(task=QUESTION)), "ran": RAN["agent-slow"]}
    if name.startswith("kinds-workbench-"):
        tool = {"kinds-workbench-retry": wb_flaky, "kinds-workbench-error": wb_broken,
                "kinds-workbench-resume": wb_booking}[name]
        tool.__name__ = "get_weather"
        bench = StaticWorkbench([FunctionTool(tool, description="The weather in a city.")])
        # 2 s: the second attempt must answer within it, even on a slow machine
        options: dict[str, Any] = {"idempotent": {"get_weather"}, "timeout_s": 2} \
            if name == "kinds-workbench-retry" else {}
        key = {"kinds-workbench-retry": "wb-flaky", "kinds-workbench-error": "wb-broken",
               "kinds-workbench-resume": "wb-booking"}[name]
        if name != "kinds-workbench-resume":
            agent = AssistantAgent(agent_name, model_client=llm, workbench=workbench(bench, **options),
                                   reflect_on_tool_use=True)
            return {**messages(await agent.run(task=QUESTION)), "ran": RAN[key]}
        out: dict[str, Any] = {}
        for attempt in ("first", "resumed"):
            agent = AssistantAgent(agent_name, model_client=llm, workbench=workbench(bench), reflect_on_tool_use=True)
            try:
                async with tether.run(agent="booker", run_id="autogen-workbench-resume-1", resume=True):
                    out[attempt] = messages(await agent.run(task=QUESTION))
            except Exception as exc:
                out[attempt] = type(exc).__name__
            faults("")
            out[f"ran_{attempt}"] = RAN[key]
        return out
    # kinds-agent-resume: the sub-agent books, then the process "dies"; resumed, the AgentTool call is replayed
    agent_booking.__name__ = "get_weather"
    out = {}
    for attempt in ("first", "resumed"):
        booker = AssistantAgent("kinds_booker_agent", model_client=llm, tools=[agent_booking])
        agent = AssistantAgent(agent_name, model_client=llm, tools=tools([AgentTool(booker)]),
                               reflect_on_tool_use=True)
        try:
            async with tether.run(agent="booker", run_id="autogen-agent-resume-1", resume=True):
                out[attempt] = messages(await agent.run(task=QUESTION))
        except Exception as exc:
            out[attempt] = type(exc).__name__
        faults("")
        out[f"ran_{attempt}"] = RAN["agent-booking"]
    return out


async def tool_policy(name: str, llm: Any) -> dict[str, Any]:
    """The ``tool-*`` scenarios: the agent's one tool under tether's tool policy (``tools(...)``)."""
    agent_name = f"{name.replace('-', '_')}_bot"
    if name == "tool-timeout":
        get_weather_slow.__name__ = "get_weather"
        agent = AssistantAgent(agent_name, model_client=llm, tools=tools([get_weather_slow], timeout_s=0.3),
                               reflect_on_tool_use=True)
        result = await agent.run(task=QUESTION)
        executed = [str(m.content) for m in result.messages if type(m).__name__ == "ToolCallExecutionEvent"]
        return {"messages": [type(m).__name__ for m in result.messages], "ran": RAN["slow"], "tool_result": executed}
    if name == "tool-retry":
        get_weather_flaky.__name__ = "get_weather"
        agent = AssistantAgent(agent_name, model_client=llm, reflect_on_tool_use=True,
                               tools=tools([get_weather_flaky], idempotent={"get_weather"}))
        result = await agent.run(task=QUESTION)
        return {"messages": [type(m).__name__ for m in result.messages], "ran": RAN["flaky"]}
    # tool-resume: the first attempt dies after the booking; the run resumed replays it, never books again
    book_table.__name__ = "get_weather"
    out: dict[str, Any] = {}
    for attempt in ("first", "resumed"):
        agent = AssistantAgent(agent_name, model_client=llm, tools=tools([book_table]), reflect_on_tool_use=True)
        try:
            async with tether.run(agent="booker", run_id="autogen-resume-1", resume=True):
                result = await agent.run(task=QUESTION)
            out[attempt] = [type(m).__name__ for m in result.messages]
        except Exception as exc:
            out[attempt] = type(exc).__name__
        faults("")
        out[f"ran_{attempt}"] = RAN["booking"]
    return out


async def main(scenarios: list[str], otel_sdk: bool) -> dict[str, Any]:
    exporter = None
    if otel_sdk:  # the application's own OpenTelemetry SDK provider, set first: tether adds its processor to it
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    out: dict[str, Any] = {"installed": tether.init()}  # line 1: runs and tool calls of every agent
    refused = []
    for bad in (lambda: tools([42]), lambda: tools([get_weather], timeout_s=0), lambda: team(object()),  # type: ignore
                lambda: workbench([get_weather])):  # type: ignore
        try:
            bad()
        except (TypeError, ValueError) as exc:
            refused.append(f"{type(exc).__name__}: {exc}")
    out["refused"] = refused
    client = model_client("gpt-4o-mini")  # line 2: its model calls under tether's policy, its retries off
    bus = await tether.connect()
    memory = await AsyncMemory(bus, agent="memory_bot").start()
    for name in scenarios:
        if name.startswith("tool-"):
            out.update(await scenario(name, "", lambda name=name: tool_policy(name, client)))
            continue
        if name.startswith("kinds-"):
            out.update(await scenario(name, "", lambda name=name: tool_kinds(name, client)))
            continue
        tool = get_weather_broken if name == "broken-tool" else get_weather
        tool.__name__ = "get_weather"
        llm = model_client("gpt-4o-mini", tether={"policies": load_policies("budget.toml")}) \
            if name == "budget" else client
        memories = None
        if name == "memory":
            written = await memory.write("agent:weather-bot", REMEMBER, key="home-city")
            await memory.wait_for(written.seq)
            memories = [TetherMemory(memory, namespace="agent:weather-bot", token_budget=200)]
        agent = AssistantAgent(f"{name.replace('-', '_')}_bot", model_client=llm, tools=[tool], memory=memories,
                               reflect_on_tool_use=True, system_message="Answer about the weather.")
        runner: Any = agent
        if name == "team":  # the team is a run; each agent's turn (the weather bot's, then the critic's) its child
            critic = AssistantAgent("team_critic_bot", model_client=llm, system_message="Check the answer.")
            runner = team(RoundRobinGroupChat([agent, critic], name="weather_team",
                                              termination_condition=SourceMatchTermination([critic.name])))
        elif name == "sub-agent":  # the agent is a tool of a triage agent: its runs are the triage run's children
            runner = AssistantAgent("triage_bot", model_client=llm, tools=[AgentTool(agent)],
                                    system_message="Ask the weather agent.")

        async def body(runner: Any = runner) -> dict[str, Any]:
            result = await runner.run(task=QUESTION)
            return {"messages": [type(m).__name__ for m in result.messages]}

        out.update(await scenario(name, FAULTS.get(name, ""), body))
    if exporter is not None:
        out["exported"] = sorted({span.name for span in exporter.get_finished_spans()})
    await client.close()
    await memory.close()
    await bus.close()
    await asyncio.to_thread(tether.adapters.flush)
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(asyncio.run(main([a for a in args if not a.startswith("--")], "--otel-sdk" in args))))
