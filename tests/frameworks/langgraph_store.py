"""LangGraph's store API on TetherStore (tether memory) and a graph whose node writes to it; what each
gave, as JSON (test_langgraph.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore

import tether
from tether.adapters.langgraph import TetherStore
from tether.memory import AsyncMemory


class State(TypedDict):
    city: str


async def remember(state: State, *, store: BaseStore) -> dict[str, Any]:
    await store.aput(("users", "u1", "visits"), state["city"], {"city": state["city"]})
    return {}


async def main() -> dict[str, Any]:
    bus = await tether.connect()
    memory = await AsyncMemory(bus, agent="store-bot").start()
    store = TetherStore(memory)
    await store.aput(("users", "u1", "prefs"), "units", {"unit": "celsius", "lang": "fr"})
    await store.aput(("users", "u2", "prefs"), "units", {"unit": "fahrenheit", "lang": "en"})
    await store.aput(("users", "ü 3/x", "prefs"), "units", {"unit": "kelvin", "lang": "en"})  # escaped labels
    out: dict[str, Any] = {"get": (await store.aget(("users", "u1", "prefs"), "units")).value,
                           "missing": await store.aget(("users", "u1", "prefs"), "nothing")}
    everyone = await store.asearch(("users",))
    out["by_prefix"] = sorted(item.value["unit"] for item in everyone)
    out["filtered"] = [item.value["unit"] for item in await store.asearch(("users",), filter={"lang": "en"})]
    found = await store.asearch(("users",), query="fahrenheit", limit=1)
    out["query"] = [(item.namespace, item.value["unit"]) for item in found]
    out["namespaces"] = await store.alist_namespaces(prefix=("users",))
    out["depth_2"] = await store.alist_namespaces(prefix=("users",), max_depth=2)
    out["suffix"] = await store.alist_namespaces(prefix=("users", "*"), suffix=("prefs",), limit=1, offset=1)
    await store.aput(("users", "u1", "prefs"), "units", {"unit": "kelvin", "lang": "fr"})
    out["updated"] = (await store.aget(("users", "u1", "prefs"), "units")).value["unit"]
    await store.adelete(("users", "u2", "prefs"), "units")
    out["deleted"] = await store.aget(("users", "u2", "prefs"), "units")
    graph = StateGraph(State)
    graph.add_node("remember", remember)
    graph.add_edge(START, "remember")
    graph.add_edge("remember", END)
    await graph.compile(store=store).ainvoke({"city": "Lisbon"})
    again = await AsyncMemory(bus, agent="store-bot").start()  # another reader, as after a restart
    await again.catch_up()
    out["from_the_graph"] = (await TetherStore(again).aget(("users", "u1", "visits"), "Lisbon")).value
    try:
        store.get(("users", "u1", "prefs"), "units")
    except NotImplementedError as exc:
        out["sync"] = str(exc)
    await again.close()
    await memory.close()
    await bus.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), default=list))
