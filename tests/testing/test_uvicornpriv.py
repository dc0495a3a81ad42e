"""uvicorn's internals as tether uses them (``tether/_uvicornpriv.py``), checked against the installed uvicorn.

These run in ``make test`` and ``make test-lowest``: a uvicorn release that changes one fails here,
naming it and what tether uses it for. A real server on a loopback port, raw sockets as clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import socket
import time
from collections.abc import Callable, Generator
from typing import Any

import pytest
import uvicorn

from tether._uvicornpriv import HOOKS, QuietServer, StoppingServer, request_transport

from .. import _hooks as hooks

pytestmark = pytest.mark.anyio


def relied_on(*names: str) -> contextlib.AbstractContextManager[None]:
    return hooks.relied_on(HOOKS, *names)


class _Seen:
    def __init__(self) -> None:
        self.transports: list[Any] = []
        self.hang = asyncio.Event()


def _app(seen: _Seen) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.transports.append(request_transport(receive))
        if scope["path"] == "/hang":
            await seen.hang.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


class _Spy(StoppingServer):
    """Notes whether uvicorn called the overridden hooks."""

    called: set[str]

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        self.called.add("capture_signals")
        with super().capture_signals():
            yield

    async def main_loop(self) -> None:
        self.called.add("main_loop")
        await super().main_loop()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.called.add("shutdown")
        await super().shutdown(sockets)


async def _until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not done():  # noqa: ASYNC110 (uvicorn sets a flag, no event)
            await asyncio.sleep(0.005)


async def _serve(seen: _Seen, *, grace_s: float) -> tuple[_Spy, asyncio.Task[None], int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    config = uvicorn.Config(_app(seen), http="httptools", lifespan="off", log_config=None, access_log=False)
    server = _Spy(config, grace_s=grace_s)
    server.called = set()
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await _until(lambda: server.started)
    return server, task, sock.getsockname()[1]


async def _get(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


def test_the_hooks_are_on_uvicorns_server() -> None:
    with relied_on("capture_signals"):
        assert inspect.isfunction(vars(uvicorn.Server).get("capture_signals")), "no capture_signals method"
    with relied_on("main_loop", "on_tick"):
        assert inspect.iscoroutinefunction(vars(uvicorn.Server).get("main_loop"))
        on_tick = vars(uvicorn.Server).get("on_tick")
        assert inspect.iscoroutinefunction(on_tick) and list(inspect.signature(on_tick).parameters) == [
            "self", "counter"]
    with relied_on("shutdown"):
        assert list(inspect.signature(uvicorn.Server.shutdown).parameters) == ["self", "sockets"]


async def test_uvicorn_calls_the_hooks_as_tether_expects() -> None:
    seen = _Seen()
    handler = signal.getsignal(signal.SIGINT)
    server, task, port = await _serve(seen, grace_s=0.3)
    try:
        with relied_on("capture_signals", "main_loop"):
            assert {"capture_signals", "main_loop"} <= server.called
            assert signal.getsignal(signal.SIGINT) is handler, "uvicorn took SIGINT from the owner of the loop"
        with relied_on("transport"):
            reader, writer = await _get(port, "/ok")
            assert (await reader.read(1024)).endswith(b"ok")
            writer.close()
            [transport] = seen.transports
            assert callable(getattr(transport, "abort", None)) and transport.get_extra_info("socket") is not None
        with relied_on("shutdown"):
            reader, writer = await _get(port, "/hang")
            await _until(lambda: len(seen.transports) == 2)
            assert server.servers and server.server_state.connections
            started = time.monotonic()
            server.should_exit = True
            server.wake.set()
            async with asyncio.timeout(5):
                await task
            assert "shutdown" in server.called
            assert time.monotonic() - started < 2.0, "stopping took uvicorn's own time, not tether's grace"
            try:  # closed (or reset) after the grace period, not answered
                answer = await reader.read(1024)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", f"a request still hanging at the end of the grace period was answered: {answer!r}"
            writer.close()
    finally:
        seen.hang.set()
        if not task.done():
            server.should_exit = True
            server.wake.set()
            await asyncio.wait({task}, timeout=5)


class _Timed(QuietServer):
    ended = 0.0

    async def main_loop(self) -> None:
        await super().main_loop()
        self.ended = time.monotonic()


async def test_a_quiet_server_stops_as_soon_as_it_is_woken() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = _Timed(uvicorn.Config(_app(_Seen()), lifespan="off", log_config=None))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await _until(lambda: server.started)
    await asyncio.sleep(0.15)  # in the middle of a wait between two ticks
    with relied_on("main_loop", "on_tick"):
        started = time.monotonic()
        server.should_exit = True
        server.wake.set()
        async with asyncio.timeout(5):
            await task
        assert server.ended - started < 0.05, "the main loop waited for its next tick to stop"
