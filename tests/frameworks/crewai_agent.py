"""CrewAI crews (one agent with one tool, one task) run by .venv-crewai's python, one scenario after
another in one process (CrewAI takes seconds to import): tests/frameworks/test_crewai.py.

The two lines a user adds are marked. The model is the fake provider (``OPENAI_BASE_URL``: each
scenario sets its faults there first and reads back what reached it), the bus ``TETHER_NATS_URL``,
the policies ``tether.toml`` in the working directory (the agent ``budget-bot`` may make one
call; the tool ``slow_lookup`` has a timeout). Prints one JSON line: per scenario, what the crew
gave or raised, the LLM events CrewAI itself saw, the upstream requests and the tools' executions.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter
from importlib.metadata import version
from typing import Any

from _scenario import faults as set_faults
from _scenario import outcomes, received

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

from crewai import Agent, Crew, Memory, Task
from crewai.events import LLMCallCompletedEvent, LLMCallFailedEvent, crewai_event_bus
from crewai.tools import BaseTool, tool

import tether
import tether.adapters
import tether.adapters.crewai
import tether.memory
from tether.adapters import _crewaipriv
from tether.adapters.crewai import _OWNERS, HOOKS, TetherMemoryStorage, llm

SEEN: Counter[str] = Counter()
RAN: Counter[str] = Counter()  # executions of each tool's body


@crewai_event_bus.on(LLMCallCompletedEvent)
def _completed(source: Any, event: Any) -> None:
    SEEN["completed"] += 1


@crewai_event_bus.on(LLMCallFailedEvent)
def _failed(source: Any, event: Any) -> None:
    SEEN["failed"] += 1


@tool("get_weather")
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


@tool("get_forecast")
def get_forecast(city: str) -> str:
    """The forecast for a city."""
    raise ValueError(f"no forecast for {city}")


@tool("slow_lookup")
def slow_lookup(city: str) -> str:
    """Look a city up in a slow archive."""
    RAN["slow_lookup"] += 1
    threading.Event().wait(1.0)  # tether.toml gives this tool 0.3 s
    return f"{city} found"


@tool("flaky_read")
def flaky_read(city: str) -> str:
    """Read a city's weather from a flaky station."""
    RAN["flaky_read"] += 1
    if RAN["flaky_read"] == 1:
        raise ConnectionError("station reset the connection")
    return f"Rain in {city}."


class CountStock(BaseTool):  # a BaseTool subclass: its _run is governed
    name: str = "count_stock"
    description: str = "Count the umbrellas in stock in a city."

    def _run(self, city: str) -> str:
        RAN["count_stock"] += 1
        return f"{40 + RAN['count_stock']} umbrellas in {city}."


@tool("slow_async_lookup")
async def slow_async_lookup(city: str) -> str:
    """Look a city up in a slow archive (an async tool)."""
    RAN["slow_async_lookup"] += 1
    await asyncio.sleep(1.0)  # tether.toml gives this tool 0.3 s
    return f"{city} found"


@tool("flaky_async_read")
async def flaky_async_read(city: str) -> str:
    """Read a city's weather from a flaky station (an async tool)."""
    RAN["flaky_async_read"] += 1
    if RAN["flaky_async_read"] == 1:
        raise ConnectionError("station reset the connection")
    return f"Rain in {city}."


class CountStockAsync(BaseTool):  # a BaseTool subclass whose _run is a coroutine, with an _arun of its own
    name: str = "count_stock_async"
    description: str = "Count the umbrellas in stock in a city."

    async def _run(self, city: str) -> str:
        RAN["count_stock_async"] += 1
        await asyncio.sleep(0)
        return f"{40 + RAN['count_stock_async']} umbrellas in {city}."

    async def _arun(self, city: str) -> str:
        RAN["count_stock_arun"] += 1
        return f"{RAN['count_stock_arun']} umbrellas counted in {city}."


class Crash(BaseException):
    """The process dies inside the tool: nothing after its start is recorded."""


@tool("send_invoice")
def send_invoice(city: str) -> str:
    """Send the weather invoice to a city."""
    RAN["send_invoice"] += 1
    if RAN["send_invoice"] == 1:
        raise Crash
    return f"invoice sent to {city}"


def scenario(name: str, faults: str, *, role: str = "weather-bot", failing_tool: bool = False,
             tools: list[Any] | None = None, options: dict[str, Any] | None = None,
             kickoff: str = "sync") -> dict[str, Any]:
    set_faults(faults)
    before = received()
    model = llm("gpt-4o-mini", tether=options)  # line 2: the model's calls under tether's policy
    agent = Agent(role=role, goal="Answer about the weather.", backstory="A forecaster.",
                  tools=tools or [get_forecast if failing_tool else get_weather], llm=model)
    task = Task(description="What is the weather in Paris?", expected_output="The weather.", agent=agent)
    crew = Crew(agents=[agent], tasks=[task], name=name)
    SEEN.clear()
    out: dict[str, Any] = {}
    try:
        out.update(ok=True, answer=(crew.kickoff() if kickoff == "sync" else asyncio.run(crew.akickoff())).raw)
    except Exception as exc:  # what the framework raised, as the agent's code sees it
        out.update(ok=False, error=f"{type(exc).__module__}.{type(exc).__name__}", message=str(exc)[:500],
                   kinds=[f"{k.__module__}.{k.__name__}" for k in type(exc).__mro__],
                   error_code=getattr(exc, "error_code", None), tool=getattr(exc, "tool", None),
                   position=getattr(exc, "position", None))
    crewai_event_bus.flush()
    out["crewai_saw"] = dict(SEEN)
    out["ran"] = dict(RAN)
    out["upstream"] = outcomes(before)
    return out


def refused(make: Any) -> str:
    try:
        make()
    except (ValueError, TypeError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "accepted"


class Stopped(Exception):
    """The crew failed: its enclosing run ends with the error."""


def resumed(role: str = "stock-bot", run_id: str = "crewai-resume-1", make: Any = None) -> dict[str, Any]:
    """A crew inside a tether run that fails after its tool ran (its second model call gets a
    persistent 500), then the same run resumed: the tool's recorded result is replayed."""
    RAN.clear()
    out: dict[str, Any] = {}
    for attempt, faults in (("crashed", "500#2-9/chat"), ("resumed", "")):
        try:
            with tether.run(agent=role, run_id=run_id, resume=attempt == "resumed"):
                out[attempt] = scenario(run_id, faults, role=role, tools=[(make or CountStock)()])
                if not out[attempt]["ok"]:
                    raise Stopped(out[attempt]["message"])  # the run ends failed, as the process would have
        except Stopped:
            pass
    return out


def arun() -> dict[str, Any]:
    """A BaseTool subclass's own _arun, called through BaseTool.arun() inside a run (no CrewAI agent
    calls it): under the tool policy too."""
    RAN.clear()
    counter = CountStockAsync()
    tether.adapters.crewai.govern(counter)
    with tether.run(agent="arun-bot", run_id="crewai-arun-1"):
        result = asyncio.run(counter.arun(city="Oslo"))
    return {"result": result, "ran": dict(RAN)}


def delegation(name: str = "delegation", faults: str = "", coworker_tools: list[Any] | None = None) -> dict[str, Any]:
    """A planner that may delegate, and a coworker (its role is what the fake provider fills a string
    argument named ``coworker`` with): the planner's task calls CrewAI's "Delegate work to coworker"."""
    set_faults(faults)
    before = received()
    coworker = Agent(role="fake coworker", goal="Answer about the weather.", backstory="A forecaster.",
                     llm=llm("gpt-4o-mini"), tools=coworker_tools or [])
    planner = Agent(role="planner", goal="Plan the day.", backstory="A planner.", llm=llm("gpt-4o-mini"),
                    allow_delegation=True)
    task = Task(description="Use delegate_work_to_coworker: what is the weather in Paris?",
                expected_output="The weather.", agent=planner)
    out: dict[str, Any] = {}
    try:
        out.update(ok=True, answer=Crew(agents=[planner, coworker], tasks=[task], name=name).kickoff().raw)
    except Exception as exc:
        out.update(ok=False, error=f"{type(exc).__module__}.{type(exc).__name__}", message=str(exc)[:500],
                   tool=getattr(exc, "tool", None), run_id=getattr(exc, "run_id", None))
    out["upstream"] = outcomes(before)
    out["ran"] = dict(RAN)
    return out


def coworker_attention() -> dict[str, Any]:
    """A coworker whose process dies inside its tool that is not idempotent (the delegation is, in
    tether.toml, so the resumed crew delegates again): the resumed crew stops with NeedsAttention
    rather than CrewAI giving the planner's model the coworker's stop as an error text."""
    RAN.clear()
    out: dict[str, Any] = {}
    try:
        with tether.run(agent="planner", run_id="crewai-coworker-attention-1"):
            delegation("coworker-attention", "", [send_invoice])
    except Crash:
        out["crashed"] = dict(RAN)
    tether.adapters.flush()
    with tether.run(agent="planner", run_id="crewai-coworker-attention-1", resume=True):
        out["resumed"] = delegation("coworker-attention", "", [send_invoice])
    return out


def delegation_resumed() -> dict[str, Any]:
    """A delegating crew inside a tether run whose last model call fails for good after the coworker
    answered, then the same run resumed: the delegation is replayed, the coworker does not work again."""
    out: dict[str, Any] = {}
    for attempt, faults in (("crashed", "500#3-9/chat"), ("resumed", "")):
        try:
            with tether.run(agent="planner", run_id="crewai-delegation-1", resume=attempt == "resumed"):
                out[attempt] = delegation("delegation-resume", faults)
                if not out[attempt]["ok"]:
                    raise Stopped(out[attempt]["message"])
        except Stopped:
            pass
    return out


def attention() -> dict[str, Any]:
    """A crew whose process dies inside a tool that is not idempotent, then its run resumed: the
    resumed crew stops at that call with tether.NeedsAttention (and sends nothing)."""
    RAN.clear()
    out: dict[str, Any] = {}
    try:
        with tether.run(agent="invoice-bot", run_id="crewai-attention-1"):
            scenario("attention", "", role="invoice-bot", tools=[send_invoice])
    except Crash:
        out["crashed"] = dict(RAN)
    tether.adapters.flush()
    try:
        with tether.run(agent="invoice-bot", run_id="crewai-attention-1", resume=True):
            out["resumed"] = scenario("attention", "", role="invoice-bot", tools=[send_invoice])
    except tether.NeedsAttention as exc:  # what the agent's code sees, if scenario() did not catch it first
        out["escaped"] = type(exc).__name__
    return out


def embed(texts: list[str]) -> list[list[float]]:
    """CrewAI's memory embedder, deterministic: words hashed into 32 buckets."""
    vectors = []
    for text in texts:
        vector = [0.0] * 32
        for word in text.lower().replace("?", "").replace(".", "").split():
            vector[sum(map(ord, word)) % 32] += 1.0
        vectors.append(vector)
    return vectors


def crew_memory() -> dict[str, Any]:
    """CrewAI's Memory on TetherMemoryStorage: two records remembered, recalled; then through a new
    tether memory connection (nothing kept in the process) recalled again, one scope forgotten."""
    before = received()
    out: dict[str, Any] = {}
    with tether.memory.Memory.connect(agent="crew-mem") as memory:
        out["bad_namespace"] = refused(lambda: TetherMemoryStorage(memory, "research"))
        storage = TetherMemoryStorage(memory, "crew:research")
        crew_memory = Memory(storage=storage, embedder=embed, llm=llm("gpt-4o-mini"))
        email = crew_memory.remember("The customer prefers email over phone.", scope="/customers/acme",
                                     categories=["contact"], importance=0.8)
        crew_memory.remember("The office closes at five.", scope="/office", categories=["hours"], importance=0.4)
        out["first"] = [m.record.content for m in crew_memory.recall("what does the customer prefer, email or phone",
                                                                        depth="shallow", limit=1)]
        out["email_id"] = email.id
        crew_memory.close()
    with tether.memory.Memory.connect(agent="crew-mem") as memory:  # a new connection: a new view of the log
        storage = TetherMemoryStorage(memory, "crew:research")
        crew_memory = Memory(storage=storage, embedder=embed, llm=llm("gpt-4o-mini"))
        out["again"] = [m.record.content for m in crew_memory.recall("what does the customer prefer, email or phone",
                                                                        depth="shallow", limit=1)]
        record = storage.get_record(email.id)
        out["record"] = {"scope": record.scope, "categories": record.categories, "importance": record.importance,
                         "embedded": record.embedding == embed([record.content])[0]}
        out["scopes"] = storage.list_scopes("/")
        out["categories"] = storage.list_categories()
        out["info"] = storage.get_scope_info("/customers").model_dump(include={"record_count", "child_scopes"})
        out["forgotten"] = crew_memory.forget(scope="/office")
        out["left"] = [r.content for r in storage.list_records()]
        out["missing"] = storage.get_record("no-such-record") is None
        out["history"] = [v.version for v in memory.history("crew:research", email.id)]
        crew_memory.close()
    out["upstream"] = received() - before
    return out


def private_api() -> dict[str, Any]:
    """CrewAI's private API tether relies on (tether.adapters._crewaipriv.HOOKS): there, and used; a
    CrewAI without one refused by name."""
    missing = [hook.name for hook in _crewaipriv.missing(_OWNERS)]
    model = llm("gpt-4o-mini")
    clients = (model._get_sync_client(), model._get_async_client())  # read here for the check; tether does not
    custom = CountStock()
    tether.adapters.crewai.govern(custom)
    stand_in = {owner: type(cls.__name__, (), {}) for owner, cls in _OWNERS.items()}  # a CrewAI that renamed them
    return {"missing": missing, "version": version("crewai"), "listed": [h.name for h in HOOKS], "transports": [
        type(c._client._transport).__name__ for c in clients],
        "run_governed": getattr(vars(custom).get("_run"), "__tether_tool__", False),
        "changed": refused(lambda: _crewaipriv.require(stand_in))}


def main() -> dict[str, Any]:
    installed = tether.init()  # line 1: runs, tasks and tool calls of every crew
    said: dict[str, Any] = {"installed": installed, "again": tether.init()}
    said["faults"] = scenario("faults", "500#1/chat,503#3/chat")
    said["persistent"] = scenario("persistent", "429/chat")
    said["budget"] = scenario("budget", "", role="budget-bot")  # tether.toml: one call for this agent
    said["budget_options"] = scenario("budget_options", "", role="options-bot",  # the same budget as llm()'s option
                                      options={"policies": {"budgets": {"run": {"*": {"calls": 1}}}}})
    said["tool_error"] = scenario("tool_error", "", failing_tool=True)
    said["tool_timeout"] = scenario("tool_timeout", "", tools=[slow_lookup])
    tether.adapters.crewai.install(idempotent_tools={"flaky_read"})  # the adapter's option
    said["tool_retry"] = scenario("tool_retry", "", tools=[flaky_read])
    said["resume"] = resumed()
    said["async_timeout"] = scenario("async_timeout", "", tools=[slow_async_lookup])
    said["async_retry"] = scenario("async_retry", "", tools=[flaky_async_read])  # tether.toml: idempotent
    said["akickoff_timeout"] = scenario("akickoff_timeout", "", tools=[slow_async_lookup], kickoff="async")
    said["async_resume"] = resumed("async-stock-bot", "crewai-resume-async", CountStockAsync)
    said["arun"] = arun()
    said["delegation"] = delegation()
    said["delegation_resume"] = delegation_resumed()
    said["coworker_attention"] = coworker_attention()
    said["attention"] = attention()
    said["memory"] = crew_memory()
    said["hooks"] = private_api()
    said["refused"] = [refused(lambda: llm("gpt-4o-mini", max_retries=3)), refused(lambda: llm("anthropic/claude")),
                       refused(lambda: llm("gpt-4o-mini", tether={"policies": 3})),
                       refused(lambda: llm("gpt-4o-mini", tether={"policy": {}})),
                       refused(lambda: tether.adapters.crewai.install(idempotent_tools="flaky_read")),
                       refused(lambda: TetherMemoryStorage(object()))]
    said["policies_taken"] = [type(llm("gpt-4o-mini", tether={"policies": p}).tether_options["policies"]).__name__
                              for p in ("tether.toml", {"budgets": {}})]
    tether.adapters.flush()
    return said


if __name__ == "__main__":
    print(json.dumps(main()))
