"""Google ADK agents with one tool on ``LiteLlm``, run by .venv-google-adk's python
(tests/frameworks/test_google_adk.py).

The lines a user adds are marked. The model is the fake provider (``OPENAI_BASE_URL``), the bus
``TETHER_NATS_URL``, the policies ``tether.toml`` in the working directory (``budget.toml`` for the
budget scenario). Each scenario named on the command line runs in turn in this one process, its agent
named ``<scenario>_bot``; prints one JSON line, by scenario. The ``tool-*`` scenarios run the tool under
tether's tool policy (the plugin's): a timeout, an idempotent tool retried, a resumed run whose completed
tool call is replayed (each tool counts its executions). The ``kinds-*`` scenarios do the same for the
other kinds of tools ADK runs: a toolset's tool retried, a ``LongRunningFunctionTool`` timed out, an
``AgentTool`` whose completed call a resumed run replays without running its agent again. The ``gemini-*``
scenarios run ADK's native ``Gemini`` model (``gemini(...)``: google-genai on tether's HTTP clients) against
the fake provider's Gemini endpoints; ``genai`` is plain google-genai given tether's HTTP clients in its
``http_options``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM would fetch its price map at import
os.environ.setdefault("GOOGLE_API_KEY", "fake-google-key-for-tests")  # google-genai's key (the fake takes any)

from _scenario import ORIGIN, faults, scenario
from google import genai
from google.adk.agents import LlmAgent
from google.adk.agents.run_config import RunConfig, StreamingMode
from google.adk.apps import App
from google.adk.models.llm_request import LlmRequest
from google.adk.runners import Runner
from google.adk.sessions import InMemorySessionService
from google.adk.tools.agent_tool import AgentTool
from google.adk.tools.base_tool import BaseTool
from google.adk.tools.base_toolset import BaseToolset
from google.adk.tools.long_running_tool import LongRunningFunctionTool
from google.genai import types

import tether
import tether.adapters
from tether.adapters.google_adk import TetherMemoryService, TetherPlugin, TetherSessionService, gemini, lite_llm
from tether.memory import AsyncMemory
from tether.middleware import load_policies

QUESTION = "What is the weather in Paris?"
REMEMBER = "Weather in Paris: the user wants degrees Celsius."
FAULTS = {"retries": "500#1/chat,503#3/chat", "down": "500/chat", "gemini": "500#1/gemini,429(0.1s)#3/gemini",
          "gemini-stream": "503#1/gemini", "gemini-down": "503/gemini", "genai": "500#1/gemini"}


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


def get_weather_broken(city: str) -> str:
    """The weather in a city."""
    raise ConnectionError(f"the weather service for {city} is down")


RAN: dict[str, int] = {"slow": 0, "flaky": 0, "booking": 0, "toolset": 0, "long": 0, "agent-tool": 0}


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


def book_table(city: str) -> dict[str, str]:
    """Book a table in a city (a side effect: must not run twice)."""
    RAN["booking"] += 1
    if RAN["booking"] == 1:
        faults("500/chat")  # the process "dies" after the tool: every later model call fails
    return {"booked": city}


async def toolset_weather(city: str) -> str:
    """The weather in a city."""
    RAN["toolset"] += 1
    if RAN["toolset"] == 1:
        raise ConnectionError("the weather service reset the connection")
    return f"It is sunny in {city}."


class RemoteWeather(BaseTool):
    """A toolset's tool that is not a ``FunctionTool`` (as ``MCPToolset``'s ``McpTool`` is not)."""

    def __init__(self) -> None:
        super().__init__(name="get_weather", description="The weather in a city.")

    def _get_declaration(self) -> types.FunctionDeclaration:
        return types.FunctionDeclaration(name=self.name, description=self.description, parameters=types.Schema(
            type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)}, required=["city"]))

    async def run_async(self, *, args: dict[str, Any], tool_context: Any) -> Any:
        return await toolset_weather(**args)


class WeatherToolset(BaseToolset):
    """A toolset (as ``MCPToolset`` is): the tools it yields are resolved for each model request."""

    async def get_tools(self, readonly_context: Any = None) -> list[Any]:
        return [RemoteWeather()]

    async def close(self) -> None:
        pass


async def start_report(city: str) -> dict[str, str]:
    """Start a weather report for a city (a long-running operation)."""
    RAN["long"] += 1
    await asyncio.sleep(30)
    return {"status": "never"}


def book_for_agent(city: str) -> dict[str, str]:
    """Book a table in a city (a side effect: must not run twice)."""
    RAN["agent-tool"] += 1
    return {"booked": city}


def fail_after(callback_context: Any) -> None:
    """The sub-agent's after_agent_callback: the process "dies" once it answered (every later model call fails)."""
    faults("500/chat")


async def turn_of(runner: Any) -> list[Any]:
    session = await runner.session_service.create_session(app_name="weather", user_id="u1")
    message = types.Content(role="user", parts=[types.Part(text=QUESTION)])
    results = []
    async for event in runner.run_async(user_id="u1", session_id=session.id, new_message=message):
        results += [p.function_response.response for p in event.content.parts or []
                    if event.content and p.function_response] if event.content else []
    return results


async def tool_kinds(name: str, model: Any) -> dict[str, Any]:
    """The ``kinds-*`` scenarios: tools other than an agent's own functions under the plugin's tool policy."""
    agent_name = f"{name.replace('-', '_')}_bot"
    if name == "kinds-toolset":  # a toolset's tool, idempotent: retried
        agent = LlmAgent(name=agent_name, model=model, tools=[WeatherToolset()], instruction="Answer.")
        plugin = TetherPlugin(idempotent_tools={"get_weather"})
        runner = Runner(app=App(name="weather", root_agent=agent, plugins=[plugin]),
                        session_service=InMemorySessionService())
        return {"results": await turn_of(runner), "ran": RAN["toolset"]}
    if name == "kinds-long-running":  # a long-running tool's first call, under a timeout
        start_report.__name__ = "get_weather"
        agent = LlmAgent(name=agent_name, model=model, tools=[LongRunningFunctionTool(start_report)],
                         instruction="Answer.")
        runner = Runner(app=App(name="weather", root_agent=agent, plugins=[TetherPlugin(tool_timeout_s=0.3)]),
                        session_service=InMemorySessionService())
        return {"results": await turn_of(runner), "ran": RAN["long"]}
    # kinds-agent-tool: the sub-agent books, then the process "dies"; resumed, the AgentTool call is replayed
    out: dict[str, Any] = {}
    for attempt in ("first", "resumed"):
        book_for_agent.__name__ = "get_weather"
        booker = LlmAgent(name="agent_tool_booker", model=model, tools=[book_for_agent], instruction="Book.",
                          after_agent_callback=fail_after if attempt == "first" else None)
        agent = LlmAgent(name=agent_name, model=model, tools=[AgentTool(booker)], instruction="Ask the booker.")
        runner = Runner(app=App(name="weather", root_agent=agent, plugins=[TetherPlugin()]),
                        session_service=InMemorySessionService())
        try:
            async with tether.run(agent="booker", run_id="adk-agent-tool-resume-1", resume=True):
                out[attempt] = await turn_of(runner)
        except Exception as exc:
            out[attempt] = type(exc).__name__
        faults("")
        out[f"ran_{attempt}"] = RAN["agent-tool"]
    return out


async def tool_policy(name: str, model: Any) -> dict[str, Any]:
    """The ``tool-*`` scenarios: the agent's one function tool under the plugin's tool policy."""
    tool: Any = {"tool-timeout": get_weather_slow, "tool-retry": get_weather_flaky, "tool-resume": book_table}[name]
    tool.__name__ = "get_weather"
    plugin = TetherPlugin(tool_timeout_s=0.3) if name == "tool-timeout" else \
        TetherPlugin(idempotent_tools={"get_weather"}) if name == "tool-retry" else TetherPlugin()
    agent = LlmAgent(name=f"{name.replace('-', '_')}_bot", model=model, tools=[tool],
                     instruction="Answer about the weather.")
    runner = Runner(app=App(name="weather", root_agent=agent, plugins=[plugin]),
                    session_service=InMemorySessionService())

    async def turn() -> list[Any]:
        session = await runner.session_service.create_session(app_name="weather", user_id="u1")
        message = types.Content(role="user", parts=[types.Part(text=QUESTION)])
        results = []
        async for event in runner.run_async(user_id="u1", session_id=session.id, new_message=message):
            results += [p.function_response.response for p in event.content.parts or []
                        if event.content and p.function_response] if event.content else []
        return results

    if name != "tool-resume":
        return {"results": await turn(), "ran": RAN["slow" if name == "tool-timeout" else "flaky"]}
    out: dict[str, Any] = {}  # the first attempt dies after the booking; resumed, it is replayed, not rebooked
    for attempt in ("first", "resumed"):
        try:
            async with tether.run(agent="booker", run_id="adk-resume-1", resume=True):
                out[attempt] = await turn()
        except Exception as exc:
            out[attempt] = type(exc).__name__
        faults("")
        out[f"ran_{attempt}"] = RAN["booking"]
    return out


MODELS: dict[str, Any] = {}


async def native_gemini(name: str) -> dict[str, Any]:
    """ADK's native ``Gemini`` through tether: an agent with a tool, two model calls (``gemini-stream``:
    streamed, ``StreamingMode.SSE``), or a budget refusal (``gemini-budget``), or a provider down."""
    options = {"policies": load_policies("budget.toml")} if name == "gemini-budget" else None
    model = gemini("gemini-2.5-flash", base_url=ORIGIN, tether=options)  # the line: ADK's Gemini through tether
    MODELS[name] = model
    get_weather.__name__ = "get_weather"
    agent = LlmAgent(name=f"{name.replace('-', '_')}_bot", model=model, tools=[get_weather],
                     instruction="Answer about the weather.")
    runner = Runner(app=App(name="weather", root_agent=agent, plugins=[TetherPlugin()]),
                    session_service=InMemorySessionService())
    session = await runner.session_service.create_session(app_name="weather", user_id="u1")
    message = types.Content(role="user", parts=[types.Part(text=QUESTION)])
    config = RunConfig(streaming_mode=StreamingMode.SSE) if name == "gemini-stream" else None
    kinds, texts = [], []
    async for event in runner.run_async(user_id="u1", session_id=session.id, new_message=message, run_config=config):
        for part in event.content.parts if event.content and event.content.parts else []:
            kinds.append("call" if part.function_call else "result" if part.function_response else "text")
            if part.text and not event.partial:
                texts.append(part.text)
    return {"events": [k for n, k in enumerate(kinds) if k != "text" or "text" not in kinds[n + 1:]],
            "texts": texts}


async def gemini_refusals() -> dict[str, Any]:
    """What ``gemini(...)`` refuses, each with the error it raises."""
    out: dict[str, Any] = {}
    cases = {"client": {"client": genai.Client()},
             "retry_options": {"retry_options": types.HttpRetryOptions(attempts=3)},
             "durable": {"tether": {"mode": "durable"}},
             "own_http_client": {"client_kwargs": {"http_options": {"httpx_async_client": tether.async_http_client()}}}}
    for case, kwargs in cases.items():
        try:
            gemini("gemini-2.5-flash", **kwargs)
            out[case] = None
        except (TypeError, ValueError) as exc:
            out[case] = [type(exc).__name__, str(exc)]
    kept = gemini("gemini-2.5-flash", client_kwargs={"http_options": {"headers": {"x-team": "weather"}}})
    options = kept.client_kwargs["http_options"]
    out["kept"] = [options.headers, options.retry_options.attempts, type(options.httpx_async_client).__name__]
    return out


async def plain_genai() -> dict[str, Any]:
    """google-genai on its own, given tether's HTTP clients (and no retries of its own) in its http_options."""
    client = genai.Client(http_options=types.HttpOptions(
        base_url=ORIGIN, httpx_async_client=tether.async_http_client(), httpx_client=tether.http_client(),
        retry_options=types.HttpRetryOptions(attempts=1)))
    async with tether.run(agent="genai_bot", name="genai_bot"):
        answer = await client.aio.models.generate_content(model="gemini-2.5-flash", contents=QUESTION)
        streamed = [c.text async for c in await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents=QUESTION)]
        synced = await asyncio.to_thread(client.models.generate_content, model="gemini-2.5-flash",
                                         contents=QUESTION)  # the sync client, on tether.http_client()
    try:
        tether.instrument(genai.Client())
        refused = None
    except TypeError as exc:
        refused = str(exc)
    return {"text": answer.text, "usage": answer.usage_metadata.total_token_count, "streamed": "".join(streamed),
            "sync": synced.text, "instrument": refused}


def _upstream_transport(model: Any) -> str:
    """The transport tether sends ``lite_llm``'s calls on (ADK keeps the ``client=`` it passes LiteLLM in
    ``_additional_args``; the SDK its HTTP client in ``_client``)."""
    from tether.adapters._sdkpriv import http_client_of

    return type(http_client_of(model._additional_args["client"])._transport.wrapped).__name__


async def main(scenarios: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"installed": tether.init()}  # line 1
    out["again"] = tether.init()
    model = lite_llm("openai/gpt-4o-mini")  # line 2: ADK's LiteLlm, its calls under tether's policy
    out["upstream_transport"] = _upstream_transport(model)
    bus = await tether.connect()
    memory = await AsyncMemory(bus, agent="memory_bot").start()
    for name in scenarios:
        if name in ("gemini", "gemini-stream", "gemini-budget", "gemini-down"):
            out.update(await scenario(name, FAULTS.get(name, ""), lambda name=name: native_gemini(name)))
            continue
        if name == "genai":
            out.update(await scenario(name, FAULTS[name], plain_genai))
            continue
        if name == "gemini-refusals":
            out.update(await scenario(name, "", gemini_refusals))
            continue
        if name.startswith("tool-"):
            out.update(await scenario(name, "", lambda name=name: tool_policy(name, model)))
            continue
        if name.startswith("kinds-"):
            out.update(await scenario(name, "", lambda name=name: tool_kinds(name, model)))
            continue
        tool = get_weather_broken if name == "broken-tool" else get_weather
        tool.__name__ = "get_weather"
        llm = lite_llm("openai/gpt-4o-mini", tether={"policies": load_policies("budget.toml")}) \
            if name == "budget" else model
        plugin = TetherPlugin()  # line 3: the plugin, in the App
        if name == "memory":
            written = await memory.write("agent:weather-bot", REMEMBER, key="home-city")
            await memory.wait_for(written.seq)
            plugin = TetherPlugin(memory=memory, namespaces="agent:weather-bot", token_budget=200)
        agent = LlmAgent(name=f"{name.replace('-', '_')}_bot", model=llm, tools=[tool],
                         instruction="Answer about the weather.")
        root = agent
        if name == "sub-agent":  # the agent is a tool of a triage agent: its run is the triage run's child
            root = LlmAgent(name="triage_bot", model=llm, tools=[AgentTool(agent)],
                            instruction="Ask the weather agent.")
        sessions: Any = TetherSessionService(bus) if name == "session-service" else InMemorySessionService()
        runner = Runner(app=App(name="weather", root_agent=root, plugins=[plugin]), session_service=sessions)
        session = await runner.session_service.create_session(
            app_name="weather", user_id="u1", state={"topic": "weather", "user:unit": "C", "app:region": "eu"})

        async def body(runner: Any = runner, session: Any = session, name: str = name, root: Any = root,
                       plugin: Any = plugin) -> dict[str, Any]:
            kinds = []
            message = types.Content(role="user", parts=[types.Part(text=QUESTION)])
            async for event in runner.run_async(user_id="u1", session_id=session.id, new_message=message):
                for part in event.content.parts if event.content and event.content.parts else []:
                    kinds.append("call" if part.function_call else "result" if part.function_response else "text")
            out: dict[str, Any] = {"events": kinds}
            if name == "session-service":  # a new service (as after a restart) reads it all back, and goes on
                again = TetherSessionService(bus)
                restored = await again.get_session(app_name="weather", user_id="u1", session_id=session.id)
                out["restored"] = [len(restored.events), sorted(restored.state.items())]
                out["user_state"] = await again.get_user_state(app_name="weather", user_id="u1")
                second = Runner(app=App(name="weather", root_agent=root, plugins=[plugin]), session_service=again)
                follow = types.Content(role="user", parts=[types.Part(text="And in Lisbon?")])
                async for _ in second.run_async(user_id="u1", session_id=session.id, new_message=follow):
                    pass
                after = await again.get_session(app_name="weather", user_id="u1", session_id=session.id)
                out["after_second_turn"] = len(after.events)
                out["texts"] = [p.text for e in after.events if e.content for p in e.content.parts or [] if p.text]
                listed = await again.list_sessions(app_name="weather", user_id="u1")
                out["listed"] = [s.id == session.id for s in listed.sessions]
                await again.delete_session(app_name="weather", user_id="u1", session_id=session.id)
                out["deleted"] = await again.get_session(app_name="weather", user_id="u1", session_id=session.id)
            if name == "memory-service":  # the session's conversation into ADK's MemoryService on tether memory
                service = TetherMemoryService(memory)
                done = await runner.session_service.get_session(app_name="weather", user_id="u1",
                                                                session_id=session.id)
                await service.add_session_to_memory(done)
                found = (await service.search_memory(app_name="weather", user_id="u1", query=QUESTION)).memories
                out["recalled"] = [[m.author, m.content.parts[0].text] for m in found]
                await service.delete_memory(app_name="weather", user_id="u1", memory_id=found[0].id)
                after = (await service.search_memory(app_name="weather", user_id="u1", query=QUESTION)).memories
                out["after_delete"] = [m.content.parts[0].text for m in after]
                out["other_user"] = len((await service.search_memory(app_name="weather", user_id="u2",
                                                                     query=QUESTION)).memories)
            return out

        out.update(await scenario(name, FAULTS.get(name, ""), body))
    await memory.close()
    await bus.close()
    await asyncio.to_thread(tether.adapters.flush)
    return out


async def second_loop() -> dict[str, Any]:
    """The ``gemini`` scenario's model again, on another event loop (ADK builds a client per loop)."""
    async with tether.run(agent="second_loop_bot", name="second_loop_bot"):
        request = LlmRequest(model="gemini-2.5-flash", contents=[types.Content(role="user", parts=[
            types.Part(text=QUESTION)])])
        answers = [r async for r in MODELS["gemini"].generate_content_async(request)]
    return {"text": answers[-1].content.parts[0].text}


if __name__ == "__main__":
    said = asyncio.run(main(sys.argv[1:]))
    if "gemini" in MODELS:
        said.update(asyncio.run(scenario("second-loop", "", second_loop)))
    print(json.dumps(said))
