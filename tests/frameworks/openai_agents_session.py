"""TetherSession through the SDK's Session protocol, on ``TETHER_NATS_URL``: prints what each call
returned, as JSON (tests/frameworks/test_openai_agents.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agents.memory import Session

import tether
from tether.adapters.openai_agents import TetherSession


async def main() -> dict[str, Any]:
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
    await bus.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
