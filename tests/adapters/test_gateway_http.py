"""The gateway's upstream HTTP/1.1 client against scripted servers: keep-alive, stale connections,
no hidden resend, timeouts, broken and malformed answers, bodies delimited by the connection's end,
back-pressure. Every test runs on the standard loop and on uvloop (what the CLI runs)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop

from tether.adapters.gateway._http import HttpPool, Origin, UpstreamConnectionError, UpstreamTimeout

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param(("asyncio", {}), id="asyncio"),
                        pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class Scripted:
    handler: Handler
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def origin(self) -> Origin:
        assert self.server is not None
        return Origin.of(f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            await self.handler(reader, writer, number)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader, scripted: Scripted) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    found = re.search(rb"content-length: *(\d+)", head, re.I)
    body = await reader.readexactly(int(found[1]) if found else 0)
    scripted.requests.append(head + body)
    return body


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Handler], Awaitable[Scripted]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Scripted:
        made = Scripted(handler)
        made.server = await asyncio.start_server(made.serve, "127.0.0.1", 0)
        servers.append(made.server)
        return made

    yield start
    for server in servers:
        server.close()


async def body_of(pool: HttpPool, origin: Origin, timeout: float = 5.0) -> tuple[int, bytes]:
    response = await pool.request("POST", origin, "/chat", [("content-type", "application/json")], b"{}", timeout)
    parts = []
    while (chunk := await response.next_chunk()) is not None:
        parts.append(chunk)
    await response.aclose()
    return response.status, b"".join(parts)


async def test_keep_alive_and_the_request_on_the_wire(scripted: Callable[[Handler], Awaitable[Scripted]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader, server)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    server = await scripted(handler)
    pool = HttpPool()
    assert await body_of(pool, server.origin) == (200, b"{}")
    assert await body_of(pool, server.origin) == (200, b"{}")
    assert server.connections == 1, "the connection was kept alive"
    assert server.requests[0].startswith(b"POST /v1/chat HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"content-length: 2\r\n\r\n{}" in server.requests[0]
    await pool.aclose()


async def test_runs_on_the_loop_under_test(anyio_backend: tuple[str, dict[str, object]]) -> None:
    expected = "uvloop" if anyio_backend[1] else "asyncio"
    assert type(asyncio.get_running_loop()).__module__.split(".")[0] == expected


async def test_a_connection_the_server_closed_is_not_written_to(
        scripted: Callable[[Handler], Awaitable[Scripted]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")  # keep-alive, then closed
        await writer.drain()

    server = await scripted(handler)
    pool = HttpPool()
    assert await body_of(pool, server.origin) == (200, b"ok")
    await asyncio.sleep(0.05)  # the close is seen: connection_lost
    assert await body_of(pool, server.origin) == (200, b"ok")
    time.sleep(0.05)  # noqa: ASYNC251 - the close arrives while the loop is blocked: only the socket knows
    assert await body_of(pool, server.origin) == (200, b"ok")
    assert server.connections == 3 and len(server.requests) == 3, "each request sent once, on a live connection"
    await pool.aclose()


async def test_a_request_the_server_may_have_read_is_never_resent(
        scripted: Callable[[Handler], Awaitable[Scripted]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        if n == 1:
            await read_request(reader, server)  # reads the second request, then closes without answering
            return
        await asyncio.sleep(1)

    server = await scripted(handler)
    pool = HttpPool()
    assert await body_of(pool, server.origin) == (200, b"ok")
    with pytest.raises(UpstreamConnectionError, match="before it answered"):
        await body_of(pool, server.origin)  # the caller's policy decides whether to send it again
    assert server.connections == 1 and len(server.requests) == 2
    assert await body_of(pool, server.origin) == (200, b"ok")  # a fresh connection
    assert server.connections == 2
    await pool.aclose()


async def test_timeouts_and_refusals(scripted: Callable[[Handler], Awaitable[Scripted]]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, server)
        await asyncio.sleep(5)

    server = await scripted(silent)
    pool = HttpPool()
    with pytest.raises(UpstreamTimeout):
        await body_of(pool, server.origin, timeout=0.1)
    closed = Origin("http", "127.0.0.1", 9, "")  # the discard port: nobody listens
    with pytest.raises(UpstreamConnectionError):
        await body_of(pool, closed)
    await pool.aclose()


async def test_broken_and_malformed_answers(scripted: Callable[[Handler], Awaitable[Scripted]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, server)
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")  # then the connection ends
        elif n == 2:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")  # no length
        await writer.drain()

    server = await scripted(handler)
    pool = HttpPool()
    with pytest.raises(UpstreamConnectionError, match="before its answer was complete"):
        await body_of(pool, server.origin)
    with pytest.raises(UpstreamConnectionError, match="not valid HTTP"):
        await body_of(pool, server.origin)
    assert await body_of(pool, server.origin) == (200, b"until the end"), "a body delimited by the connection's end"
    await pool.aclose()


async def test_a_stream_closed_early_is_not_reused(scripted: Callable[[Handler], Awaitable[Scripted]]) -> None:
    chunk = b"data: " + b"x" * 60_000 + b"\n\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader, server)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(40):  # 2.4 MB: more than the client queues before pausing
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    server = await scripted(handler)
    pool = HttpPool()
    response = await pool.request("POST", server.origin, "/s", [], b"", 5.0)
    first = await response.next_chunk()
    assert first and first.startswith(b"data: ")
    await response.aclose()
    status, body = await body_of(pool, server.origin)
    assert status == 200 and len(body) == 40 * len(chunk), "back-pressure lost nothing"
    assert server.connections == 2, "the connection closed mid-stream was not reused"
    await pool.aclose()
