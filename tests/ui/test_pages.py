"""The pages' reads and their markup, on a real traces view folded by tether's own projection, through
the dashboard's ASGI app in-process (the browser tests drive the same app served by ``tether up``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.projections import Item, TracesView, view_path
from tether.schemas import Event, RunFinished, RunStarted
from tether.ui._app import build_app
from tether.ui._security import Guard

pytestmark = pytest.mark.anyio


def fold(directory: Path, events: list[Event]) -> None:
    view = TracesView()
    store = view.open_store(view_path(directory, view.name, view.version))
    store.apply_batch([Item(n, e) for n, e in enumerate(events, 1)], notify=False)
    store.mark_complete()
    store.close()


def run(run_id: str, agent: str, name: str, minutes: float, status: str | None = "ok") -> list[Event]:
    """A run started ``minutes`` after two hours ago, *now* (not at import: `since` filters are read against
    the clock when the page is asked, and a module imported minutes earlier would shift every run)."""
    at = datetime.now(UTC) - timedelta(hours=2) + timedelta(minutes=minutes)
    out = [Event.of(RunStarted(name=name), runid=run_id, agentid=agent, time=at)]
    if status:
        out.append(Event.of(RunFinished(status=status, duration_ms=1500.0), runid=run_id, agentid=agent,
                            time=at + timedelta(seconds=1.5)))
    return out


@pytest.fixture
async def client(tmp_path: Path) -> Any:
    fold(tmp_path, [*run("r-alpha", "writer", "Nightly digest", 0), *run("r-beta", "planner", "plan", 60, "error"),
                    *run("r-gamma", "writer", "<script>alert(1)</script>", 100, None)])
    app: Any = build_app(None, tmp_path, Guard(hosts=frozenset({"dashboard"})))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as c:
        yield c


def ids(html: str) -> list[str]:
    import re

    return re.findall(r"data-run='([^']+)'", html)


async def test_runs_filters_and_search(client: httpx.AsyncClient) -> None:
    assert ids((await client.get("/fragments/runs")).text) == ["r-gamma", "r-beta", "r-alpha"]
    assert ids((await client.get("/fragments/runs", params={"agent": "writer"})).text) == ["r-gamma", "r-alpha"]
    assert ids((await client.get("/fragments/runs", params={"status": "error"})).text) == ["r-beta"]
    assert ids((await client.get("/fragments/runs", params={"status": "running"})).text) == []
    assert ids((await client.get("/fragments/runs", params={"status": "interrupted"})).text) == ["r-gamma"], \
        "open and quiet for 20 minutes"
    assert ids((await client.get("/fragments/runs", params={"q": "DIGEST"})).text) == ["r-alpha"]
    assert ids((await client.get("/fragments/runs", params={"since": "30m"})).text) == ["r-gamma"]
    none = (await client.get("/fragments/runs", params={"q": "nothing-like-it"})).text
    assert ids(none) == [] and "no runs match the filters" in none
    page = await client.get("/", params={"agent": "planner"})
    assert ids(page.text) == ["r-beta"] and 'value="planner"' in page.text, "the page keeps its filters"


async def test_a_bad_since_says_what_to_write(client: httpx.AsyncClient) -> None:
    bad = await client.get("/fragments/runs", params={"since": "yesterday"})
    assert bad.status_code == 200 and "give an ISO date or time" in bad.text and "30m, 12h, 7d" in bad.text


async def test_what_runs_record_is_escaped(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


async def test_an_unknown_run_says_so(client: httpx.AsyncClient) -> None:
    page = await client.get("/runs/no-such-run")
    assert page.status_code == 200 and "no run or call no-such-run in the traces view" in page.text


async def test_without_views_each_page_says_how_to_get_them(tmp_path: Path) -> None:
    app: Any = build_app(None, tmp_path / "none", Guard(hosts=frozenset({"dashboard"})))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as c:
        for path in ("/", "/cost", "/latency", "/errors", "/breakers", "/runs/r1"):
            page = await c.get(path)
            assert page.status_code == 200 and "run `tether up`" in page.text, path


class NatsAway:
    """A bus whose server is gone: every JetStream request fails."""

    class js:  # the attribute the dashboard reads
        @staticmethod
        async def pull_subscribe(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("nats: connection closed")

        @staticmethod
        async def get_msg(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("nats: connection closed")


async def test_with_nats_away_the_dlq_and_a_span_say_so(tmp_path: Path) -> None:
    fold(tmp_path, run("r-alpha", "writer", "digest", 0))
    app: Any = build_app(NatsAway(), tmp_path, Guard(hosts=frozenset({"dashboard"})))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as c:
        dlq = await c.get("/dlq")
        assert dlq.status_code == 200 and "the DLQ stream could not be read" in dlq.text and "is NATS up" in dlq.text
        span = await c.get("/fragments/runs/r-alpha/spans/r-alpha")
        assert span.status_code == 200 and "invoke_agent writer" in span.text
        assert "the log could not be read for this span&#x27;s events (ConnectionError" in span.text


def test_the_cost_chart_has_every_hour_and_a_lone_hour_gets_neighbours() -> None:
    from tether.ui._queries import hourly

    lone = hourly({7200: {"hour": 7200, "usd": 0.5, "calls": 1}})
    assert [(h["hour"], h["usd"]) for h in lone] == [(3600, 0.0), (7200, 0.5), (10800, 0.0)]
    gap = hourly({0: {"hour": 0, "usd": 1.0, "calls": 1}, 3 * 3600: {"hour": 3 * 3600, "usd": 2.0, "calls": 2}})
    assert [h["usd"] for h in gap] == [0.0, 1.0, 0.0, 0.0, 2.0, 0.0]
    assert hourly({}) == []
    far = {0: {"hour": 0, "usd": 1.0, "calls": 1}, 10**8: {"hour": 10**8, "usd": 1.0, "calls": 1}}
    assert len(hourly(far)) == 2  # years apart: left sparse, not 27,000 empty hours


async def test_a_run_page_shows_a_replayed_call(tmp_path: Path) -> None:
    from tether.schemas import CallReplayed, LlmCallRequested, Usage

    at = datetime.now(UTC) - timedelta(minutes=5)
    events = [*run("r-resumed", "writer", "resumed", 0),
              Event.of(LlmCallRequested(call_id="c9", provider="openai", model="gpt-4o"), runid="r-resumed",
                       agentid="writer", time=at),
              Event.of(CallReplayed(call_id="c9", call_kind="llm", via="journal", original_call_id="c1",
                                    provider="openai", model="gpt-4o", usage=Usage(input_tokens=10)),
                       runid="r-resumed", agentid="writer", time=at)]
    fold(tmp_path, events)
    app: Any = build_app(None, tmp_path, Guard(hosts=frozenset({"dashboard"})))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as c:
        page = await c.get("/fragments/runs/r-resumed")
    assert page.status_code == 200 and "replayed from call c1" in page.text
