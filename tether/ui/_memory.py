"""The Memory page's source: one memory client, read as one identity, and its live notices.

The dashboard reads memory only through :class:`tether.memory.AsyncMemory`, as the agent
``tether ui --memory-agent`` names (with that agent's grants) or as no agent; :func:`identity`
says which, and why. The client starts when the Memory page is first asked for; from then on
each memory event in the log becomes a ``memory`` notice on the SSE stream once the view has
applied it, only for namespaces this identity may read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tether.bus import Bus, decode_token

if TYPE_CHECKING:
    from tether.memory import AsyncMemory, Grants, MemorySettings

__all__ = ["MemorySource", "identity"]

log = logging.getLogger("tether.ui")


def identity(agent: str | None, grants: Grants) -> str:
    """Who the dashboard reads memory as, and what that lets it see (plain words for the page)."""
    if agent:
        if not grants.enabled:
            return (f"Memory is read and edited as agent {agent} (--memory-agent). [memory.grants] is not "
                    "configured, so every namespace is open to it.")
        return (f"Memory is read and edited as agent {agent} (--memory-agent), with its grants: read "
                f"{', '.join(grants.patterns(agent, 'read')) or 'nothing'}; write "
                f"{', '.join(grants.patterns(agent, 'write')) or 'nothing'}.")
    if not grants.enabled:
        return ("Memory is read and edited as no agent (the operator), as `tether memory` does without --agent: "
                "[memory.grants] is not configured, so every namespace is open. Start `tether ui --memory-agent "
                "NAME` to see only what NAME may read.")
    readable = ", ".join(grants.patterns(None, "read")) or "none"
    return ("Memory is read and edited as no agent, as `tether memory` does without --agent: [memory.grants] is "
            "configured, so only the namespaces it opens to every agent (\"*\", without {agent}) are shown: "
            f"{readable}. Start `tether ui --memory-agent NAME` to read with NAME's grants.")


class MemorySource:
    """A memory client for the dashboard, started on first use; :meth:`close` stops it."""

    def __init__(self, bus: Bus, settings: MemorySettings | None = None, agent: str | None = None) -> None:
        self.bus = bus
        self.agent = agent
        self._settings = settings
        self._memory: AsyncMemory | None = None
        self._starting = asyncio.Lock()
        self._sub: Any = None
        self._notify: Callable[[bytes], None] | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def settings(self) -> MemorySettings:
        if self._settings is None:
            from tether.memory import load_settings

            self._settings = load_settings()
        return self._settings

    @property
    def grants(self) -> Grants:
        return self.settings.grants

    def describe(self) -> str:
        return identity(self.agent, self.grants)

    def readable(self, namespace: str) -> bool:
        return self.grants.allows(self.agent, namespace, "read")

    def on_change(self, notify: Callable[[bytes], None]) -> None:
        """Where ``memory`` notices go (the SSE hub's broadcast)."""
        self._notify = notify

    async def client(self) -> AsyncMemory:
        """The memory client (started, and following the log's memory events, on first call)."""
        async with self._starting:
            if self._memory is None:
                from tether.memory import MEMORY_SUBJECTS, AsyncMemory

                memory = AsyncMemory(self.bus, agent=self.agent, settings=self.settings, source="urn:tether:ui")
                await memory.start()
                self._memory = memory
                with contextlib.suppress(Exception):  # no live notices without NATS; the page still reads
                    self._sub = await self.bus.nc.subscribe(MEMORY_SUBJECTS, cb=self._on_event)
                    self._task = asyncio.create_task(self._announce(), name="tether-ui-memory")
            return self._memory

    async def _on_event(self, msg: Any) -> None:
        token = str(msg.subject).rsplit(".", 1)[-1]
        # a namespace too long for a subject token is cut to a hash ("~"): it cannot be checked, only announced
        namespace = decode_token(token)
        if "~" in token or namespace is None or self.readable(namespace):
            self._changed.set()

    async def _announce(self) -> None:
        """After memory events: wait until the view has them, then tell the pages (no namespace named)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            memory = self._memory
            if memory is None:
                return
            try:
                seq = await memory.catch_up(timeout=10.0)
            except Exception:  # the next event tries again
                log.debug("memory view did not catch up", exc_info=True)
                continue
            if self._notify is not None:
                self._notify(f"event: memory\ndata: {json.dumps({'view': 'memory', 'seq': seq})}\n\n".encode())
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._memory is not None:
            memory, self._memory = self._memory, None
            await memory.close()
