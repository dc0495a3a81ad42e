"""``tether errors`` and ``tether stats``: argument parsing and output, from view files built here."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tether.cli._stats import NO_VIEWS, add_commands, parse_duration, parse_since, run
from tether.projections import ErrorsView, Item, MetricsView, Projection, ViewStore, view_path
from tether.schemas import (
    CallDeadLettered,
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    Payload,
    ToolCallCompleted,
    Usage,
)

pytestmark = pytest.mark.anyio

NOW = time.time()
RATE = ErrorInfo(type="RateLimitError", status_code=429, message="Rate limit reached for requests 7 in org-abc")
BAD = ErrorInfo(type="BadRequestError", status_code=400, message="'messages' must be a non-empty array")


def parser() -> argparse.ArgumentParser:
    def common(p: argparse.ArgumentParser) -> None:  # what tether.cli passes: --url, --home, -v
        p.add_argument("--url")
        p.add_argument("--home", type=Path)
        p.add_argument("-v", "--verbose", action="store_true")

    top = argparse.ArgumentParser(prog="tether")
    add_commands(top.add_subparsers(dest="command"), common)
    return top


async def tether(home: Path, *argv: str) -> int:
    return await run(parser().parse_args([*argv, "--home", str(home)]))


def ev(payload: Payload, ago: float, run: str = "run-1") -> Event:
    return Event.of(payload, time=datetime.fromtimestamp(NOW - ago, UTC), runid=run, agentid="bot")


def build(home: Path, view: Projection, events: Sequence[Event], *, complete: bool = True) -> None:
    store = ViewStore(view, view_path(home / "views", view.name, view.version))
    store.apply_batch([Item(i, e) for i, e in enumerate(events, 1)])
    if complete:
        store.mark_complete()
    store.close()


def failures() -> list[Event]:
    attempts = [ev(LlmCallAttemptFailed(call_id=f"c{i}", provider="openai", model="gpt-4o", attempt=1,
                                        error=RATE.model_copy(update={"message": RATE.message.replace("7", str(i))}),
                                        decision="retry"), ago, run=f"run-{i % 2}")
                for i, ago in enumerate([7200, 5400, 600, 300, 60])]
    bad = [ev(LlmCallAttemptFailed(call_id="b", provider="openai", model="gpt-4o", attempt=1, error=BAD,
                                   decision="give_up"), 7000, run="run-bad"),
           ev(LlmCallFailed(call_id="b", provider="openai", model="gpt-4o", attempts=1, error=BAD), 7000, "run-bad"),
           ev(CallDeadLettered(call_id="b", call_kind="llm", reason="not_retryable", attempts=1, error=BAD), 7000,
              "run-bad")]
    return attempts + bad


def calls() -> list[Event]:
    out = [ev(LlmCallCompleted(call_id=f"c{i}", provider="openai", model="gpt-4o", latency_ms=lat,
                               usage=Usage(input_tokens=1000, output_tokens=100)), 30)
           for i, lat in enumerate([100, 200, 300, 400])]
    out += [ev(LlmCallCompleted(call_id="m", provider="anthropic", model="claude-haiku", latency_ms=50,
                                ttft_ms=20), 7200)]
    out += [ev(ToolCallCompleted(call_id="t", tool="search", duration_ms=12), 30)]
    return out


def test_durations_and_dates() -> None:
    assert parse_duration("90s") == 90 and parse_duration("15m") == 900 and parse_duration("1.5h") == 5400
    assert parse_since("2d", now=1_000_000) == 1_000_000 - 2 * 86400
    assert parse_since("2026-01-31") == datetime(2026, 1, 31, tzinfo=UTC).timestamp()
    assert parse_since("2026-01-31T14:00+01:00") == datetime(2026, 1, 31, 13, tzinfo=UTC).timestamp()
    assert parse_since("2026-01-31T13:00:00Z") == datetime(2026, 1, 31, 13, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError, match="duration"):
        parse_since("yesterday")


@pytest.mark.parametrize("command", ["errors", "stats"])
async def test_no_views_yet_says_what_to_run(tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await tether(tmp_path, command) == 1
    err = capsys.readouterr().err
    assert NO_VIEWS in err and "tether up" in err and "tether replay" in err


async def test_errors_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path, ErrorsView(), failures())
    assert await tether(tmp_path, "errors") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["COUNT", "FIRST", "SEEN", "LAST", "SEEN", "SOURCE", "TYPE", "STATUS", "RUNS",
                                "MESSAGE"]
    assert lines[1].split()[0] == "5" and "llm:openai" in lines[1] and "RateLimitError" in lines[1]
    assert "429" in lines[1] and "Rate limit reached for requests <n> in <id>" in lines[1]
    assert "retry 5" in lines[2] and "runs run-" in lines[2]
    assert "BadRequestError" in lines[3] and "<val> must be a non-empty array" in lines[3]
    assert "give up 1" in lines[4] and "calls failed 1" in lines[4] and "dead letters 1" in lines[4]
    assert "2 group(s)" in lines[-1]


async def test_errors_json_window_source_and_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path, ErrorsView(), failures())
    assert await tether(tmp_path, "errors", "--json") == 0
    groups = json.loads(capsys.readouterr().out)
    assert [(g["error_type"], g["count"], g["runs"]) for g in groups] == [("RateLimitError", 5, 2),
                                                                          ("BadRequestError", 1, 1)]
    assert groups[0]["first_seen"].endswith("Z") and groups[0]["sample_message"].endswith("in org-abc")

    assert await tether(tmp_path, "errors", "--json", "--since", "1h") == 0
    [recent] = json.loads(capsys.readouterr().out)
    assert (recent["count"], recent["runs"]) == (3, 2)
    assert datetime.fromisoformat(recent["first_seen"]).timestamp() == pytest.approx(NOW - 7200, abs=0.01)

    assert await tether(tmp_path, "errors", "--json", "--limit", "1") == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert await tether(tmp_path, "errors", "--source", "tool") == 0
    assert capsys.readouterr().out.strip() == "no errors from tool"
    assert await tether(tmp_path, "errors", "--since", "1m") == 0
    assert capsys.readouterr().out.strip() == "no errors in that window"


async def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path, MetricsView(), calls())
    assert await tether(tmp_path, "errors", "--since", "last tuesday") == 2
    assert "--since 'last tuesday'" in capsys.readouterr().err
    assert await tether(tmp_path, "stats", "--bucket", "90s") == 2
    assert "whole minutes" in capsys.readouterr().err


async def test_stats_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path, MetricsView(), calls())
    assert await tether(tmp_path, "stats") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:7] == ["MODEL", "CALLS", "ATTEMPTS", "CALLS/S", "P50", "P95", "P99"]
    row = lines[1].split()
    assert row[:3] == ["gpt-4o", "4", "4"] and row[4:7] == ["200ms", "400ms", "400ms"]
    assert "4000→400" in lines[1]
    assert lines[2].split()[:2] == ["claude-haiku", "1"] and "20ms" in lines[2]
    assert lines[3].split()[:2] == ["TOTAL", "5"], "the LLM calls above; the tool call is under --by tool"

    assert await tether(tmp_path, "stats", "--by", "tool") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("TOOL") and lines[1].split()[:2] == ["search", "1"]
    assert lines[2].split()[:2] == ["TOTAL", "1"] and "TOKENS" not in lines[0]

    assert await tether(tmp_path, "stats", "--by", "provider", "--since", "1h") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == ["openai", "TOTAL"], "anthropic's call was 2 h ago"


async def test_stats_json_and_buckets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path, MetricsView(), calls(), complete=False)
    assert await tether(tmp_path, "stats", "--json", "--by", "provider") == 0
    captured = capsys.readouterr()
    assert "still catching up" in captured.err
    doc = json.loads(captured.out)
    assert doc["by"] == "provider" and doc["since"] is None
    rows = {r["dim"]: r for r in doc["rows"]}
    assert (rows["openai"]["calls"], rows["openai"]["latency_p50_ms"], rows["openai"]["tokens"]) == (4, 200, 4400)
    assert doc["total"]["calls"] == 5 and doc["total"]["dim_kind"] == "llm"

    assert await tether(tmp_path, "stats", "--json", "--bucket", "1m") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["dim"], r["calls"]) for r in doc["rows"]] == [("claude-haiku", 1), ("gpt-4o", 4)]
    assert all(r["bucket"] % 60 == 0 for r in doc["rows"]) and doc["total"] is None

    assert await tether(tmp_path, "stats", "--bucket", "1m") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["BUCKET", "MODEL"] and len(lines) == 4


async def test_stats_count_replayed_calls_and_cache_hits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tether.schemas import CallReplayed

    replays = [ev(CallReplayed(call_id=f"r{i}", call_kind="llm", via="cache" if i == 2 else "journal",
                               original_call_id=f"c{i}", provider="openai", model="gpt-4o",
                               usage=Usage(input_tokens=1000, output_tokens=100)), 20) for i in range(3)]
    build(tmp_path, MetricsView(), calls() + replays)
    assert await tether(tmp_path, "stats") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[-3:] == ["REPLAYED", "CACHE", "HITS"]
    row = lines[1].split()
    assert row[:3] == ["gpt-4o", "7", "4"], "a replayed call is a call that ended there, without an attempt"
    assert row[-2:] == ["2", "1"] and "4000→400" in lines[1], "no tokens spent on a replay"
    assert "REPLAYED, CACHE HITS" in out
    assert await tether(tmp_path, "stats", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["total"]["replayed"], doc["total"]["cache_hits"]) == (2, 1)
