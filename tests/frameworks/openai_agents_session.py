"""TetherSession through the SDK's Session protocol, on ``TETHER_NATS_URL``: prints what each call
returned, as JSON (tests/frameworks/test_openai_agents.py). Then the behaviours the SDK's own session
tests check (its tests/memory/test_session.py, which the wheel does not ship), through its three runner
methods with the model double it ships (``agents.testing.ScriptedModel``): a second turn sees the
first, sessions stay apart, a list input is appended after the history, ``limit`` keeps the latest."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from agents import Agent, Runner, set_trace_processors
from agents.memory import Session
from agents.testing import ScriptedModel, assistant_message

import tether
from tether.adapters.openai_agents import TetherSession


async def main() -> dict[str, Any]:
    set_trace_processors([])  # no export of traces to OpenAI from a test
    bus = await tether.connect()
    session, other = TetherSession("a/b c", bus), TetherSession("a/b", bus)
    out: dict[str, Any] = {"is_session": isinstance(session, Session), "empty": await session.get_items(),
                           "pop_empty": await session.pop_item()}
    await session.add_items([{"role": "user", "content": str(i)} for i in range(5)])
    await other.add_items([{"role": "user", "content": "other"}])
    out["all"] = [item["content"] for item in await session.get_items()]
    out["last_two"] = [item["content"] for item in await session.get_items(limit=2)]
    out["popped"] = (await session.pop_item() or {}).get("content")
    out["after_pop"] = [item["content"] for item in await session.get_items()]
    await session.clear_session()
    out["cleared"] = await session.get_items()
    out["other"] = [item["content"] for item in await other.get_items()]
    out["limits"] = await limits(TetherSession("limits", bus))
    for method in ("run", "run_sync", "run_streamed"):
        started = time.monotonic()
        out[method] = await through_runner(method, bus)
        out[method]["seconds"] = time.monotonic() - started
    await bus.close()
    return out


async def limits(session: TetherSession) -> dict[str, Any]:
    await session.add_items([{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(6)])
    return {str(n): [item["content"] for item in await session.get_items(limit=n)] for n in (0, 2, 4, 10)}


async def run_with(method: str, agent: Agent[Any], question: Any, session: TetherSession) -> str:
    if method == "run":
        result = await Runner.run(agent, question, session=session)
    elif method == "run_sync":  # in a thread of its own, with an event loop of its own
        result = await asyncio.to_thread(Runner.run_sync, agent, question, session=session)
    else:
        streamed = Runner.run_streamed(agent, question, session=session)
        async for _ in streamed.stream_events():
            pass
        return str(streamed.final_output)
    return str(result.final_output)


async def through_runner(method: str, bus: Any) -> dict[str, Any]:
    """Two turns in one session, one in another, then a list input: what the model was sent each time."""
    model = ScriptedModel([[assistant_message(text)] for text in ("San Francisco", "California", "Dogs", "Cats",
                                                                  "Listed")])
    agent = Agent(name="test", model=model)
    first, second = TetherSession(f"{method}-1", bus), TetherSession(f"{method}-2", bus)
    answers = [await run_with(method, agent, "What city is the Golden Gate Bridge in?", first),
               await run_with(method, agent, "What state is it in?", first),
               await run_with(method, agent, "I like dogs", second),
               await run_with(method, agent, "What did I say I like?", first)]
    listed = TetherSession(f"{method}-3", bus)
    await listed.add_items([{"role": "user", "content": "Earlier message"},
                            {"role": "assistant", "content": "Saved reply"}])
    answers.append(await run_with(method, agent, [{"role": "user", "content": "Test message"}], listed))
    sent = [[_content(item) for item in call.input] for call in model.calls]
    return {"answers": answers, "sent": sent}


def _content(item: Any) -> str:
    content = item.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return str(content)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
