"""An MCP server over stdio (the ``mcp`` package's ``MCPServer``), started by an agent script's MCP client
(tests/frameworks/openai_agents_scenarios.py). Each tool counts its executions in ``<directory>/<tool>``
(one line per call), the directory its first argument: what the test reads to see a call not run again."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

COUNTS = Path(sys.argv[1])
server = MCPServer("weather")


def count(tool: str) -> int:
    with (COUNTS / tool).open("a") as file:
        file.write("ran\n")
    return len((COUNTS / tool).read_text().splitlines())


@server.tool()
async def mcp_slow_forecast(city: str) -> str:
    """The forecast for a city (slow)."""
    count("mcp_slow_forecast")
    await asyncio.sleep(30)
    return f"Rain in {city}."


@server.tool()
async def mcp_flaky_forecast(city: str) -> str:
    """The forecast for a city (its first call hangs)."""
    if count("mcp_flaky_forecast") == 1:
        await asyncio.sleep(30)
    return f"Snow in {city}."


@server.tool()
def mcp_book_table(city: str) -> str:
    """Book a table in a city (a side effect: must not run twice)."""
    count("mcp_book_table")
    return f"Booked in {city}."


if __name__ == "__main__":
    server.run("stdio")
