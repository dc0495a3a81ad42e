"""OpenAI Agents SDK agents run by .venv-openai-agents's python, one scenario after another in one
process (tests/frameworks/test_openai_agents.py): a persistent model failure, a budget refusal
(the agent ``budget-bot`` may make one call), then function tools under tether's tool policy
(``wrap_tools``): a tool past its timeout, a tool whose exception the SDK turns into the model's
text, an idempotent tool retried after its first attempt timed out, a run resumed after it failed
past its tool call (the tool is not run again), and a run
resumed after it died inside a tool that is not idempotent. Each tool counts its executions. The
``mcp-*`` scenarios do the same for the tools of an MCP server (mcp_weather_server.py, over stdio, which
counts their executions in files): a timeout, an idempotent tool retried, a resumed run's call replayed.
Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from _scenario import scenario
from agents import Agent, Runner, function_tool, set_trace_processors
from agents.mcp import MCPServerStdio

import tether
import tether.adapters
from tether.adapters.openai_agents import use_default_client, wrap_tools

RAN: Counter[str] = Counter()


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


@function_tool
async def slow_lookup(city: str) -> str:
    """The weather in a city (slow)."""
    RAN["slow_lookup"] += 1
    await asyncio.sleep(5)
    return f"It is sunny in {city}."


@function_tool
async def flaky_lookup(city: str) -> str:
    """The weather in a city (its first call hangs)."""
    RAN["flaky_lookup"] += 1
    if RAN["flaky_lookup"] == 1:
        await asyncio.sleep(5)
    return f"It is cloudy in {city}."


@function_tool
def counted_lookup(city: str) -> str:
    """The weather in a city (counted)."""
    RAN["counted_lookup"] += 1
    return f"It is windy in {city}."


@function_tool
def broken_lookup(city: str) -> str:
    """The weather in a city (its service is down)."""
    RAN["broken_lookup"] += 1
    raise ConnectionError(f"the weather service for {city} is down")


class Crash(BaseException):
    """The process dies here: nothing after it is recorded."""


@function_tool
def send_mail(to: str) -> str:
    """Send a mail (not idempotent); the first call dies inside it."""
    RAN["send_mail"] += 1
    if RAN["send_mail"] == 1:
        raise Crash
    return f"sent to {to}"


async def ask(name: str, tool: Any, **options: Any) -> dict[str, Any]:
    agent = wrap_tools(Agent(name=name, instructions="Answer about the weather.", tools=[tool]), **options)
    result = await Runner.run(agent, "What is the weather in Paris?")
    return {"answer": str(result.final_output), "ran": RAN[tool.name],
            "outputs": [item.output for item in result.new_items if item.type == "tool_call_output_item"]}


async def ask_mcp(name: str, server: Any, tool: str, counts: Path, **options: Any) -> dict[str, Any]:
    """An agent whose one tool server is ``server``, asked a question that names ``tool`` (the fake model
    calls the tool the user's words name)."""
    agent = wrap_tools(Agent(name=name, instructions="Answer about the weather.", mcp_servers=[server]), **options)
    result = await Runner.run(agent, f"Use {tool} for Paris.")
    ran = (counts / tool).read_text().count("ran") if (counts / tool).exists() else 0
    return {"answer": str(result.final_output), "ran": ran,
            "outputs": [item.output for item in result.new_items if item.type == "tool_call_output_item"]}


async def mcp_scenarios() -> dict[str, Any]:
    said: dict[str, Any] = {}
    counts = Path(tempfile.mkdtemp(prefix="mcp-counts-"))
    params = {"command": sys.executable, "args": [str(Path(__file__).with_name("mcp_weather_server.py")),
                                                  str(counts)]}
    async with MCPServerStdio(params=params, name="weather", client_session_timeout_seconds=30) as server:
        # 2 s: the server's answer (a round trip to another process) must come within it, even on a slow machine
        said |= await scenario("mcp-timeout", "", lambda: ask_mcp("mcp-slow-bot", server, "mcp_slow_forecast",
                                                                   counts, timeout_s=2))
        said |= await scenario("mcp-retried", "", lambda: ask_mcp(
            "mcp-flaky-bot", server, "mcp_flaky_forecast", counts, idempotent={"mcp_flaky_forecast"}, timeout_s=2))

        async def booking() -> dict[str, Any]:
            async with tether.run(run_id="job-mcp", resume=True):
                return await ask_mcp("mcp-booking-bot", server, "mcp_book_table", counts)

        said |= await scenario("mcp-crashed", "500#2-4/responses", booking)
        said["mcp-crashed"]["ran"] = (counts / "mcp_book_table").read_text().count("ran")
        said |= await scenario("mcp-resumed", "", booking)
    return said


async def resumed() -> dict[str, Any]:
    """The agent's run inside a run of the user's, opened with ``resume=True`` each time."""
    async with tether.run(run_id="job-tools", resume=True):
        return await ask("resume-bot", counted_lookup)


async def main() -> dict[str, Any]:
    set_trace_processors([])  # no export of traces to OpenAI from a test (tether's processor comes after)
    said: dict[str, Any] = {"installed": tether.init()}
    use_default_client()
    said |= await scenario("persistent", "500/responses", lambda: ask("persistent-bot", get_weather))
    said |= await scenario("budget", "", lambda: ask("budget-bot", get_weather))
    said |= await scenario("timeout", "", lambda: ask("slow-bot", slow_lookup, timeout_s=0.3))
    said |= await scenario("handled", "", lambda: ask("broken-bot", broken_lookup))
    said |= await scenario("retried", "", lambda: ask("flaky-bot", flaky_lookup, idempotent={"flaky_lookup"},
                                                      timeout_s=0.3))
    # the second model call fails past tether's three attempts: the run fails after its tool call
    said |= await scenario("crashed", "500#2-4/responses", resumed)
    said["crashed"]["ran"] = RAN["counted_lookup"]
    said |= await scenario("resumed", "", resumed)
    said |= await scenario("attention", "", attention)
    said |= await mcp_scenarios()
    await asyncio.to_thread(tether.adapters.flush)
    return said


async def attention() -> dict[str, Any]:
    """A run dies inside a call of a tool that is not idempotent, then is resumed."""
    try:
        async with tether.run(run_id="job-mail", resume=True):
            await ask("mail-bot", send_mail)
    except Crash:
        await asyncio.to_thread(tether.adapters.flush)
    try:
        async with tether.run(run_id="job-mail", resume=True):
            await ask("mail-bot", send_mail)
    except tether.NeedsAttention as exc:  # what the application catches
        return {"attention": f"{type(exc).__module__}.{type(exc).__name__}", "tool": exc.tool,
                "ran": RAN["send_mail"]}
    return {"attention": None, "ran": RAN["send_mail"]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
