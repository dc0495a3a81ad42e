"""Memory tests: a fresh nats-server per test (memory views read every memory event of the
stream, and each test has its own keystore), a temporary TETHER_HOME, and clients on them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from tether.bus import Bus, connect
from tether.memory import AsyncMemory, Grants, MemorySettings
from tether.testing import NatsServer

Opener = Callable[..., Coroutine[Any, Any, AsyncMemory]]


def settings_for(home: Path, **kw: Any) -> MemorySettings:
    return MemorySettings(view_dir=home / "memory", keyfile=home / "keys" / "memory-keys.json", **kw)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TETHER_HOME", str(home))
    monkeypatch.delenv("TETHER_NATS_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
async def open_memory(fresh_nats_server: NatsServer, home: Path) -> AsyncIterator[Opener]:
    """``await open_memory(agent=..., grants=..., view_dir=...)``: a started client; all closed at the end."""
    opened: list[tuple[AsyncMemory, Bus]] = []

    async def opener(*, grants: Grants | None = None, settings: MemorySettings | None = None,
                     **kw: Any) -> AsyncMemory:
        bus = await connect(fresh_nats_server.url, home=home)
        memory = AsyncMemory(bus, settings=settings or settings_for(home), grants=grants, **kw)
        opened.append((memory, bus))
        return await memory.start()

    yield opener
    for memory, bus in reversed(opened):
        await memory.close()
        await bus.close()


@pytest.fixture
async def memory(open_memory: Opener) -> AsyncMemory:
    return await open_memory(agent="bot")
