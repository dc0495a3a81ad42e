"""One framework's agent, bare or under tether, timed run by run: the child process of
bench/frameworks.py, run by that framework's venv (``.venv-<framework>``). Prints JSON samples.

An agent run is two model calls (the first answered with a tool call) and one tool call: two
agent steps. ``bare``: the framework as its users run it, with its model client's retries off
(as under tether). ``tether``: the same, plus the two lines of docs/frameworks/ (``tether.init()``
and the model's client given to tether). ``model``: the model's client given to tether, without
``tether.init()`` (no runs, no tool events): what the LLM path costs alone. ``observer``: ``model``
plus a hook that does nothing, registered where tether's goes: the framework's own cost of a hook. Each run's wall time
and this process's CPU time (``time.process_time``: the framework, the SDK, tether and its
publisher thread) are recorded.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

Runner = Callable[[int], Awaitable[None]]


def observe_langchain() -> None:
    """A callback handler that does nothing, registered as tether's is: LangChain's own cost of one."""
    import contextvars

    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.tracers.context import register_configure_hook

    class Nothing(BaseCallbackHandler):
        run_inline = True

    nothing = Nothing()
    register_configure_hook(contextvars.ContextVar("bench_nothing", default=nothing), True)


def observe_agents() -> None:
    """A trace processor that does nothing, added as tether's is: the SDK's own cost of one."""
    from agents.tracing import TracingProcessor, add_trace_processor

    class Nothing(TracingProcessor):
        def on_trace_start(self, trace: Any) -> None:
            pass

        def on_trace_end(self, trace: Any) -> None:
            pass

        def on_span_start(self, span: Any) -> None:
            pass

        def on_span_end(self, span: Any) -> None:
            pass

        def shutdown(self) -> None:
            pass

        def force_flush(self) -> None:
            pass

    add_trace_processor(Nothing())


def langgraph_agent(mode: str) -> Runner:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langgraph.prebuilt import create_react_agent

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"It is sunny in {city}."

    llm = ChatOpenAI(model="gpt-4o-mini", max_retries=0)
    if mode != "bare":
        import tether
        from tether.adapters.langgraph import chat_model

        if mode == "tether":
            tether.init()
        elif mode == "observer":
            observe_langchain()
        llm = chat_model(llm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(llm, [get_weather], name="weather-bot")

    async def run(i: int) -> None:
        await agent.ainvoke({"messages": [("user", f"What is the weather in city {i}?")]})

    return run


def openai_agents_agent(mode: str) -> Runner:
    from agents import Agent, Runner, function_tool, set_default_openai_client, set_trace_processors
    from openai import AsyncOpenAI

    set_trace_processors([])  # no export to OpenAI: both variants run the SDK's tracing machinery
    client = AsyncOpenAI(max_retries=0)
    if mode != "bare":
        import tether
        from tether.adapters.openai_agents import use_default_client

        if mode == "tether":
            tether.init()
        elif mode == "observer":
            observe_agents()
        use_default_client(client)
    else:
        set_default_openai_client(client)

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"It is sunny in {city}."

    agent = Agent(name="weather-bot", instructions="Answer about the weather.", tools=[get_weather])

    async def run(i: int) -> None:
        await Runner.run(agent, f"What is the weather in city {i}?")

    return run


def observe_autogen() -> None:
    """A tracer provider and an event-logger handler that do nothing, set as tether's are: AutoGen's own
    cost of being observed (its spans made, its events built)."""
    import logging

    from autogen_core import EVENT_LOGGER_NAME
    from opentelemetry import trace

    from tether.adapters.autogen import TetherSpanProcessor, TracerProvider

    class Nothing(TetherSpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            pass

        def on_end(self, span: Any) -> None:
            pass

    trace.set_tracer_provider(TracerProvider(Nothing()))
    events = logging.getLogger(EVENT_LOGGER_NAME)
    events.addHandler(logging.NullHandler())
    events.setLevel(logging.INFO)


def autogen_agent(mode: str) -> Runner:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    async def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"It is sunny in {city}."

    client: Any = OpenAIChatCompletionClient(model="gpt-4o-mini", max_retries=0)
    if mode != "bare":
        import tether
        from tether.adapters.autogen import model_client

        if mode == "tether":
            tether.init()
        elif mode == "observer":
            observe_autogen()
        client = model_client("gpt-4o-mini")

    async def run(i: int) -> None:  # a new agent each run: AutoGen agents keep their conversation
        agent = AssistantAgent("weather_bot", model_client=client, tools=[get_weather], reflect_on_tool_use=True)
        await agent.run(task=f"What is the weather in city {i}?")

    return run


def google_adk_agent(mode: str) -> Runner:
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from google.adk.agents import LlmAgent
    from google.adk.apps import App
    from google.adk.models.lite_llm import LiteLlm
    from google.adk.plugins.base_plugin import BasePlugin
    from google.adk.runners import Runner as AdkRunner
    from google.adk.sessions import InMemorySessionService
    from google.genai import types

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"It is sunny in {city}."

    model: Any = LiteLlm(model="openai/gpt-4o-mini", num_retries=0, max_retries=0)
    plugins: list[Any] = []
    if mode != "bare":
        import tether
        from tether.adapters.google_adk import TetherPlugin, lite_llm

        model = lite_llm("openai/gpt-4o-mini")
        if mode == "tether":
            tether.init()
            plugins = [TetherPlugin()]
        elif mode == "observer":
            plugins = [BasePlugin(name="nothing")]
    agent = LlmAgent(name="weather_bot", model=model, tools=[get_weather], instruction="Answer about the weather.")
    runner = AdkRunner(app=App(name="weather", root_agent=agent, plugins=plugins),
                       session_service=InMemorySessionService())

    async def run(i: int) -> None:
        session = await runner.session_service.create_session(app_name="weather", user_id="u")
        message = types.Content(role="user", parts=[types.Part(text=f"What is the weather in city {i}?")])
        async for _ in runner.run_async(user_id="u", session_id=session.id, new_message=message):
            pass

    return run


def hooks(framework: str, runs: int) -> dict[str, float]:
    """The adapter's own hooks, driven as the framework drives them for one agent run (a run, a tool
    call, six other chains or two model spans), without the framework's work around them: CPU per
    run with tether's hooks and without (the publisher thread's share included, after a flush)."""
    import uuid

    import tether.adapters

    if framework == "langgraph":
        from tether.adapters.langgraph import TetherCallbackHandler

        handler = TetherCallbackHandler()

        def one() -> None:
            root = uuid.uuid4()
            handler.on_chain_start(None, {"messages": []}, run_id=root, parent_run_id=None, name="weather-bot")
            for _ in range(6):  # the graph's nodes and their inner runnables
                child = uuid.uuid4()
                handler.on_chain_start(None, {}, run_id=child, parent_run_id=root)
                handler.on_chain_end({}, run_id=child, parent_run_id=root)
            tool_run = uuid.uuid4()
            handler.on_tool_start({"name": "get_weather"}, "", run_id=tool_run, inputs={"city": "Paris"})
            handler.on_tool_end("It is sunny in Paris.", run_id=tool_run)
            handler.on_chain_end({}, run_id=root)

        def none() -> None:
            pass
    elif framework == "autogen":
        from autogen_core import trace_invoke_agent_span, trace_tool_span
        from autogen_core.logging import ToolCallEvent
        from opentelemetry.trace import NoOpTracer

        from tether.adapters.autogen import TetherSpanProcessor, TracerProvider

        processor = TetherSpanProcessor()
        tracer = TracerProvider(processor).get_tracer("autogen-core")
        answer = {"choices": [{"message": {"tool_calls": [
            {"id": "call-1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}}]}

        def agent_run(traced: Any, observed: bool) -> None:
            with trace_invoke_agent_span("weather-bot", tracer=traced):
                if observed:
                    processor.model_answered(answer)
                with trace_tool_span("get_weather", tracer=traced, tool_call_id="call-1"):
                    pass
                if observed:
                    processor.tool_done(ToolCallEvent(tool_name="get_weather", arguments={"city": "Paris"},
                                                      result="It is sunny in Paris."))

        def one() -> None:
            agent_run(tracer, True)

        def none() -> None:
            agent_run(NoOpTracer(), False)
    elif framework == "google-adk":
        from types import SimpleNamespace

        from google.adk.plugins.base_plugin import BasePlugin

        from tether.adapters.google_adk import TetherPlugin

        tool = SimpleNamespace(name="get_weather")
        agent = SimpleNamespace(name="weather-bot")

        loop = asyncio.new_event_loop()  # one loop for every run, as a runner's process has

        def drive(plugin: Any) -> None:
            async def go() -> None:
                invocation = SimpleNamespace(invocation_id="i-1", agent=agent)
                context = SimpleNamespace(invocation_id="i-1", agent_name="weather-bot", function_call_id="c-1")
                await plugin.before_run_callback(invocation_context=invocation)
                await plugin.before_agent_callback(agent=agent, callback_context=context)
                await plugin.before_model_callback(callback_context=context, llm_request=None)
                await plugin.before_tool_callback(tool=tool, tool_args={"city": "Paris"}, tool_context=context)
                await plugin.after_tool_callback(tool=tool, tool_args={"city": "Paris"}, tool_context=context,
                                                 result={"result": "It is sunny in Paris."})
                await plugin.before_model_callback(callback_context=context, llm_request=None)
                await plugin.after_agent_callback(agent=agent, callback_context=context)
                await plugin.after_run_callback(invocation_context=invocation)

            loop.run_until_complete(go())

        tethered, bare = TetherPlugin(), BasePlugin(name="nothing")

        def one() -> None:
            drive(tethered)

        def none() -> None:
            drive(bare)
    else:
        from agents.tracing import agent_span, function_span, response_span, set_trace_processors, trace

        from tether.adapters.openai_agents import TetherTracingProcessor

        def spans() -> None:
            with trace("Agent workflow"), agent_span("weather-bot"):
                with response_span():
                    pass
                with function_span("get_weather") as span:
                    span.span_data.input, span.span_data.output = '{"city": "Paris"}', "It is sunny in Paris."
                with response_span():
                    pass

        none = one = spans
        set_trace_processors([])  # bare first; tether's processor is added for the second loop
    out: dict[str, float] = {}
    for name, fn in (("bare", none), ("tether", one)):
        if name == "tether" and framework == "openai-agents":
            set_trace_processors([TetherTracingProcessor()])
        for _ in range(runs // 10):
            fn()
        tether.adapters.flush()
        started = time.process_time()
        for _ in range(runs):
            fn()
        tether.adapters.flush()
        out[name] = (time.process_time() - started) * 1000 / runs
    return out


async def measure(framework: str, mode: str, runs: int, warmup: int) -> dict[str, Any]:
    make = {"langgraph": langgraph_agent, "openai-agents": openai_agents_agent, "autogen": autogen_agent,
            "google-adk": google_adk_agent}[framework]
    run = make(mode)
    for i in range(warmup):
        await run(-1 - i)
    wall: list[float] = []
    cpu: list[float] = []
    for i in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        await run(i)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    if mode != "bare":
        import tether.adapters

        await asyncio.to_thread(tether.adapters.flush)
    return {"wall_ms": wall, "cpu_ms": cpu}


if __name__ == "__main__":
    framework, mode, count, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if mode == "hooks":
        print(json.dumps(hooks(framework, count)))
    else:
        print(json.dumps(asyncio.run(measure(framework, mode, count, warm))))
