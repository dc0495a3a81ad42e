"""LlamaIndex agents (a ``FunctionAgent`` with one tool making two model calls; an ``AgentWorkflow``
that hands off, and one whose agent handed to hands back) run by .venv-llama-index's python, one
scenario after another in one process: tests/frameworks/test_llama_index.py. Then tools under
tether's tool policy (a timeout, an idempotent tool retried, a resumed run whose tool call, or
handoff, is replayed: each tool counts its executions), the same for a ``ReActAgent`` (the fake
provider answers it in ReAct text) and a ``CodeActAgent``'s code execution, memory
put into the model's input, ``TetherChatStore`` beside LlamaIndex's own ``SQLAlchemyChatStore``, and
a conversation kept in ``TetherChatStore``; with ``--continue`` (a second process, after NATS
restarted), only that conversation's next turn.

The lines a user adds are marked. The model is the fake provider (``OPENAI_BASE_URL``: each scenario
sets its faults there first and reads back what reached it), the bus ``TETHER_NATS_URL``, the policies
``tether.toml`` in the working directory (the agent ``budget-bot`` may make one call). Prints one
JSON line: per scenario, what the agent gave or raised and the upstream requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import sys
from collections import Counter
from typing import Any

from _scenario import faults as set_faults
from _scenario import outcomes, received
from llama_index.core import SummaryIndex
from llama_index.core.agent.workflow import AgentWorkflow, CodeActAgent, FunctionAgent, ReActAgent
from llama_index.core.agent.workflow.multi_agent_workflow import handoff
from llama_index.core.llms import ChatMessage
from llama_index.core.memory import Memory
from llama_index.core.objects import ObjectIndex
from llama_index.core.storage.chat_store.base_db import MessageStatus
from llama_index.core.storage.chat_store.sql import SQLAlchemyChatStore
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context, StartEvent, StopEvent, Workflow, step

import tether
import tether.adapters
from tether.adapters._llamaindexpriv import broken_hooks, hand_off
from tether.adapters.llama_index import (
    TetherChatStore,
    TetherContextStore,
    TetherMemoryBlock,
    TetherSpanHandler,
    ToolNeedsAttention,
    llm,
    wrap_tools,
)
from tether.memory import AsyncMemory

os.environ["OPENAI_API_BASE"] = os.environ["OPENAI_BASE_URL"]  # where LlamaIndex's OpenAI LLM reads its base URL
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


async def slow_forecast(city: str) -> str:
    """The forecast for a city (slow)."""
    await asyncio.sleep(5)
    return f"Rain in {city}."


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


class Crash(BaseException):
    """The process dying inside a tool, as far as the run's log can tell: the call's start is
    recorded, its end never is."""


def charge_card(city: str) -> str:
    """Charge the card for a city's forecast (not idempotent; the process dies in its first call)."""
    RAN["charge_card"] += 1
    if RAN["charge_card"] == 1:
        raise Crash("the process died here")
    return f"Charged for {city}."


def run_code(code: str) -> str:
    """A CodeActAgent's code execution: the code run with the weather tool in reach, what it printed."""
    RAN["run_code"] += 1
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, {"get_weather": get_weather})  # the fake provider's code; never the user's input
    return printed.getvalue().strip()


async def hand_back(ctx: Context) -> str:
    """Hand the request back to the triage agent."""
    await ctx.store.set("next_agent", "triage")  # what LlamaIndex's handoff tool does to hand off
    return "Handed back to triage."


hand_back.__annotations__.update(ctx=Context)  # LlamaIndex finds the Context parameter by its annotation's class


class Echo(Workflow):
    """A workflow of one step, no agent."""

    @step
    async def echo(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=f"echo: {ev.get('text')}")


async def resumed_on_callers_bus(bus: Any) -> dict[str, Any]:
    """An agent run inside ``tether.run(..., resume=True, bus=bus)``, ``bus`` on this loop: what it
    answered and what tether warned."""
    warned: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = warned.append  # type: ignore[method-assign]
    logging.getLogger("tether.adapters.llama_index").addHandler(handler)
    try:
        async with tether.run(run_id="job-bus", resume=True, bus=bus):
            result = await agent("bus-bot", [get_weather]).run(user_msg="What is the weather in Paris?")
    finally:
        logging.getLogger("tether.adapters.llama_index").removeHandler(handler)
    return {"answer": str(result), "warnings": [r.getMessage() for r in warned]}


def sync_call() -> str:
    """A wrapped tool called synchronously (``FunctionTool.call``), in a run of the caller's."""
    with tether.run(agent="sync-bot"):
        return str(agent("sync-bot", [get_weather]).tools[0].call(city="Lyon").content)


async def needs_attention(name: str = "careful-bot", run_id: str = "job-card",
                          kind: type[Any] = FunctionAgent) -> dict[str, Any]:
    """A run that died inside a non-idempotent tool call, then resumed: it stops, and the tool is not run again."""
    out: dict[str, Any] = {}
    for attempt in ("died", "resumed"):
        set_faults("")
        try:
            async with tether.run(run_id=run_id, resume=True):
                try:
                    await agent(name, [charge_card], kind=kind).run(user_msg="What is the weather in Paris?")
                except ToolNeedsAttention as stop:
                    raise stop.attention from stop  # the enclosing run stops as needing attention too
            out[attempt] = {"ok": True}
        except Crash:
            out[attempt] = {"ok": False, "error": "Crash"}
        except tether.NeedsAttention as exc:
            out[attempt] = {"ok": False, "error": "NeedsAttention", "tool": exc.tool, "arguments": exc.arguments}
        out[attempt]["ran"] = RAN["charge_card"]
    return out


def agent(name: str, tools: list[Any], *, streaming: bool = True, kind: type[Any] = FunctionAgent,
          **options: Any) -> Any:
    bot = kind(name=name, description=f"{name} answers about the weather.",
               system_prompt="Answer about the weather.", tools=tools, streaming=streaming,
               llm=llm("gpt-4o-mini"))  # line 1: the model's requests under tether's policy
    return wrap_tools(bot, **options)  # line 2: its tool calls under tether's tool policy


async def scenario(name: str, faults: str, *, agent_name: str = "weather-bot", tools: list[Any] | None = None,
                   workflow: Any = None, resume: str | None = None, memory: Any = None,
                   **options: Any) -> dict[str, Any]:
    set_faults(faults)
    before = received()
    out: dict[str, Any] = {}
    try:
        bot = workflow or agent(agent_name, [get_weather] if tools is None else tools, **options)
        extra = {"memory": memory} if memory is not None else {}
        if resume:  # the agent's run inside a run of the user's, opened with resume=True
            async with tether.run(run_id=resume, resume=True):
                result = await bot.run(user_msg="What is the weather in Paris?", **extra)
        else:
            result = await bot.run(user_msg="What is the weather in Paris?", **extra)
        out.update(ok=True, answer=str(result), ran=dict(RAN),
                   tool_returns=[call.tool_output.content for call in result.tool_calls])
    except Exception as exc:  # what LlamaIndex raised, as the agent's code sees it
        out.update(ok=False, error=f"{type(exc).__module__}.{type(exc).__name__}", message=str(exc)[:500],
                   status=getattr(exc, "status_code", None), ran=dict(RAN))
    out["upstream"] = outcomes(before)
    return out


async def handler_lookups() -> int:
    """How often pydantic's ``__getattr__`` was called on the span handler during one agent run (it
    finds a model's private attributes after the normal lookup failed: about 3 µs a read, and
    LlamaIndex calls the handler at the start and end of every span)."""
    from pydantic import BaseModel

    looked = 0
    original = BaseModel.__getattr__

    def counting(self: Any, item: str) -> Any:
        nonlocal looked
        looked += isinstance(self, TetherSpanHandler)
        return original(self, item)

    BaseModel.__getattr__ = counting  # type: ignore[method-assign]
    try:
        await agent("lookup-bot", [get_weather]).run(user_msg="What is the weather in Paris?")
    finally:
        BaseModel.__getattr__ = original  # type: ignore[method-assign]
    return looked


async def ask_forecaster(city: str) -> str:
    """Ask the forecaster agent about a city."""
    return str(await agent("forecaster", []).run(user_msg=f"The weather in {city}?"))


def handoff_workflow() -> AgentWorkflow:
    # the fake provider fills the handoff tool's `to_agent` with "fake to_agent": the agent of that name
    triage = FunctionAgent(name="triage", description="Hands weather questions over.",
                           system_prompt="Hand the question over.", llm=llm("gpt-4o-mini"))
    forecaster = FunctionAgent(name="fake to_agent", description="Answers about the weather.",
                               system_prompt="Answer about the weather.", llm=llm("gpt-4o-mini"))
    return wrap_tools(AgentWorkflow(agents=[triage, forecaster], root_agent="triage"))


def handing_back_workflow() -> AgentWorkflow:
    """A ReAct triage agent hands off (in words: Action: handoff) to "fake to_agent", whose tool hands
    the request back; triage answers. The agent handed to acts for one turn in the middle of the run."""
    triage = ReActAgent(name="triage", description="Hands weather questions over.",
                        system_prompt="Hand the question over.", llm=llm("gpt-4o-mini"))
    forecaster = FunctionAgent(name="fake to_agent", description="Answers about the weather.",
                               system_prompt="Answer about the weather.", tools=[hand_back], llm=llm("gpt-4o-mini"))
    return wrap_tools(AgentWorkflow(agents=[triage, forecaster], root_agent="triage"))


async def replayed_handoffs() -> dict[str, Any]:
    """What a replayed handoff does to the workflow's next agent: a recorded handoff that handed off
    (its text the one the tool gives on handing off) sets it; one the tool refused (an unknown agent)
    does not."""
    said = {}
    for case, to_agent in (("refused", "nobody"), ("handed", "fake to_agent")):
        ctx = Context(handoff_workflow())
        for key, value in (("agents", ["triage", "fake to_agent"]), ("current_agent_name", "triage"),
                           ("can_handoff_to", {"triage": None, "fake to_agent": None})):
            await ctx.store.set(key, value)  # as the workflow's first step sets them
        recorded = await handoff(ctx, to_agent, "fake reason")  # what LlamaIndex's handoff tool answered
        await ctx.store.set("next_agent", None)
        said[case] = {"handed_off": await hand_off(ctx, to_agent, "fake reason", recorded),
                      "next_agent": await ctx.store.get("next_agent", default=None)}
    return said


async def text_agents() -> dict[str, Any]:
    """A ReActAgent (the fake provider answers it in ReAct text) under the tool policy as a FunctionAgent
    is: one call, a timeout, an idempotent tool retried, a resumed run's call replayed, a crash inside a
    non-idempotent call; a CodeActAgent's code execution as one tool call, replayed on resume."""
    RAN.clear()
    said = {"react": await scenario("react", "", agent_name="react-bot", kind=ReActAgent),
            "timeout": await scenario("react_timeout", "", agent_name="slow-react", tools=[slow_lookup],
                                      kind=ReActAgent, timeout_s=0.3),
            "retried": await scenario("react_retried", "", agent_name="flaky-react", tools=[flaky_lookup],
                                      kind=ReActAgent, timeout_s=0.3, idempotent={"flaky_lookup"}),
            "crashed": await scenario("react_crashed", "500#2-4/chat", agent_name="resume-react",
                                      tools=[counted_lookup], kind=ReActAgent, resume="job-react"),
            "resumed": await scenario("react_resumed", "", agent_name="resume-react", tools=[counted_lookup],
                                      kind=ReActAgent, resume="job-react"),
            "attention": await needs_attention("careful-react", "job-card-react", ReActAgent)}
    code = [await scenario(f"code_{step}", faults, workflow=wrap_tools(CodeActAgent(
        name="code-bot", code_execute_fn=run_code, tools=[get_weather], llm=llm("gpt-4o-mini"))), resume="job-code")
        for step, faults in (("crashed", "500#2-4/chat"), ("resumed", ""))]
    return {**said, "code_crashed": code[0], "code_resumed": code[1]}


async def stores_agree() -> dict[str, Any]:
    """The same operations on TetherChatStore and on LlamaIndex's SQLAlchemyChatStore (in-memory
    SQLite): what each returns, side by side."""
    bus = await tether.connect()
    seen: dict[str, list[Any]] = {}
    for name, store in (("tether", TetherChatStore(bus, bucket="tether-llama-index-conformance")),
                        ("sqlalchemy", SQLAlchemyChatStore(table_name="conformance"))):
        said: list[Any] = []

        def texts(messages: list[ChatMessage]) -> list[str]:
            return [f"{m.role.value}:{m.content}" for m in messages]

        await store.add_message("k1", ChatMessage(role="user", content="one"))
        await store.add_messages("k1", [ChatMessage(role="assistant", content="two"),
                                        ChatMessage(role="user", content="three")])
        await store.add_message("k2", ChatMessage(role="user", content="other"))
        said.append(texts(await store.get_messages("k1")))
        said.append(await store.count_messages("k1"))
        said.append(texts(await store.get_messages("k1", limit=2, offset=1)))
        said.append(texts(await store.archive_oldest_messages("k1", 1)))
        said.append(texts(await store.get_messages("k1")))
        said.append(texts(await store.get_messages("k1", status=MessageStatus.ARCHIVED)))
        said.append(await store.count_messages("k1", status=None))
        said.append(texts(await store.delete_oldest_messages("k1", 1)))
        said.append(texts(await store.get_messages("k1", status=None)))
        await store.set_messages("k1", [ChatMessage(role="user", content="new")])
        said.append(texts(await store.get_messages("k1", status=None)))
        said.append(sorted(await store.get_keys()))
        await store.delete_messages("k2")
        said.append(sorted(await store.get_keys()))
        said.append(texts(await store.get_messages("missing")))
        seen[name] = said
        await store.delete_messages("k1")
    await bus.close()
    return seen


async def main() -> dict[str, Any]:
    said: dict[str, Any] = {"installed": tether.init(), "broken_hooks": broken_hooks()}
    said["faults"] = await scenario("faults", "500#1/chat,429(0)#3/chat")
    said["persistent"] = await scenario("persistent", "429(0)/chat")
    # not streamed: LlamaIndex's own retry decorator (tenacity) would retry a 429 it got from achat()
    said["persistent_unstreamed"] = await scenario("persistent_unstreamed", "429(0)/chat", agent_name="plain-bot",
                                                   streaming=False)
    said["budget"] = await scenario("budget", "", agent_name="budget-bot")
    said["tool_error"] = await scenario("tool_error", "", agent_name="forecast-bot", tools=[get_forecast])
    unwrapped = FunctionAgent(name="observed-bot", system_prompt="Answer about the weather.", tools=[get_weather],
                              llm=llm("gpt-4o-mini"))  # no wrap_tools: its tool calls only observed
    said["observed"] = await scenario("observed", "", workflow=unwrapped)
    retrieving = FunctionAgent(name="retrieving-bot", system_prompt="Answer about the weather.", llm=llm("gpt-4o-mini"),
                               tool_retriever=ObjectIndex.from_objects([FunctionTool.from_defaults(slow_forecast)],
                                                                       index_cls=SummaryIndex).as_retriever())
    said["retrieved"] = await scenario("retrieved", "", workflow=wrap_tools(retrieving, timeout_s=0.3))
    said["sub_agent"] = await scenario("sub_agent", "", agent_name="asking-bot", tools=[ask_forecaster])
    said["handoff"] = await scenario("handoff", "", workflow=handoff_workflow())
    said["handoff_failed"] = await scenario("handoff_failed", "500#2-4/chat", workflow=handoff_workflow())
    said["replayed_handoffs"] = await replayed_handoffs()
    said["handed_back"] = await scenario("handed_back", "", workflow=handing_back_workflow())
    # the agent handed to fails past tether's attempts after the handoff; resumed, the handoff is replayed
    said["handoff_crashed"] = await scenario("handoff_crashed", "500#2-4/chat", workflow=handoff_workflow(),
                                             resume="job-handoff")
    said["handoff_resumed"] = await scenario("handoff_resumed", "", workflow=handoff_workflow(), resume="job-handoff")
    bus = await tether.connect()
    memory = await AsyncMemory(bus, agent="weather-bot").start()
    written = await memory.write("agent:weather-bot", REMEMBER, key="home-city")
    await memory.wait_for(written.seq)
    remembering = Memory.from_defaults(session_id="mem-1", chat_store=TetherChatStore(bus), memory_blocks=[
        TetherMemoryBlock(memory, namespaces="agent:weather-bot", token_budget=200)])
    said["memory"] = await scenario("memory", "", agent_name="remembering-bot", memory=remembering)
    await memory.close()
    said["tool_timeout"] = await scenario("tool_timeout", "", agent_name="slow-bot", tools=[slow_lookup],
                                          timeout_s=0.3)
    said["tool_retried"] = await scenario("tool_retried", "", agent_name="flaky-bot", tools=[flaky_lookup],
                                          timeout_s=0.3, idempotent={"flaky_lookup"})
    # the second model call fails past tether's three attempts, after the tool call; then resumed
    said["crashed"] = await scenario("crashed", "500#2-4/chat", agent_name="resume-bot", tools=[counted_lookup],
                                     resume="job-li")
    said["resumed"] = await scenario("resumed", "", agent_name="resume-bot", tools=[counted_lookup],
                                     resume="job-li")
    twins = [agent("twin-bot", [get_weather]) for _ in range(2)]
    answers = await asyncio.gather(*(bot.run(user_msg=f"What is the weather in Paris? ({i})")
                                     for i, bot in enumerate(twins)))
    said["concurrent"] = [str(a) for a in answers]
    said["sync_call"] = await asyncio.to_thread(sync_call)
    said["echo"] = str(await Echo().run(text="hello"))
    said["handler_lookups"] = await handler_lookups()
    said["attention"] = await needs_attention()
    said["text_agents"] = await text_agents()
    said["stores"] = await stores_agree()
    said["callers_bus"] = await resumed_on_callers_bus(bus)
    said["history"] = await converse(bus, "What is the weather in Paris?")
    said["context"] = await resume_context(bus, "What is the weather in Paris?")
    await bus.close()
    for bad in ({"max_retries": 3}, {"async_http_client": object()}, {"tether": {"polices": "tether.toml"}}):
        try:
            llm("gpt-4o-mini", **bad)
            said.setdefault("refused", []).append("accepted")
        except (TypeError, ValueError) as exc:
            said.setdefault("refused", []).append(str(exc))
    try:
        wrap_tools(Echo())
        said["refused"].append("accepted")
    except TypeError as exc:
        said["refused"].append(str(exc))
    await asyncio.to_thread(tether.adapters.flush)
    return said


async def converse(bus: Any, prompt: str) -> dict[str, Any]:
    """One turn of the conversation ``conv-1``, its history kept in tether by ``Memory``."""
    store = TetherChatStore(bus)
    before = await store.get_messages("conv-1")
    memory = Memory.from_defaults(session_id="conv-1", chat_store=store)  # the history in tether
    result = await agent("history-bot", [get_weather]).run(user_msg=prompt, memory=memory)
    kept = await store.get_messages("conv-1")
    return {"restored": len(before), "kept": len(kept), "answer": str(result),
            "first_prompt": kept[0].content if kept else None, "keys": await store.get_keys()}


async def count_visit(ctx: Context, city: str) -> str:
    """Count a visit to a city (in the agent's state, kept in its workflow Context)."""
    async with ctx.store.edit_state() as state:
        state["state"]["visits"] = state["state"].get("visits", 0) + 1
        visits = state["state"]["visits"]
    return f"Visit {visits} to {city}."


# LlamaIndex finds the Context parameter by its annotation's class (this module's are strings)
count_visit.__annotations__.update(ctx=Context, city=str)


async def resume_context(bus: Any, prompt: str) -> dict[str, Any]:
    """One turn of the session ``session-7``, its workflow Context kept in tether."""
    contexts = TetherContextStore(bus)
    bot = agent("context-bot", [count_visit])
    kept = await contexts.load("session-7", bot)
    ctx = kept or Context(bot)
    result = await bot.run(user_msg=prompt, ctx=ctx)
    await contexts.save("session-7", ctx)
    return {"restored": kept is not None, "tool_returns": [c.tool_output.content for c in result.tool_calls],
            "state": await ctx.store.get("state")}


async def next_turn() -> dict[str, Any]:
    """The conversation's next turn, in a new process."""
    tether.init()
    bus = await tether.connect()
    said = {"history": await converse(bus, "And in Lisbon?"), "context": await resume_context(bus, "And in Lisbon?")}
    await TetherContextStore(bus).delete("session-7")
    said["context"]["deleted"] = await TetherContextStore(bus).load("session-7", agent("context-bot", [])) is None
    store = TetherChatStore(bus)
    await store.delete_messages("conv-1")
    said["history"]["cleared"] = len(await store.get_messages("conv-1", status=None))
    await bus.close()
    await asyncio.to_thread(tether.adapters.flush)
    return said


if __name__ == "__main__":
    print(json.dumps(asyncio.run(next_turn() if "--continue" in sys.argv else main())))
