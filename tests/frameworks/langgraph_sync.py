"""A sync graph (``invoke``, ``get_state``, ``get_state_history``) on TetherCheckpointer with tether's
background bus, the sync thread operations, and a sync call made on its own bus's loop: what each
gave, as JSON (test_langgraph.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

import tether
import tether.adapters
from tether.adapters.langgraph import TetherCheckpointer


class State(TypedDict):
    n: int


def graph(saver: TetherCheckpointer) -> Any:
    built = StateGraph(State)
    built.add_node("inc", lambda state: {"n": state["n"] + 1})
    built.add_edge(START, "inc")
    built.add_edge("inc", END)
    return built.compile(checkpointer=saver)


def main() -> dict[str, Any]:
    saver = TetherCheckpointer(bucket="sync-graphs")  # tether's background bus, on a thread of its own
    app = graph(saver)
    one: Any = {"configurable": {"thread_id": "sync-1"}}
    first, second = str(uuid.uuid4()), str(uuid.uuid4())  # kept in each checkpoint's metadata
    out: dict[str, Any] = {"first": app.invoke({"n": 1}, {**one, "metadata": {"run_id": first}})["n"],
                           "second": app.invoke({"n": 10}, {**one, "metadata": {"run_id": second}})["n"]}
    out["state"] = app.get_state(one).values["n"]
    out["history"] = len(list(app.get_state_history(one)))
    saver.copy_thread("sync-1", "sync-2")
    two: Any = {"configurable": {"thread_id": "sync-2"}}
    out["copied"] = app.get_state(two).values.get("n")
    out["copied_history"] = len(list(saver.list(two)))
    saver.prune(["sync-2"], strategy="keep_latest")
    out["pruned_history"] = len(list(saver.list(two)))
    out["pruned_state"] = app.get_state(two).values.get("n")
    out["run_ids"] = sorted({str(t.metadata.get("run_id")) for t in saver.list(one)}) == sorted([first, second])
    saver.delete_for_runs([first])
    out["run_ids_left"] = sorted({str(t.metadata.get("run_id")) for t in saver.list(one)}) == [second]
    out["after_delete_for_runs"] = len(list(saver.list(one)))
    saver.delete_thread("sync-1")
    out["deleted"] = app.get_state(one).values

    async def on_its_loop() -> dict[str, Any]:  # a sync call on the thread of the bus's own loop
        bus = await tether.connect()
        try:
            graph(TetherCheckpointer(bus)).invoke({"n": 1}, {"configurable": {"thread_id": "sync-3"}})
        except Exception as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        finally:
            await bus.close()
        return {"error": None}

    out["on_its_loop"] = asyncio.run(on_its_loop())
    tether.adapters.flush()
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
