"""langgraph-checkpoint-conformance's suite against TetherCheckpointer on ``TETHER_NATS_URL``, each
test on a bucket of its own; prints the report as JSON (tests/frameworks/test_langgraph.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from langgraph.checkpoint.conformance import checkpointer_test, validate

import tether
from tether.adapters.langgraph import TetherCheckpointer


async def main() -> dict[str, Any]:
    bus = await tether.connect()
    made = 0

    @checkpointer_test(name="TetherCheckpointer")
    async def saver() -> AsyncIterator[TetherCheckpointer]:
        nonlocal made
        made += 1
        yield TetherCheckpointer(bus, bucket=f"conformance-{made}")

    report = await validate(saver)
    await bus.close()
    return {"passed_all_base": report.passed_all_base(), **report.to_dict()}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), default=str))
