"""The agents LangGraph and LangChain build for the user, their tools under tether's tool policy, run by
.venv-langgraph's python (test_langgraph.py): ``create_react_agent(llm, tool_node(tools))`` (langgraph's
prebuilt agent) and ``create_agent(llm, tools, middleware=[tool_middleware(...)])`` (langchain 1.x).

For each: a run whose second model call fails for good after its tool ``charge`` completed, then the
same run resumed (the tool's recorded result replayed, not run); a tool over its timeout; an idempotent
tool retried, by ``ainvoke`` and by ``invoke``. The model is the fake provider (``OPENAI_BASE_URL``: its
faults set here), the bus ``TETHER_NATS_URL``. Each tool counts its executions; prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections import Counter
from typing import Any

from _scenario import faults as set_faults
from _scenario import outcomes, received
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

with warnings.catch_warnings():  # deprecated in favour of langchain's create_agent, and still LangGraph's
    warnings.simplefilter("ignore")
    from langgraph.prebuilt import create_react_agent

import tether
import tether.adapters
from tether.adapters.langgraph import chat_model, tool_middleware, tool_node

RAN: Counter[str] = Counter()


@tool
async def charge(amount: int) -> str:
    """Charge the card (a side effect: never to be repeated)."""
    RAN["charge"] += 1
    return f"charged {amount}"


@tool
async def slow(city: str) -> str:
    """Look a city up in a slow archive."""
    RAN["slow"] += 1
    await asyncio.sleep(5)
    return "too late"


@tool
def flaky_read(city: str) -> str:
    """Read a city's weather from a flaky station."""
    RAN["flaky_read"] += 1
    if RAN["flaky_read"] % 2 == 1:
        raise ConnectionError("station reset the connection")
    return f"Rain in {city}."


def agent(builder: str, name: str, tools: list[Any], **policy: Any) -> Any:
    """The builder's agent of ``tools`` under tether's tool policy: the public way each offers."""
    llm = chat_model(ChatOpenAI(model="gpt-4o-mini"))
    if builder == "react":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return create_react_agent(llm, tool_node(tools, **policy), name=name)
    return create_agent(llm, tools, middleware=[tool_middleware(**policy)], name=name)


async def attempt(built: Any, faults: str, *, sync: bool = False, **run: Any) -> dict[str, Any]:
    """One ``ainvoke`` of ``built`` (``invoke`` in a thread if ``sync``; inside ``tether.run(**run)`` when
    given), the fake's ``faults`` set."""
    await asyncio.to_thread(set_faults, faults)
    before = await asyncio.to_thread(received)
    out: dict[str, Any] = {}
    try:
        if run:
            async with tether.run(**run):
                result = await built.ainvoke({"messages": [("user", "Go ahead.")]})
        elif sync:  # the ToolNode calls wrap_tool_call, not awrap_tool_call
            result = await asyncio.to_thread(built.invoke, {"messages": [("user", "Go ahead.")]})
        else:
            result = await built.ainvoke({"messages": [("user", "Go ahead.")]})
        out.update(ok=True, tools=[m.content for m in result["messages"] if isinstance(m, ToolMessage)])
    except Exception as exc:  # what the framework raised, as the agent's code sees it
        out.update(ok=False, error=f"{type(exc).__module__}.{type(exc).__name__}", message=str(exc)[:300])
    out["upstream"] = await asyncio.to_thread(outcomes, before)
    out["ran"] = dict(RAN)
    return out


def reached_by_a_chat_model() -> list[str]:
    """Which of tether's handler's methods a chat model's start, a token and its end reach through
    LangChain's callback manager (none: tether records model calls at its client)."""
    from langchain_core.callbacks import CallbackManager
    from langchain_core.messages import HumanMessage
    from langchain_core.outputs import LLMResult

    from tether.adapters.langgraph import TetherCallbackHandler

    handler, reached = TetherCallbackHandler(), []
    for name in ("on_chat_model_start", "on_llm_start", "on_llm_new_token", "on_llm_end"):
        setattr(handler, name, lambda *args, name=name, **kwargs: reached.append(name))
    delattr(handler, "on_chat_model_start")  # the class's own: what LangChain calls first
    for run in CallbackManager([handler]).on_chat_model_start({}, [[HumanMessage("What is the weather?")]]):
        run.on_llm_new_token("It")
        run.on_llm_end(LLMResult(generations=[]))
    return reached


async def main() -> dict[str, Any]:
    tether.init()
    said: dict[str, Any] = {}
    for builder in ("react", "agent"):
        got: dict[str, Any] = {}
        RAN.clear()
        pay = agent(builder, f"{builder}-pay", [charge])
        run = {"agent": f"{builder}-pay", "run_id": f"lg-{builder}-pay"}
        got["crashed"] = await attempt(pay, "500#2-9/chat", **run)  # the tool ran, the next model call failed
        got["resumed"] = await attempt(pay, "", **run, resume=True)
        RAN.clear()
        got["timeout"] = await attempt(agent(builder, f"{builder}-slow", [slow], timeout_s=0.3), "")
        got["retry"] = await attempt(agent(builder, f"{builder}-read", [flaky_read], idempotent_tools={"flaky_read"}),
                                     "")
        got["sync_retry"] = await attempt(agent(builder, f"{builder}-sync", [flaky_read],
                                                idempotent_tools={"flaky_read"}), "", sync=True)
        said[builder] = got
    try:
        tool_middleware(idempotent_tools="flaky_read")
        said["refused"] = "accepted"
    except TypeError as exc:
        said["refused"] = str(exc)
    said["reached"] = reached_by_a_chat_model()
    await asyncio.to_thread(tether.adapters.flush)
    return said


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
