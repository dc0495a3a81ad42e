"""Serving the dashboard: uvicorn inside the caller's event loop (``tether ui``, ``tether up``, a test)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from tether._sockets import listen
from tether._uvicornpriv import QuietServer
from tether.bus import Bus

from ._app import build_app
from ._live import Live
from ._memory import MemorySource
from ._security import Guard, bind_refusal, is_loopback
from ._views import ViewFiles

if TYPE_CHECKING:
    from tether.memory import MemorySettings

__all__ = ["DEFAULT_PORT", "UiServer"]

DEFAULT_PORT = 8470


class UiServer:
    """The dashboard on ``host:port`` (port 0: a free one) until :meth:`stop`.

    ``token``: required for every action, and for reads too when ``host`` is not loopback
    (where it must be given: ``ValueError`` otherwise); on loopback one is made up when none
    is given. :attr:`login_url` is the URL to open (it carries the token once, into a cookie).
    The Memory page reads (and edits) memory with ``memory``'s settings (default: tether.toml's
    ``[memory]``) as ``memory_agent``, with its grants (None: as no agent; see ``_memory.identity``).
    """

    def __init__(self, bus: Bus, views_dir: Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 token: str | None = None, memory: MemorySettings | None = None,
                 memory_agent: str | None = None) -> None:
        refusal = bind_refusal(host, token)
        if refusal:
            raise ValueError(refusal)
        self.bus = bus
        self.views_dir = views_dir
        self.host = host
        self.port = port
        self.guard = Guard(token_for_reads=not is_loopback(host)) if token is None else \
            Guard(token=token, token_for_reads=not is_loopback(host))
        self.live = Live(bus, ViewFiles(views_dir))
        self.memory = MemorySource(bus, memory, memory_agent)
        self._server: QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def login_url(self) -> str:
        return f"{self.url}/?token={self.guard.token}"

    async def start(self) -> UiServer:
        sock = listen(self.host, self.port, backlog=256)
        self.port = sock.getsockname()[1]
        if is_loopback(self.host):
            self.guard.hosts = frozenset(f"{name}:{self.port}" for name in ("127.0.0.1", "localhost", "[::1]"))
        await self.live.start()
        app = build_app(self.bus, self.views_dir, self.guard, self.live, self.memory)
        config = uvicorn.Config(app, http="httptools", lifespan="off", log_config=None, access_log=False,
                                server_header=False, proxy_headers=False, timeout_graceful_shutdown=2)
        self._server = server = QuietServer(config)
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name=f"tether-ui:{self.port}")
        while not server.started:
            if self._task.done():
                self._server = None
                sock.close()
                await self.live.stop()
                await self.memory.close()
                await self._task
                raise RuntimeError("the dashboard did not start")
            await asyncio.sleep(0.005)
        return self

    async def stop(self) -> None:
        """Close the live streams, then stop serving. The bus stays open: it is the caller's."""
        server, task = self._server, self._task
        self._server = self._task = None
        await self.live.stop()
        try:
            if server is None or task is None:
                return
            server.should_exit = True
            server.wake.set()
            await task
        finally:
            await self.memory.close()

    async def __aenter__(self) -> UiServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

