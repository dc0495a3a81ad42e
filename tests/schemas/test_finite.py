"""The one NaN / infinity check every way into tether uses, and the scrub for old data."""

from __future__ import annotations

from typing import Any

import pytest

from tether.schemas import ErrorInfo, RunStarted
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
