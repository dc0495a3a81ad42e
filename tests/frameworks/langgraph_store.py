"""LangGraph's store API on TetherStore (tether memory), async and sync, a graph whose node writes to it
(async and sync), TTLs; what each gave, as JSON (test_langgraph.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore

import tether
from tether.adapters import LoopThreadError
from tether.adapters.langgraph import TetherStore, store_namespace
from tether.memory import AsyncMemory


class State(TypedDict):
    city: str


async def remember(state: State, *, store: BaseStore) -> dict[str, Any]:
    await store.aput(("users", "u1", "visits"), state["city"], {"city": state["city"]})
    return {}


def sync_from_a_thread(store: TetherStore) -> dict[str, Any]:
    store.put(("users", "u4", "prefs"), "units", {"unit": "rankine"})
    return {"get": store.get(("users", "u4", "prefs"), "units").value,  # type: ignore[union-attr]
            "search": [item.value["unit"] for item in store.search(("users", "u4"))],
            "namespaces": store.list_namespaces(prefix=("users", "u4"))}


def count(state: State, *, store: BaseStore) -> dict[str, Any]:
    """A sync node: reads and writes the store with get / put."""
    seen = store.get(("visits",), state["city"])
    store.put(("visits",), state["city"], {"times": (seen.value["times"] if seen else 0) + 1})
    return {}


def sync_graph() -> list[int]:
    """A sync graph (invoke) on TetherStore() without a memory: tether's background bus."""
    store = TetherStore(agent="store-bot")
    graph = StateGraph(State)
    graph.add_node("count", count)
    graph.add_edge(START, "count")
    graph.add_edge("count", END)
    app = graph.compile(store=store)
    times = []
    for _ in range(2):
        app.invoke({"city": "Oslo"})
        times.append(store.get(("visits",), "Oslo").value["times"])  # type: ignore[union-attr]
    return times


async def ttl(store: TetherStore, memory: AsyncMemory) -> dict[str, Any]:
    """An item with a TTL expires; a read refreshes its TTL unless told not to."""
    await store.aput(("ttl",), "short", {"v": 1}, ttl=0.005)  # 0.3 s
    await store.aput(("ttl",), "long", {"v": 2}, ttl=10)
    await store.aput(("ttl",), "kept", {"v": 3})
    before = (await memory.get(store_namespace(("ttl",)), "long")).expires_at
    await asyncio.sleep(0.05)
    await store.aget(("ttl",), "long", refresh_ttl=False)
    unrefreshed = (await memory.get(store_namespace(("ttl",)), "long")).expires_at
    await store.aget(("ttl",), "long")  # refresh_ttl: the store's default, on
    refreshed = (await memory.get(store_namespace(("ttl",)), "long")).expires_at
    deadline = time.monotonic() + 10
    for _ in range(100):  # until it has expired (0.3 s), with a deadline
        if await store.aget(("ttl",), "short", refresh_ttl=False) is None or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    defaults = TetherStore(memory, ttl={"default_ttl": 5, "refresh_on_read": False})
    await defaults.aput(("ttl",), "default", {"v": 4})
    default = await memory.get(store_namespace(("ttl",)), "default")
    await defaults.aget(("ttl",), "default")
    return {"short": await store.aget(("ttl",), "short"), "kept": (await store.aget(("ttl",), "kept")).value,
            "unrefreshed": unrefreshed == before, "refreshed": refreshed > before,
            "default_s": (default.expires_at - default.updated_at).total_seconds(),
            "default_not_refreshed": (await memory.get(store_namespace(("ttl",)), "default")).version,
            "left": sorted(item.key for item in await store.asearch(("ttl",), refresh_ttl=False))}


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
    out["sync"] = await asyncio.to_thread(sync_from_a_thread, store)  # the memory's loop is this one
    try:
        store.get(("users", "u1", "prefs"), "units")  # on the memory's own loop thread
    except LoopThreadError as exc:
        out["on_its_loop"] = str(exc)
    out["sync_graph"] = await asyncio.to_thread(sync_graph)
    out["ttl"] = await ttl(store, memory)
    await again.close()
    await memory.close()
    await bus.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), default=list))
