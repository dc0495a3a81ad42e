"""`tether runs`, `tether trace` and `tether cost`, run on views folded from hand-built events."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tether.cli._views import NO_VIEWS, add_commands, parse_since, run
from tether.projections import CostLedger, Item, Projection, TracesView, ViewStore, view_path
from tether.schemas import (
    CallDeadLettered,
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    RunFinished,
    RunStarted,
    Usage,
)

from ..projections._runs import Run

pytestmark = pytest.mark.anyio

A, B = Run("run-a", agent="bot"), Run("run-b", agent="helper")
EVENTS = [
    A(RunStarted(name="ask"), 0),
    A(LlmCallRequested(call_id="c1", provider="openai", model="gpt-4o"), 1),
    A(LlmCallAttemptFailed(call_id="c1", provider="openai", model="gpt-4o", attempt=1, latency_ms=120,
                           error=ErrorInfo(type="RateLimitError", status_code=429, message="slow down"),
                           decision="retry", retry_in_s=0.5), 1.2),
    A(LlmCallCompleted(call_id="c1", provider="openai", model="gpt-4o", attempt=2, latency_ms=300,
                       usage=Usage(input_tokens=1200, output_tokens=80, cached_input_tokens=1024)), 2),
    A(LlmCallRequested(call_id="c2", provider="openai", model="house-model"), 3),
    A(LlmCallCompleted(call_id="c2", provider="openai", model="house-model", usage=Usage(input_tokens=10)), 3.5),
    A(LlmCallRequested(call_id="c3", provider="openai", model="gpt-4o"), 4),
    A(LlmCallFailed(call_id="c3", provider="openai", model="gpt-4o", attempts=1,
                    error=ErrorInfo(type="BadRequestError", status_code=400, message="bad temperature")), 4.2),
    A(CallDeadLettered(call_id="c3", call_kind="llm", reason="not_retryable", attempts=1), 4.2),
    A(RunFinished(status="error"), 5),
    B(RunStarted(name="crashes"), 60),
    B(LlmCallRequested(call_id="k1", provider="openai", model="gpt-4o-mini"), 61),
]


def write_views(directory: Path, events: Sequence[Event] = EVENTS, *, complete: bool = True) -> None:
    view: Projection
    for view in (TracesView(), CostLedger()):
        store = ViewStore(view, view_path(directory, view.name, view.version))
        store.apply_batch([Item(seq, e) for seq, e in enumerate(events, 1)])
        if complete:
            store.mark_complete()
        store.close()


def parser() -> argparse.ArgumentParser:
    def common(p: argparse.ArgumentParser) -> None:  # as tether.cli's
        p.add_argument("--url")
        p.add_argument("--home", type=Path)
        p.add_argument("-v", "--verbose", action="store_true")

    root = argparse.ArgumentParser(prog="tether")
    add_commands(root.add_subparsers(dest="command"), common)
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    write_views(tmp_path / "home" / "views")
    return tmp_path / "home"


async def tether(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await run(parser().parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_runs_lists_newest_first_with_counts_and_cost(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await tether(capsys, "runs", "--home", str(home))
    assert code == 0
    header, b, a, footer = out.splitlines()
    assert header.split() == ["RUN", "AGENT", "STATUS", "STARTED", "TOOK", "EVENTS", "LLM", "TOOL", "ERR",
                              "TOKENS", "IN/OUT", "COST"]
    assert b.split()[:3] == ["run-b", "helper", "interrupted"], "open, and quiet since 2026-01-01"
    assert a.split()[:3] == ["run-a", "bot", "error"] and "5.00s" in a and "1,210/80" in a
    assert a.rstrip().endswith("*"), "a run with an unpriced call is flagged"
    assert "1 call(s) unpriced" in footer and "`tether resume RUN` resumes an interrupted run" in footer

    code, out, _ = await tether(capsys, "runs", "--home", str(home), "--status", "running", "--json",
                                "--heartbeat-s", "1e10")
    [row] = json.loads(out)
    assert (row["run_id"], row["status"], row["llm_calls"]) == ("run-b", "running", 1)
    assert row["started_at"] == "2026-01-01T12:01:00+00:00"
    code, out, _ = await tether(capsys, "runs", "--home", str(home), "--agent", "nobody")
    assert out.strip() == "no runs matching the filters yet"


async def test_trace_shows_the_tree_with_timings_errors_and_running_spans(home: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await tether(capsys, "trace", "run-a", "--home", str(home))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["+0ms", "invoke_agent", "bot", "error"]
    assert "├─ chat gpt-4o  ok  1.00s  1,200 in (1,024 cached) / 80 out" in lines[1]
    assert "2 attempts" in lines[1] and "call c1" in lines[1]
    assert "│  ├─ attempt 1 gpt-4o  error  120ms  RateLimitError (429): slow down  → retry" in lines[2]
    assert "backoff  wait 500ms" in lines[3]
    assert "chat house-model" in out and "unpriced" in out
    assert "BadRequestError (400): bad temperature" in out and "dead_letter not_retryable  error" in out

    code, out, _ = await tether(capsys, "trace", "run-b", "--home", str(home))
    assert "└─ chat gpt-4o-mini  RUNNING (never finished)" in out and "invoke_agent helper  interrupted" in out
    assert "1 span(s) RUNNING: started and never finished" in out and "tether resume run-b" in out

    code, out, _ = await tether(capsys, "trace", "run-a", "--home", str(home), "--json")
    [root] = json.loads(out)
    assert root["span_id"] == "run-a" and [c["span_id"] for c in root["children"]] == ["c1", "c2", "c3"]
    assert root["children"][0]["children"][0]["attributes"]["error.type"] == "RateLimitError"
    assert root["children"][0]["ended_at"] == "2026-01-01T12:00:02+00:00"

    code, _, err = await tether(capsys, "trace", "no-such-run", "--home", str(home))
    assert code == 1 and "no run or call 'no-such-run'" in err


async def test_cost_totals_with_unpriced_calls_flagged(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await tether(capsys, "cost", "--home", str(home))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["MODEL", "CALLS", "INPUT", "CACHED", "OUTPUT", "USD", "UNPRICED"]
    assert lines[1].split()[:5] == ["gpt-4o", "1", "1,200", "1,024", "80"]
    assert lines[2].split() == ["house-model", "1", "10", "0", "0", "unpriced", "1"]
    assert lines[3].split()[0] == "TOTAL" and lines[3].split()[-2].endswith("*")
    assert "1 call(s) unpriced" in lines[4]

    code, out, _ = await tether(capsys, "cost", "--home", str(home), "--by", "agent", "--json")
    doc = json.loads(out)
    [bot] = doc["rows"]
    assert (doc["by"], bot["agent"], bot["calls"], bot["unpriced"]) == ("agent", "bot", 2, 1)
    assert doc["total"]["usd"] == pytest.approx(bot["usd"]) and bot["usd"] > 0

    code, out, _ = await tether(capsys, "cost", "--home", str(home), "--by", "day", "--since", "2026-01-01")
    assert out.splitlines()[1].split()[0] == "2026-01-01"
    code, out, _ = await tether(capsys, "cost", "--home", str(home), "--since", "2026-01-02")
    assert out.startswith("no priced calls since 2026-01-02T00:00+00:00")
    code, _, err = await tether(capsys, "cost", "--home", str(home), "--since", "last tuesday")
    assert code == 2 and "expected an ISO date" in err


async def test_without_views_it_says_how_to_get_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["runs"], ["trace", "x"], ["cost"]):
        code, out, err = await tether(capsys, *argv, "--home", str(tmp_path / "empty"))
        assert code == 1 and out == ""
        assert NO_VIEWS in err and "no views yet: run `tether up` (it runs the projector) or `tether replay`" in err


async def test_a_view_still_being_built_is_read_with_a_note(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    write_views(tmp_path / "elsewhere", complete=False)
    code, out, err = await tether(capsys, "runs", "--views", str(tmp_path / "elsewhere"), "--json")
    assert code == 0 and len(json.loads(out)) == 2
    assert "still being built" in err


def test_since_takes_dates_times_and_spans_back() -> None:
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    assert parse_since("12h", now=now) == now - timedelta(hours=12)
    assert parse_since("30m", now=now) == now - timedelta(minutes=30)
    assert parse_since("2w", now=now) == now - timedelta(weeks=2)
    assert parse_since("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_since("2026-03-01T08:30+02:00") == datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="30m, 12h, 7d"):
        parse_since("soon")


async def test_replayed_calls_and_cache_hits_show_with_what_they_saved(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from tether.schemas import CallReplayed

    R = Run("run-r", agent="bot")
    u = Usage(input_tokens=1000, output_tokens=100)
    events = [R(RunStarted(name="first"), 0),
              R(LlmCallRequested(call_id="p1", provider="openai", model="gpt-4o"), 1),
              R(LlmCallCompleted(call_id="p1", provider="openai", model="gpt-4o", usage=u), 2),
              R(RunStarted(name="again", resumed=True), 3),
              R(LlmCallRequested(call_id="r1", provider="openai", model="gpt-4o"), 4),
              R(CallReplayed(call_id="r1", call_kind="llm", via="journal", original_call_id="p1", provider="openai",
                             model="gpt-4o", usage=u, position=0), 4),
              R(LlmCallRequested(call_id="h1", provider="openai", model="gpt-4o"), 5),
              R(CallReplayed(call_id="h1", call_kind="llm", via="cache", original_call_id="p1", provider="openai",
                             model="gpt-4o", usage=u), 5),
              R(RunFinished(status="ok"), 6)]
    home = tmp_path / "home"
    write_views(home / "views", events)
    code, out, _ = await tether(capsys, "cost", "--home", str(home))
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["MODEL", "CALLS", "INPUT", "CACHED", "OUTPUT", "USD", "UNPRICED", "REPLAYED", "CACHE",
                                "HITS", "SAVED"]
    cells = lines[1].split()
    assert cells[:5] == ["gpt-4o", "3", "1,000", "0", "100"] and cells[-3:-1] == ["1", "1"]
    paid = float(cells[5].lstrip("$"))
    assert float(cells[-1].lstrip("$")) == pytest.approx(2 * paid, abs=0.0001)
    code, out, _ = await tether(capsys, "trace", "run-r", "--home", str(home))
    assert code == 0 and "replayed from call p1" in out and "cache hit from call p1" in out and "saved $" in out
    code, out, _ = await tether(capsys, "runs", "--home", str(home))
    assert code == 0 and "2 call(s) answered from the record" in out
    _, out, _ = await tether(capsys, "runs", "--home", str(home), "--json")
    [run] = json.loads(out)
    assert run["replayed_calls"] == 2 and run["saved_usd"] == pytest.approx(2 * paid, abs=0.0001)
