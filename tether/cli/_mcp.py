"""``tether mcp``: tether memory and runs as MCP tools, over stdio or streamable HTTP.

The tools call a running gateway's HTTP API with the agent's gateway key (see
``tether.adapters.gateway._mcp``); this module parses the options and serves.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["add_commands", "run"]

_MISSING = "tether mcp needs the official MCP SDK: pip install 'tether[mcp]'"


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "mcp", help="tether memory and runs as MCP tools (stdio, or streamable HTTP with --http)",
        description="A Model Context Protocol server whose tools (memory_search, memory_write, memory_context, "
        "memory_get, runs_list, run_events) call a running tether gateway with a gateway key, so the key's "
        "agent reaches its own memory namespaces and runs only. Over stdio the key is --key or "
        "$TETHER_GATEWAY_KEY; over HTTP (--http) each client sends its own as Authorization: Bearer. "
        "Needs the mcp extra. Docs: docs/gateway.md.")
    p.add_argument("--gateway", metavar="URL",
                   help="the gateway's base URL (default: $TETHER_GATEWAY_URL, else http://127.0.0.1:8400)")
    p.add_argument("--key", help="stdio: the gateway key the tools act with (default: $TETHER_GATEWAY_KEY)")
    p.add_argument("--http", action="store_true", help="serve streamable HTTP on HOST:PORT/mcp instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="with --http: address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8410, help="with --http: port (default 8410; 0: a free one)")


async def run(args: argparse.Namespace) -> int:
    try:
        import mcp  # noqa: F401
    except ImportError:
        print(_MISSING, file=sys.stderr)
        return 2
    from tether.adapters.gateway import mcp_server

    url = args.gateway or os.environ.get("TETHER_GATEWAY_URL") or "http://127.0.0.1:8400"
    if not url.startswith(("http://", "https://")):
        print(f"--gateway must be an http(s) URL such as http://127.0.0.1:8400, not {url!r}", file=sys.stderr)
        return 2
    if args.http:
        return await _serve_http(mcp_server(url), args.host, args.port, url)
    key = args.key or os.environ.get("TETHER_GATEWAY_KEY")
    if not key:
        print("tether mcp over stdio acts with one gateway key: pass --key or set $TETHER_GATEWAY_KEY "
              "(tether gateway --new-key --agent NAME makes one)", file=sys.stderr)
        return 2
    await mcp_server(url, key).run_stdio_async()
    return 0


async def _serve_http(server: Any, host: str, port: int, gateway: str) -> int:
    import uvicorn

    from tether._sockets import listen

    sock = listen(host, port)
    bound = sock.getsockname()[1]
    app = server.streamable_http_app(host=host)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    shown = f"[{host}]" if ":" in host else host
    print(f"tether mcp listening on http://{shown}:{bound}/mcp (streamable HTTP), tools calling the gateway at "
          f"{gateway}", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])
    return 0
