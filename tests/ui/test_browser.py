"""The dashboard in a real browser (headless Chromium), served by ``tether up`` as users run it.

Each page is saved as a screenshot under ``.artifacts/ui/`` (docs/testing.md).
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.cli.test_processes import Child, set_faults
from tether.bus import connect
from tether.middleware import CallFailed, DurableCalls
from tether.schemas import Event, RunStarted
from tether.testing import NatsServer

from .conftest import ARTIFACTS, base, on_a_thread

pytestmark = [pytest.mark.nats, pytest.mark.slow]

AGENT = "ui-agent"
CHAT = [{"role": "user", "content": "What is JetStream?"}]
FAULTS = "429#1=gpt-4o-mini,503=gpt-4o,400=o3-mini"  # a retry, a fallback, a dead letter (400: not retried)


async def a_run(nats: NatsServer, home: Path, fake: str, *, dead_letter: bool = False) -> tuple[str, str | None]:
    """A run with a rate limit retried, a tool call and a fallback (and a dead letter); its id, the dead call's."""
    set_faults(fake, FAULTS)
    dead = None
    try:
        async with await connect(nats.url, home=home) as bus, DurableCalls(bus) as calls:
            @tether.tool(bus=bus, name="lookup")
            async def lookup(q: str) -> dict[str, Any]:
                return {"hits": 1, "q": q}

            async with tether.run(bus=bus, agent=AGENT, name="browser test") as run:
                body = {"messages": CHAT, "max_tokens": 16}
                await calls.llm("openai", "gpt-4o-mini", body, runid=run.run_id, agentid=AGENT)  # 429, retried
                await lookup("jetstream")
                await calls.llm("openai", "gpt-4o", body, runid=run.run_id, agentid=AGENT)  # 503, fallback
                if dead_letter:
                    try:
                        await calls.llm("openai", "o3-mini", body, runid=run.run_id, agentid=AGENT)
                    except CallFailed as exc:
                        dead = exc.call_id
                    assert dead is not None, "the 400 dead-letters the call"
    finally:
        set_faults(fake, "")
    return run.run_id, dead


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def live(page: Any) -> None:
    """Wait until the page's SSE stream is open (the header says ``live``)."""
    page.wait_for_selector("#live.ok", timeout=10_000)


def test_the_runs_page_loads_and_a_run_appears_live_without_a_reload(browser: Any, up: Child, nats: NatsServer,
                                                                    place: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(up.url)  # the login URL: the token goes into a cookie, the address loses it
        assert page.url == base(up.url) + "/"
        assert page.title().startswith("Runs")
        live(page)
        page.evaluate("window.notReloaded = true")
        run_id = "live-" + secrets.token_hex(4)

        async def publish() -> None:
            async with await connect(nats.url, home=place / "caller") as bus:
                await bus.publish(Event.of(RunStarted(name="published"), runid=run_id, agentid=AGENT))

        on_a_thread(publish())
        published = time.monotonic()
        page.wait_for_selector(f"tr[data-run='{run_id}']", timeout=1_000)  # within a second, or this fails
        took = time.monotonic() - published
        assert page.evaluate("window.notReloaded") is True, "the row came without a reload"
        assert page.inner_text(f"tr[data-run='{run_id}'] .st") == "running"
        lag = page.inner_text("#lag")
        assert "traces view" in lag and ("up to date" in lag or "behind the log" in lag)
        shot(page, "runs")
        assert took < 1.0
        page.fill("#filters input[name=q]", run_id)  # search as you type
        page.wait_for_function("document.querySelectorAll('#runs tr[data-run]').length === 1", timeout=5_000)
        page.select_option("#filters select[name=status]", "ok")  # the published run is still running
        page.wait_for_selector("#runs p.dim:has-text('no runs match the filters')", timeout=5_000)
        page.select_option("#filters select[name=status]", "")
        page.fill("#filters input[name=q]", "")
        page.wait_for_selector(f"tr[data-run='{run_id}']", timeout=5_000)
        page.fill("#filters input[name=agent]", "nobody-runs-this")  # each field filters on its own
        page.wait_for_selector("#runs p.dim:has-text('no runs match the filters')", timeout=5_000)
        assert page.evaluate("window.notReloaded") is True
    finally:
        page.close()


def test_a_runs_trace_shows_a_retry_a_fallback_and_a_tool_call(browser: Any, up: Child, nats: NatsServer,
                                                               fake: str, place: Path) -> None:
    run_id, _ = on_a_thread(a_run(nats, place / "caller", fake))
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(up.url)
        page.goto(base(up.url) + f"/runs/{run_id}")
        live(page)
        page.wait_for_selector("tr[data-kind='fallback']", timeout=15_000)  # live: the page fills as it folds
        page.wait_for_selector("tr[data-kind='run'] .st.ok", timeout=15_000)
        retry = page.inner_text("tr[data-kind='attempt']:has(.decision.retry)")
        assert "RateLimitError (429)" in retry and "→ retry" in retry
        fallback = page.inner_text("tr[data-kind='attempt']:has(.decision.fallback)")
        assert "(503)" in fallback
        assert "fallback openai:gpt-4o-mini" in page.inner_text("tr[data-kind='fallback']")
        assert "execute_tool lookup" in page.inner_text("tr[data-kind='tool']")
        assert page.locator("tr[data-kind='llm']").count() == 2
        bars = page.locator("tr[data-kind='llm'] .bar")
        assert bars.count() == 2 and all(b.get_attribute("style") for b in bars.all()), "the waterfall's bars"
        page.click("tr[data-kind='tool']")
        page.wait_for_selector("#detail h3:has-text('tether.tool.call.requested')")
        assert "jetstream" in page.inner_text("#detail")
        page.click("tr[data-kind='llm']:has-text('gpt-4o-mini') >> nth=0")
        page.wait_for_selector("#detail h3:has-text('tether.llm.call.completed')")
        assert "What is JetStream?" in page.inner_text("#detail"), "the request as stored"
        shot(page, "trace")
        for path, name, ready in (("/cost", "cost", ".chart .uplot"), ("/latency", "latency", ".chart .uplot"),
                                  ("/errors", "errors", "table.errors"), ("/breakers", "breakers", "h1")):
            page.goto(base(up.url) + path)
            page.wait_for_selector(ready, timeout=15_000)
            shot(page, name)
        page.goto(base(up.url) + "/errors")
        assert "RateLimitError" in page.inner_text("table.errors")
    finally:
        page.close()


def test_a_dead_letter_redriven_from_the_page_completes(browser: Any, up: Child, nats: NatsServer, fake: str,
                                                        place: Path) -> None:
    run_id, dead = on_a_thread(a_run(nats, place / "caller", fake, dead_letter=True))
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(up.url)
        page.goto(base(up.url) + "/dlq")
        live(page)
        row = f"tr[data-call='{dead}']"
        page.wait_for_selector(row, timeout=15_000)
        assert "BadRequestError" in page.inner_text(row)
        shot(page, "dead-letters")
        page.click(f"{row} button.redrive")  # the fault is gone: this time the call succeeds
        page.wait_for_selector("#result .ok", timeout=10_000)
        new_call = re.search(r"redriven as call (\S+)", page.inner_text("#result"))
        assert new_call, page.inner_text("#result")
        page.wait_for_selector(row, state="detached", timeout=10_000)  # gone from the list, no reload
        page.goto(base(up.url) + f"/runs/{run_id}")
        page.wait_for_selector(f"tr[data-span='{new_call[1]}'] .st.ok", timeout=20_000)
        assert "o3-mini" in page.inner_text(f"tr[data-span='{new_call[1]}']")
        shot(page, "redriven")
    finally:
        page.close()


def test_a_dead_letter_purged_from_the_page_is_gone(browser: Any, up: Child, nats: NatsServer, fake: str,
                                                    place: Path) -> None:
    _, dead = on_a_thread(a_run(nats, place / "caller", fake, dead_letter=True))
    page = browser.new_page()
    try:
        page.goto(up.url)
        page.goto(base(up.url) + "/dlq")
        row = f"tr[data-call='{dead}']"
        page.wait_for_selector(row, timeout=15_000)
        page.on("dialog", lambda dialog: dialog.accept())  # "Delete dead letter N for good?"
        page.click(f"{row} button.purge")
        page.wait_for_selector("#result .ok:has-text('purged 1 dead letter')", timeout=10_000)
        page.wait_for_selector(row, state="detached", timeout=10_000)
    finally:
        page.close()
