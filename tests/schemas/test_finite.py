"""The one NaN / infinity check every way into tether uses, and the scrub for old data."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tether.schemas import ErrorInfo, Event, InvalidEvent, RunStarted, ToolCallCompleted
from tether.schemas._finite import finite_or_none, json_safe, non_finite

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(("value", "path"), [
    (NAN, ()), (-INF, ()), ({"a": 1, "b": [0, {"c": INF}]}, ("b", 1, "c")), ((1, NAN), (1,)),
    ([{"x": 1.5}, {"y": NAN}], (1, "y")),
    (RunStarted(metadata={"s": NAN}), ("metadata", "s")),
])
def test_non_finite_says_where(value: Any, path: tuple[Any, ...]) -> None:
    assert non_finite(value) == path


@pytest.mark.parametrize("value", [None, True, 0, 1.5, -1e308, "NaN", "inf", [], {}, {"a": [1, 2.5, "x", None]},
                                   ErrorInfo(type="X", message="m")])
def test_finite_data_passes(value: Any) -> None:
    assert non_finite(value) is None


def test_finite_or_none_replaces_only_non_finite_numbers() -> None:
    assert finite_or_none({"a": NAN, "b": [1.5, INF, "NaN"], "c": {"d": -INF, "e": 0}}) == \
        {"a": None, "b": [1.5, None, "NaN"], "c": {"d": None, "e": 0}}


def test_json_safe_spells_non_finite_numbers_and_leaves_the_rest_alone() -> None:
    clean = {"a": [1, 2.5, "x"]}
    assert json_safe(clean) is clean  # nothing to replace: no copy
    assert json_safe({"a": NAN, "b": (INF, -INF), "c": "NaN"}) == {"a": "NaN", "b": ["Infinity", "-Infinity"],
                                                                   "c": "NaN"}


def test_event_of_refuses_non_finite_numbers_outside_recorded_bodies() -> None:
    with pytest.raises(InvalidEvent) as info:
        Event.of(ToolCallCompleted(call_id="c", tool="t", duration_ms=float("inf")), runid="r")
    assert [p["loc"] for p in info.value.problems] == [("duration_ms",)]
    with pytest.raises(InvalidEvent) as info:
        Event.of(RunStarted(metadata={"score": [1.0, float("nan")]}), runid="r")
    assert [p["loc"] for p in info.value.problems] == [("metadata", "score", 1)]


def test_a_recorded_body_never_carries_a_bare_nan_even_unvalidated() -> None:
    # Event.of does not walk recorded bodies again: validation spelled them, and so does the JSON.
    made = Event.of(ToolCallCompleted(call_id="c", tool="t", result={"x": float("nan")}), runid="r")
    assert json.loads(made.data_json())["result"] == {"x": "NaN"}
    unvalidated = ToolCallCompleted.model_construct(call_id="c", tool="t", result={"x": [float("-inf")]})
    body = Event.of(unvalidated, runid="r").data_json()
    assert json.loads(body, parse_constant=lambda c: pytest.fail(f"bare {c} in {body!r}"))["result"] == {
        "x": ["-Infinity"]}
