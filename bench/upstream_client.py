"""The gateway's upstream client alone: its own HTTP/1.1 client (httptools) vs aiohttp, side by side.

One fake provider in a process of its own; in this process, on uvloop (as the CLI runs),
the same requests (a chat completion, a 16-token stream) go one at a time through the
gateway's ``HttpPool`` and through an ``aiohttp.ClientSession`` set up as tether's
``ProviderHttp`` (pooled keep-alive, no decompression, no proxy lookup per request), the
two alternating in blocks. Reported per request: the client's CPU (``time.process_time``;
the provider runs elsewhere) and wall time, medians of the blocks, and the ratio
aiohttp / own. bench/adapters.py measures the whole gateway; this is the part the client
is (docs/benchmarks.md, Gateway upstream).

    .venv/bin/python bench/upstream_client.py [--blocks 8] [--block 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import uvloop

from tether.adapters.gateway._http import HttpPool, Origin

Send = Callable[[bytes], Awaitable[None]]
HEADERS = [("content-type", "application/json"), ("authorization", "Bearer sk-bench"), ("accept-encoding", "identity")]


def request(stream: bool) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "max_tokens": 16, "stream": stream,
                       "messages": [{"role": "user", "content": "What is 6 times 7?"}]}).encode()


async def measure(url: str, blocks: int, block: int) -> dict[str, dict[str, float]]:
    pool, origin = HttpPool(), Origin.of(url)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100), auto_decompress=False,
                                    timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=10))

    async def own(body: bytes) -> None:
        response = await pool.request("POST", origin, "/chat/completions", HEADERS, body, 10.0)
        while await response.next_chunk() is not None:
            pass
        await response.aclose()

    async def with_aiohttp(body: bytes) -> None:
        response = await session.post(url + "/chat/completions", data=body, headers=HEADERS, allow_redirects=False,
                                      skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"))
        while await response.content.readany():
            pass
        response.release()

    clients: dict[str, Send] = {"own": own, "aiohttp": with_aiohttp}
    samples: dict[str, list[tuple[float, float]]] = {}
    try:
        for send in clients.values():  # connections, imports, caches
            for _ in range(50):
                await send(request(False))
                await send(request(True))
        for _ in range(blocks):
            for name, send in clients.items():
                for kind in ("chat", "stream"):
                    body = request(kind == "stream")
                    cpu, wall = time.process_time(), time.perf_counter()
                    for _ in range(block):
                        await send(body)
                    samples.setdefault(f"{kind} {name}", []).append(
                        ((time.process_time() - cpu) * 1000 / block, (time.perf_counter() - wall) * 1000 / block))
    finally:
        await pool.aclose()
        await session.close()
    out: dict[str, dict[str, float]] = {}
    for key, values in samples.items():
        out[key] = {"cpu_ms": round(statistics.median(v[0] for v in values), 4),
                    "wall_ms": round(statistics.median(v[1] for v in values), 4),
                    "cpu_ms_min": round(min(v[0] for v in values), 4),
                    "cpu_ms_max": round(max(v[0] for v in values), 4)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=8, help="blocks per client and kind (default 8)")
    parser.add_argument("--block", type=int, default=200, help="requests in a block (default 200)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    child = subprocess.Popen([sys.executable, "-m", "tether", "fake-provider", "--seed", "1"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the fake provider did not start: {url!r}")
        result: dict[str, Any] = uvloop.run(measure(url, args.blocks, args.block))
    finally:
        child.terminate()
        child.wait(10)
    for kind in ("chat", "stream"):
        own, other = result[f"{kind} own"], result[f"{kind} aiohttp"]
        result[f"{kind} aiohttp/own"] = {"cpu": round(other["cpu_ms"] / own["cpu_ms"], 2),
                                         "wall": round(other["wall_ms"] / own["wall_ms"], 2)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for kind in ("chat", "stream"):
        for name in ("own", "aiohttp"):
            row = result[f"{kind} {name}"]
            print(f"{kind:6} {name:8} CPU {row['cpu_ms']:.3f} ms/request (blocks {row['cpu_ms_min']:.3f}-"
                  f"{row['cpu_ms_max']:.3f})  wall {row['wall_ms']:.3f} ms")
        ratio = result[f"{kind} aiohttp/own"]
        print(f"{kind:6} aiohttp / own: CPU x{ratio['cpu']}, wall x{ratio['wall']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
