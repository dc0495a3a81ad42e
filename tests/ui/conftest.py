"""What the dashboard's tests share: a real stack started as users start it, and a real browser.

The stack is a nats-server of the module's own, ``tether fake-provider`` and ``tether up --url``
(worker, projector and the dashboard, from a tether.toml that points at the fake provider), each
a child process with its default settings (uvloop). The browser is Debian's ``chromium``,
driven by Playwright (never ``playwright install``: docs/testing.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import shutil
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.cli.test_processes import Child, stopped_cleanly, user_env
from tether.testing import NatsServer

ARTIFACTS = Path(__file__).parents[2] / ".artifacts" / "ui"
INSTALL = "apt-get install -y chromium"
T = TypeVar("T")


def chromium() -> str:
    """The browser's path; without one the test fails under CI and is skipped (saying why) elsewhere."""
    found = os.environ.get("TETHER_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    why = (f"no chromium on this machine, so the dashboard's browser tests cannot run: install it with "
           f"`{INSTALL}` (Debian's package; .ci/run does this), or point TETHER_TEST_CHROMIUM at a Chromium")
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(why)
    pytest.skip(why)


def on_a_thread(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run bus code beside Playwright's sync API (which owns this thread's event loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui")


@pytest.fixture(scope="module")
def nats(place: Path) -> Iterator[NatsServer]:
    with NatsServer(place / "nats") as server:
        yield server


@pytest.fixture(scope="module")
def fake(place: Path) -> Iterator[str]:
    """``tether fake-provider``: its OpenAI base URL."""
    child = Child("fake-provider", "--seed", "3", cwd=place, env=user_env())
    try:
        yield child.wait_for(r"(?m)^(http://127\.0\.0\.1:\d+/v1)$")[1]
    finally:
        stopped_cleanly(child, sig=__import__("signal").SIGINT)


@pytest.fixture(scope="module")
def up(place: Path, nats: NatsServer, fake: str) -> Iterator[Child]:
    """``tether up --url NATS --ui-port 0``: its ``url`` is the dashboard's login URL (with the token)."""
    (place / "tether.toml").write_text(
        f'[providers.openai]\nkind = "openai"\nbase_url = "{fake}"\napi_key_env = "OPENAI_API_KEY"\n\n'
        '[routes."*".retry]\nbase_delay_s = 0.05\n\n'
        '[routes."openai:gpt-4o".retry]\nmax_attempts = 1\n\n'
        '[routes."openai:gpt-4o".fallback]\ntargets = ["openai:gpt-4o-mini"]\n')
    env = user_env(TETHER_HOME=str(place / "home"), OPENAI_API_KEY="sk-fake-openai-0123456789")
    child = Child("up", "--url", nats.url, "--ui-port", "0", cwd=place, env=env)
    try:
        child.url = child.wait_for(r"ui: the dashboard is at (http://127\.0\.0\.1:\d+/\?token=\S+)")[1]
        child.wait_for("tether is up")
        assert child.on_uvloop()
        yield child
    finally:
        stopped_cleanly(child)
        assert "Traceback" not in child.output


def base(login_url: str) -> str:
    return re.sub(r"/\?token=.*$", "", login_url)
