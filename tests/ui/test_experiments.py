"""The Experiments page, on a real eval view folded by tether's own projection, through the
dashboard's ASGI app in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.eval import EvalView
from tether.projections import Item, view_path
from tether.schemas import ErrorInfo, Event, ExperimentStarted, ScoreRecorded, TrialCompleted
from tether.ui._app import build_app
from tether.ui._security import Guard

pytestmark = pytest.mark.anyio


def fold(directory: Path, events: list[Event]) -> None:
    view = EvalView()
    store = view.open_store(view_path(directory, view.name, view.version))
    store.apply_batch([Item(n, e) for n, e in enumerate(events, 1)], notify=False)
    store.mark_complete()
    store.close()


@pytest.fixture
async def client(tmp_path: Path) -> Any:
    fold(tmp_path, [
        Event.of(ExperimentStarted(experiment="exp-<b>", dataset="qa", dataset_seq=7,
                                   variant={"model": "gpt-4o", "params": {"temperature": 0}}, agent="bots:answer",
                                   replay=True)),
        Event.of(TrialCompleted(experiment="exp-<b>", item_id="q1", run_id="run-1", output="<script>x</script>",
                                latency_ms=120.0, cost_usd=0.0004)),
        Event.of(TrialCompleted(experiment="exp-<b>", item_id="q2", run_id="run-2",
                                error=ErrorInfo(type="RuntimeError"), latency_ms=5.0)),
        Event.of(ScoreRecorded(experiment="exp-<b>", item_id="q1", scorer="exact", value=1.0, passed=True)),
        Event.of(ScoreRecorded(experiment="exp-<b>", item_id="q2", scorer="exact", value=0.0, passed=False,
                               reason="the agent failed")),
        Event.of(ScoreRecorded(experiment="exp-<b>", item_id="q1", scorer="similarity", value=0.5, passed=True,
                               metadata={"kind": "numeric"})),
        Event.of(ScoreRecorded(experiment="online:support", item_id="run-9", scorer="no_dead_letters", value=1.0,
                               passed=True, run_id="run-9")),
    ])
    app: Any = build_app(None, tmp_path, Guard(hosts=frozenset({"dashboard"})))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as c:
        yield c


async def test_the_experiments_and_one_experiment(client: httpx.AsyncClient) -> None:
    page = (await client.get("/experiments")).text
    assert "data-experiment='exp-&lt;b&gt;'" in page and "exp-<b>" not in page
    assert "exact: pass 1/2; similarity: mean 0.5" in page and "model=gpt-4o, temperature=0" in page
    assert "online:support" in page and "no_dead_letters: pass 1/1" in page
    detail = (await client.get("/experiments/exp-%3Cb%3E")).text
    assert "dataset qa as of seq 7" in detail and "replay: tool results from the log" in detail
    assert "<script>x</script>" not in detail and "&lt;script&gt;" in detail
    assert "href='/runs/run-1'" in detail and "RuntimeError" in detail and "✗ 0" in detail
    online = (await client.get("/experiments/online:support")).text
    assert "href='/runs/run-9'" in online
    missing = (await client.get("/experiments/nope")).text
    assert "no experiment nope in the eval view" in missing


async def test_without_the_eval_view_the_page_says_how_to_get_it(tmp_path: Path) -> None:
    app: Any = build_app(None, tmp_path / "none", Guard(hosts=frozenset({"dashboard"})))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as c:
        page = await c.get("/experiments")
        assert page.status_code == 200 and "run `tether up`" in page.text
