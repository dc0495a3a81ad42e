"""A sync ``invoke`` of a graph on TetherCheckpointer: the error it raises, as JSON (test_langgraph.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

import tether
from tether.adapters.langgraph import TetherCheckpointer


class State(TypedDict):
    n: int


def main() -> dict[str, Any]:
    bus = asyncio.run(tether.connect())
    graph = StateGraph(State)
    graph.add_node("inc", lambda state: {"n": state["n"] + 1})
    graph.add_edge(START, "inc")
    graph.add_edge("inc", END)
    app = graph.compile(checkpointer=TetherCheckpointer(bus))
    try:
        app.invoke({"n": 1}, {"configurable": {"thread_id": "sync"}})
    except NotImplementedError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None}


if __name__ == "__main__":
    print(json.dumps(main()))
