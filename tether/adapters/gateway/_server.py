"""Serving the gateway: uvicorn (with the httptools parser) inside the caller's event loop.

The gateway shares its loop with the bus it publishes on, so :class:`GatewayServer` runs
uvicorn as a task of the running loop (in ``tether gateway``, ``tether up`` or a test) and
leaves signal handling to its owner.
"""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

from tether._sockets import listen
from tether._uvicornpriv import QuietServer
from tether.bus import Bus

from ._app import Gateway
from ._config import GatewayConfig

__all__ = ["GatewayServer"]


class GatewayServer:
    """The gateway listening on ``host:port`` (port 0: a free one), until :meth:`stop`.

    ``async with GatewayServer(config, bus) as server:`` then point agents at
    ``server.url + "/v1"`` (OpenAI clients) or ``server.url`` (Anthropic clients).
    ``grace_s``: how long requests in flight (streams) may go on once stopping.
    """

    def __init__(self, config: GatewayConfig, bus: Bus, *, host: str | None = None, port: int | None = None,
                 grace_s: float = 10.0, gateway: Gateway | None = None) -> None:
        self.config = config
        self.host = host if host is not None else config.host
        self._port = port if port is not None else config.port
        self.grace_s = grace_s
        self.gateway = gateway if gateway is not None else Gateway(config, bus)
        self._server: QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port``: the Anthropic base URL; add ``/v1`` for OpenAI clients."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    async def start(self) -> GatewayServer:
        if self._server is not None:
            raise RuntimeError("the gateway is already running")
        await self.gateway.start()
        sock = listen(self.host, self._port)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self.gateway.app, http="httptools", lifespan="off", log_config=None,
                                access_log=False, server_header=False, proxy_headers=False,
                                timeout_keep_alive=75, timeout_graceful_shutdown=max(1, round(self.grace_s)))
        self._server = server = QuietServer(config)
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name=f"tether-gateway:{self._port}")
        while not server.started:
            if self._task.done():
                self._server = None
                sock.close()
                await self._task
                raise RuntimeError("the gateway did not start")
            await asyncio.sleep(0.005)
        return self

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (``grace_s``), publish their events,
        close the upstream pool. The bus stays open: it is the caller's."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        server.wake.set()
        try:
            await task
        finally:
            try:
                with contextlib.suppress(Exception):  # NATS gone: what is left is in the outbox
                    await self.gateway.hub.flush(timeout=10)
            finally:
                await self.gateway.aclose()

    async def __aenter__(self) -> GatewayServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

