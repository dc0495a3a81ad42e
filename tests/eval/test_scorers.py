"""The scorers, without a bus: each on outputs that pass and outputs that fail."""

from __future__ import annotations

from typing import Any

import pytest

import tether.eval as ev
from tether.eval import Case, RunTrace, Score
from tether.schemas import (
    CallDeadLettered,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    RunFinished,
    RunStarted,
    ToolCallCompleted,
    ToolCallRequested,
    Usage,
)
from tether.schemas import ErrorInfo as Err

pytestmark = pytest.mark.anyio


async def score(scorer: ev.Scorer, output: Any, expected: Any = None, trace: RunTrace | None = None) -> Score:
    return await scorer.score(Case("q", output, expected, trace, "item-1"))


async def test_text_scorers() -> None:
    assert (await score(ev.exact(), " Paris ", "Paris")).passed
    assert not (await score(ev.exact(), "paris", "Paris")).passed
    assert (await score(ev.exact(ignore_case=True), "paris", "Paris")).passed
    assert (await score(ev.exact(), {"a": 1}, {"a": 1})).passed
    assert (await score(ev.contains("PARIS"), "It is Paris.")).passed
    assert not (await score(ev.contains(), "It is Lyon.", "Paris")).passed
    assert (await score(ev.regex(r"\b\d{3}\b"), "reply 123 to")).passed
    assert not (await score(ev.regex(r"^\d+$"), "x1")).passed


async def test_a_scorer_that_needs_an_expected_output_says_so() -> None:
    with pytest.raises(ValueError, match="item item-1 has no expected output"):
        await score(ev.exact(), "x")


def test_bad_scorer_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        ev.regex("(")
    with pytest.raises(ValueError, match="tolerance"):
        ev.numeric(tolerance=-1)
    with pytest.raises(ValueError, match="one word"):
        ev.Scorer("two words", lambda c: Score(1.0))


async def test_json_schema_and_numeric() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert (await score(ev.json_schema(schema), '{"n": 3}')).passed
    bad = await score(ev.json_schema(schema), {"n": "3"})
    assert not bad.passed and bad.reason is not None and "n:" in bad.reason
    assert not (await score(ev.json_schema(schema), "not json")).passed
    near = await score(ev.numeric(tolerance=0.5), "about 41.7 km", 42)
    assert near.passed and near.value == pytest.approx(0.3)
    assert not (await score(ev.numeric(tolerance=0.1, relative=True), "50", 42)).passed
    assert (await score(ev.numeric(), "1,000", "1000")).passed
    none = await score(ev.numeric(), "no digits", 1)
    assert none.passed is False and none.value is None


async def test_similarity_with_the_offline_embedder() -> None:
    same = await score(ev.similarity(0.8), "the parcel left the depot today", "the parcel left the depot today")
    other = await score(ev.similarity(0.8), "bananas are yellow", "the parcel left the depot today")
    assert same.value == pytest.approx(1.0) and same.passed
    assert other.value is not None and other.value < 0.5 and not other.passed
    assert same.metadata["embedder"] == "tether-hash-256"


def _trace() -> RunTrace:
    run = {"runid": "r1", "agentid": "bot"}
    events = [
        Event.of(RunStarted(input="q"), **run),
        Event.of(ToolCallRequested(call_id="t1", tool="search", arguments={"q": "parcel"}), **run),
        Event.of(ToolCallCompleted(call_id="t1", tool="search", result={"hits": 2}), **run),
        Event.of(LlmCallAttemptFailed(call_id="c1", provider="openai", model="gpt-4o-mini", attempt=1,
                                      error=Err(type="RateLimitError"), decision="retry"), **run),
        Event.of(LlmCallCompleted(call_id="c1", provider="openai", model="gpt-4o-mini", attempt=2,
                                  usage=Usage(input_tokens=1000, output_tokens=100)), **run),
        Event.of(CallDeadLettered(call_id="t2", call_kind="tool", reason="exhausted", attempts=3), **run),
        Event.of(RunFinished(status="ok", output="answer"), **run),
    ]
    return RunTrace.of("r1", events)


async def test_trace_scorers() -> None:
    trace = _trace()
    assert trace.called_tool("search") and trace.called_tool("search", q="parcel")
    assert not trace.called_tool("search", q="other") and not trace.called_tool("book")
    assert trace.retries == 1 and trace.dead_letters == 1 and trace.tokens == 1100 and trace.output == "answer"
    assert trace.cost > 0  # gpt-4o-mini is priced by genai-prices
    assert (await score(ev.called_tool("search"), "x", trace=trace)).passed
    assert not (await score(ev.no_dead_letters(), "x", trace=trace)).passed
    assert (await score(ev.cost_below(1.0), "x", trace=trace)).passed
    assert not (await score(ev.cost_below(trace.cost / 2), "x", trace=trace)).passed
    assert (await score(ev.retries_at_most(1), "x", trace=trace)).passed
    assert not (await score(ev.retries_at_most(0), "x", trace=trace)).passed
    with pytest.raises(ValueError, match="has no run"):
        await score(ev.no_dead_letters(), "x")


async def test_custom_scorers() -> None:
    def short(case: Case) -> bool:
        return len(str(case.output)) < 5

    async def length(case: Case) -> tuple[float, str]:
        return float(len(str(case.output))), "characters"

    assert (await score(ev.custom(short), "abc")).passed
    assert ev.custom(short).name == "short"
    got = await score(ev.custom(length, kind="numeric"), "abcdef")
    assert got.value == 6.0 and got.reason == "characters" and got.passed is None
    with pytest.raises(TypeError, match="return a bool, a number or a Score"):
        await score(ev.custom(lambda c: "yes", name="bad"), "x")
