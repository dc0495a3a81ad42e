"""A graph whose ``ToolNode`` is ``tool_node(...)`` (tether's tool policy), run by .venv-langgraph's python
(test_langgraph.py). ``crash``: inside ``tether.run(run_id=...)`` the tools ``charge`` and ``note`` (which
returns a ``Command``) complete, then the process dies in the next node. ``resume``: the same run resumed
(both replayed, not run), then a
tool over its timeout, an idempotent tool retried and a non-idempotent one not (a sync graph), then a
graph with a subgraph. Each tool counts its executions in ``counts.json``; prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command

import tether
import tether.adapters
from tether.adapters.langgraph import tool_node

COUNTS = Path("counts.json")


def counted(name: str) -> int:
    counts = json.loads(COUNTS.read_text()) if COUNTS.exists() else {}
    counts[name] = counts.get(name, 0) + 1
    COUNTS.write_text(json.dumps(counts))
    return int(counts[name])


@tool
async def charge(amount: int) -> str:
    """Charge the card (a side effect: never to be repeated)."""
    counted("charge")
    return f"charged {amount}"


@tool
async def note(text: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
    """Note something in the graph's state (a tool returning a Command)."""
    counted("note")
    return Command(update={"messages": [ToolMessage(f"noted {text}", tool_call_id=tool_call_id, name="note")]})


@tool
async def slow(city: str) -> str:
    """A tool that hangs."""
    counted("slow")
    await asyncio.sleep(5)
    return "too late"


@tool
def flaky_read(city: str) -> str:
    """Reads; fails once with a dropped connection."""
    if counted("flaky_read") == 1:
        raise ConnectionError("upstream reset")
    return f"read {city}"


@tool
def flaky_write(city: str) -> str:
    """Writes; fails once with a dropped connection."""
    if counted("flaky_write") == 1:
        raise ConnectionError("upstream reset")
    return f"wrote {city}"


def calls(*wanted: tuple[str, dict[str, Any]]) -> Any:
    """A node standing for the model: it asks for the tool calls ``wanted``."""
    return lambda state: {"messages": [AIMessage("", tool_calls=[
        {"name": name, "args": args, "id": f"call-{i}-{name}"} for i, (name, args) in enumerate(wanted)])]}


def graph(name: str, tools: Any, after: Any = None, *wanted: tuple[str, dict[str, Any]]) -> Any:
    built = StateGraph(MessagesState)
    built.add_node("model", calls(*wanted))
    built.add_node("tools", tools)
    built.add_edge(START, "model")
    built.add_edge("model", "tools")
    if after is None:
        built.add_edge("tools", END)
    else:
        built.add_node("after", after)
        built.add_edge("tools", "after")
        built.add_edge("after", END)
    return built.compile(name=name)


def die(state: MessagesState) -> dict[str, Any]:
    os._exit(3)  # the process dies after the tool completed: nothing after it is recorded


def seen(state: MessagesState) -> dict[str, Any]:
    return {}


def tool_messages(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"content": m.content, "id": m.tool_call_id, "status": m.status, "name": m.name}
            for m in result["messages"] if isinstance(m, ToolMessage)]


def error(exc: BaseException) -> dict[str, Any]:
    return {"error": f"{type(exc).__module__}.{type(exc).__name__}", "message": str(exc)[:300]}


class Sub(TypedDict):
    n: int


def subgraphs() -> Any:
    """A parent graph with a subgraph as a node, and a node that invokes another subgraph."""
    inner = StateGraph(Sub)
    inner.add_node("inc", lambda s: {"n": s["n"] + 1})
    inner.add_edge(START, "inc")
    inner.add_edge("inc", END)
    child = inner.compile(name="child")
    nested = StateGraph(Sub)
    nested.add_node("child", child)
    nested.add_edge(START, "child")
    nested.add_edge("child", END)
    middle = nested.compile(name="middle")
    parent = StateGraph(Sub)
    parent.add_node("direct", child)
    parent.add_node("calls", lambda s: middle.invoke(s))
    parent.add_edge(START, "direct")
    parent.add_edge("direct", "calls")
    parent.add_edge("calls", END)
    return parent.compile(name="parent")


async def main(mode: str) -> dict[str, Any]:
    tether.init()
    pay = graph("pay-bot", tool_node([charge, note]), die if mode == "crash" else seen, ("charge", {"amount": 5}),
                ("note", {"text": "paid"}))
    async with tether.run(agent="pay-bot", run_id="job-1", resume=mode == "resume"):
        result = await pay.ainvoke({"messages": [("user", "pay 5")]})
    out: dict[str, Any] = {"replayed": tool_messages(result)}

    stuck = graph("slow-bot", tool_node([slow], timeout_s=0.3), None, ("slow", {"city": "Oslo"}))
    started = time.perf_counter()
    try:
        await stuck.ainvoke({"messages": [("user", "weather?")]})
        out["timeout"] = {"error": None}
    except Exception as exc:
        out["timeout"] = error(exc)
    out["timeout"]["seconds"] = time.perf_counter() - started

    def sync_graphs() -> dict[str, Any]:  # a sync graph: ToolNode's wrap_tool_call
        tools = tool_node([flaky_read, flaky_write], idempotent_tools={"flaky_read"})
        got: dict[str, Any] = {}
        reads = graph("read-bot", tools, None, ("flaky_read", {"city": "Oslo"}))
        got["read"] = tool_messages(reads.invoke({"messages": [("user", "read")]}))
        writes = graph("write-bot", tools, None, ("flaky_write", {"city": "Oslo"}))
        try:
            writes.invoke({"messages": [("user", "write")]})
            got["write"] = {"error": None}
        except Exception as exc:
            got["write"] = error(exc)
        got["subgraph"] = subgraphs().invoke({"n": 0})["n"]
        return got

    out.update(await asyncio.to_thread(sync_graphs))
    out["counts"] = json.loads(await asyncio.to_thread(COUNTS.read_text))
    await asyncio.to_thread(tether.adapters.flush)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
