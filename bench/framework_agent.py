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
    from google.adk.models.lite_llm import LiteLlm

    if mode == "bare":
        return _adk_runner(LiteLlm(model="openai/gpt-4o-mini", num_retries=0, max_retries=0), mode)
    from tether.adapters.google_adk import lite_llm

    return _adk_runner(lite_llm("openai/gpt-4o-mini"), mode)


def google_adk_gemini_agent(mode: str) -> Runner:
    """``google_adk_agent`` on ADK's native ``Gemini`` (google-genai), on the fake provider's Gemini API."""
    import os

    os.environ.setdefault("GOOGLE_API_KEY", "bench-google-key")
    from google.adk.models.google_llm import Gemini

    origin = os.environ["OPENAI_BASE_URL"].removesuffix("/v1")
    if mode == "bare":
        return _adk_runner(Gemini(model="gemini-2.5-flash", base_url=origin), mode)  # google-genai retries nothing
    from tether.adapters.google_adk import gemini

    return _adk_runner(gemini("gemini-2.5-flash", base_url=origin), mode)


def _adk_runner(model: Any, mode: str) -> Runner:
    """The weather agent with one tool on ``model``; tether's plugin in ``tether`` mode, a plugin
    that does nothing in ``observer`` mode."""
    from google.adk.agents import LlmAgent
    from google.adk.apps import App
    from google.adk.plugins.base_plugin import BasePlugin
    from google.adk.runners import Runner as AdkRunner
    from google.adk.sessions import InMemorySessionService
    from google.genai import types

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"It is sunny in {city}."

    plugins: list[Any] = []
    if mode == "tether":
        import tether
        from tether.adapters.google_adk import TetherPlugin

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


def crewai_agent(mode: str) -> Runner:
    import os

    os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    from crewai import LLM, Agent, Crew, Task
    from crewai.tools import tool

    @tool("get_weather")
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"It is sunny in {city}."

    if mode == "bare":
        llm = LLM(model="gpt-4o-mini", max_retries=0)
    else:
        import tether
        from tether.adapters.crewai import llm as tether_llm

        if mode == "tether":
            tether.init()
        elif mode == "observer":
            observe_crewai()
        llm = tether_llm("gpt-4o-mini")

    def kickoff(i: int) -> None:
        agent = Agent(role="weather-bot", goal="Answer about the weather.", backstory="A forecaster.",
                      tools=[get_weather], llm=llm)
        task = Task(description=f"What is the weather in city {i}?", expected_output="The weather.", agent=agent)
        Crew(agents=[agent], tasks=[task], name="weather-crew").kickoff()

    async def run(i: int) -> None:
        await asyncio.to_thread(kickoff, i)

    return run


def observe_crewai() -> None:
    """A hook that does nothing, at each interception point tether's adapter registers at."""
    from crewai.hooks import InterceptionPoint, register_hook

    for point in ("EXECUTION_START", "EXECUTION_END", "PRE_STEP", "POST_STEP", "PRE_TOOL_CALL", "POST_TOOL_CALL"):
        register_hook(getattr(InterceptionPoint, point), lambda ctx: None)


def litellm_agent(mode: str) -> Runner:
    """LiteLLM has no runs and no hooks: ``model`` and ``observer`` route its calls through tether
    (``route()``), ``tether`` is ``tether.init()`` with each agent run in ``tether.run``."""
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    if mode != "bare":
        import tether
        from tether.adapters.litellm import route

        if mode == "tether":
            tether.init()
        else:
            route()

    async def loop(i: int) -> None:
        messages: list[Any] = [{"role": "user", "content": f"What is the weather in city {i}?"}]
        for _ in range(2):
            reply = await litellm.acompletion(model="openai/gpt-4o-mini", messages=messages, tools=tools,
                                              max_retries=0)
            message = reply.choices[0].message
            if not message.tool_calls:
                return
            messages.append(message.model_dump())
            for call in message.tool_calls:
                messages.append({"role": "tool", "tool_call_id": call.id, "content": "It is sunny."})

    async def run(i: int) -> None:
        if mode == "tether":
            import tether

            async with tether.run(agent="weather-bot"):
                await loop(i)
        else:
            await loop(i)

    return run


def pydantic_ai_agent(mode: str) -> Runner:
    from openai import AsyncOpenAI
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"It is sunny in {city}."

    capabilities: list[Any] = []
    if mode == "bare":
        llm: Any = OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(openai_client=AsyncOpenAI(max_retries=0)))
    else:
        from tether.adapters.pydantic_ai import capability, model

        llm = model("gpt-4o-mini")
        if mode == "tether":
            capabilities = [capability()]
        elif mode == "observer":
            capabilities = [nothing_capability()]
    agent = Agent(llm, name="weather-bot", instructions="Answer about the weather.", tools=[get_weather],
                  capabilities=capabilities)

    async def run(i: int) -> None:
        await agent.run(f"What is the weather in city {i}?")

    return run


def llama_index_agent(mode: str, *, streaming: bool = True) -> Runner:
    """A ``FunctionAgent``, which streams every model call (its default); ``streaming=False``
    (``llama-index-nostream``): the same agent with whole answers, to tell what streaming costs."""
    import os

    from llama_index.core.agent.workflow import FunctionAgent

    os.environ.setdefault("OPENAI_API_BASE", os.environ["OPENAI_BASE_URL"])  # where LlamaIndex's OpenAI LLM reads it

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"It is sunny in {city}."

    if mode == "bare":
        from llama_index.llms.openai import OpenAI

        model: Any = OpenAI("gpt-4o-mini", max_retries=0)
    else:
        from tether.adapters.llama_index import llm, wrap_tools

        model = llm("gpt-4o-mini")
        if mode == "tether":
            import tether

            tether.init()
        elif mode == "observer":
            observe_llama_index()
    agent = FunctionAgent(name="weather-bot", system_prompt="Answer about the weather.", tools=[get_weather], llm=model,
                          streaming=streaming)
    if mode == "tether":
        wrap_tools(agent)

    async def run(i: int) -> None:
        await agent.run(user_msg=f"What is the weather in city {i}?")

    return run


def llama_index_nostream_agent(mode: str) -> Runner:
    return llama_index_agent(mode, streaming=False)


def observe_llama_index() -> None:
    """A span handler on the root dispatcher doing nothing, where tether's goes."""
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.span_handlers import BaseSpanHandler

    class Nothing(BaseSpanHandler[Any]):
        def span_enter(self, *args: Any, **kwargs: Any) -> None:
            pass

        def span_exit(self, *args: Any, **kwargs: Any) -> None:
            pass

        def span_drop(self, *args: Any, **kwargs: Any) -> None:
            pass

        def new_span(self, *args: Any, **kwargs: Any) -> None:
            return None

        def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> None:
            return None

        def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> None:
            return None

    get_dispatcher().add_span_handler(Nothing())


def nothing_capability() -> Any:
    """A capability wrapping what tether's wraps, doing nothing: pydantic-ai's own cost of one."""
    from dataclasses import dataclass

    from pydantic_ai.capabilities import AbstractCapability

    @dataclass(init=False)
    class Nothing(AbstractCapability[Any]):
        def __init__(self) -> None:
            pass

        async def wrap_run(self, ctx: Any, *, handler: Any) -> Any:
            return await handler()

        async def wrap_tool_execute(self, ctx: Any, *, call: Any, tool_def: Any, args: Any, handler: Any) -> Any:
            return await handler(args)

    return Nothing()


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
    elif framework in ("google-adk", "google-adk-gemini"):
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
    elif framework in ("crewai", "litellm", "pydantic-ai"):
        one, none = other_hooks(framework)
    elif framework == "llama-index":
        one, none = llama_index_hooks()
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


def other_hooks(framework: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """CrewAI's hooks (a kickoff, a task, a tool call) and pydantic-ai's capability (a run, a tool
    call) driven with the contexts the framework gives them; LiteLLM has none. (tether, bare)."""
    from types import SimpleNamespace

    def nothing() -> None:
        pass

    if framework == "crewai":
        from tether.adapters import crewai

        crew, task = SimpleNamespace(name="weather-crew"), object()
        start = SimpleNamespace(crew=crew, flow=None)
        end = SimpleNamespace(crew=crew, flow=None, status="completed", error=None)
        step = SimpleNamespace(kind="task", task=task, agent=None, agent_role="weather-bot",
                               step_name="What is the weather in Paris?")
        def get_weather(city: str) -> str:
            return f"It is sunny in {city}."

        governed = crewai._governed("get_weather", get_weather)  # what the pre_step hook puts on a @tool
        structured = SimpleNamespace(func=governed)
        before = SimpleNamespace(tool_name="get_weather", tool_input={"city": "Paris"}, tool=structured)
        after = SimpleNamespace(tool_name="get_weather", tool_input={"city": "Paris"}, tool=structured,
                                tool_result="It is sunny in Paris.", raw_tool_result="It is sunny in Paris.")
        runs = crewai._RUNS  # the hooks install() registers

        def crew_run() -> None:
            runs.start(start)
            runs.step(step)
            crewai._before_tool(before)
            governed(city="Paris")  # the tool under tether's tool policy, in the task's run
            crewai._after_tool(after)
            runs.stepped(step)
            runs.end(end)

        def bare_run() -> None:
            get_weather("Paris")

        return crew_run, bare_run
    if framework == "pydantic-ai":
        from pydantic_ai.messages import ToolCallPart

        from tether.adapters.pydantic_ai import capability

        cap, loop = capability(), asyncio.new_event_loop()
        ctx = SimpleNamespace(agent=SimpleNamespace(name="weather-bot"))
        call = ToolCallPart("get_weather", {"city": "Paris"})

        async def tool(args: Any) -> str:
            return "It is sunny in Paris."

        async def body() -> None:
            await cap.wrap_tool_execute(ctx, call=call, tool_def=None, args={"city": "Paris"}, handler=tool)

        async def bare_body() -> None:
            await tool({"city": "Paris"})

        def agent_run() -> None:
            loop.run_until_complete(cap.wrap_run(ctx, handler=body))

        def bare_run() -> None:
            loop.run_until_complete(bare_body())

        return agent_run, bare_run
    return nothing, nothing


def llama_index_hooks() -> tuple[Callable[[], None], Callable[[], None]]:
    """The span handler at a FunctionAgent run's span (a run opened and finished) and one tool call
    through ``wrap_tools``'s ``PolicyTool``, without the workflow around them. (tether, bare)."""
    import inspect
    import uuid

    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.openai import OpenAI

    from tether.adapters.llama_index import TetherSpanHandler, wrap_tools

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"It is sunny in {city}."

    agent = wrap_tools(FunctionAgent(name="weather-bot", tools=[get_weather], llm=OpenAI("gpt-4o-mini", api_key="x")))
    tool, bare_tool = agent.tools[0], FunctionTool.from_defaults(get_weather)
    handler, loop = TetherSpanHandler(), asyncio.new_event_loop()
    args = inspect.signature(get_weather).bind("Paris")

    async def tethered() -> None:
        span = f"FunctionAgent.run-{uuid.uuid4()}"
        handler.span_enter(span, args, instance=agent)
        await tool.acall(city="Paris")
        handler.span_exit(span, args, instance=agent)

    async def bare() -> None:
        await bare_tool.acall(city="Paris")

    return (lambda: loop.run_until_complete(tethered())), (lambda: loop.run_until_complete(bare()))


async def measure(framework: str, mode: str, runs: int, warmup: int) -> dict[str, Any]:
    make = {"langgraph": langgraph_agent, "openai-agents": openai_agents_agent, "autogen": autogen_agent,
            "google-adk": google_adk_agent, "google-adk-gemini": google_adk_gemini_agent, "crewai": crewai_agent,
            "litellm": litellm_agent,
            "pydantic-ai": pydantic_ai_agent, "llama-index": llama_index_agent,
            "llama-index-nostream": llama_index_nostream_agent}[framework]
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
