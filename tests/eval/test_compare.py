"""Comparing experiments, pure: paired deltas, the tests, and the CI verdict on a planted
regression and on noise."""

from __future__ import annotations

import random

import pytest

from tether.eval import ScoreRow, TrialRow, compare


def verdicts(scorer: str, passed: list[bool]) -> list[ScoreRow]:
    return [ScoreRow(f"i{n:03d}", scorer, 1.0 if p else 0.0, p, None, {}, None) for n, p in enumerate(passed)]


def values(scorer: str, vals: list[float]) -> list[ScoreRow]:
    return [ScoreRow(f"i{n:03d}", scorer, v, None, None, {}, None) for n, v in enumerate(vals)]


def test_a_planted_regression_fails_ci() -> None:
    a = verdicts("exact", [True] * 40)
    b = verdicts("exact", [True] * 28 + [False] * 12)  # 12 items broke, none improved
    result = compare("A", "B", a, b, tolerance=0.05)
    d = result.scorers[0]
    assert (d.kind, d.n, d.pass_to_fail, d.fail_to_pass) == ("pass", 40, 12, 0)
    assert d.delta == pytest.approx(-0.3) and d.p_value == pytest.approx(2 / 2**12)
    assert d.significant and d.regression and result.regressed


def test_noise_does_not_fail_ci() -> None:
    """As large a drop as the planted one could be by chance: a few items flip each way."""
    rng = random.Random(7)
    base = [rng.random() < 0.7 for _ in range(40)]
    flipped = list(base)
    for i in (1, 5, 9):  # three items flip (whichever way they were)
        flipped[i] = not flipped[i]
    result = compare("A", "B", verdicts("exact", base), verdicts("exact", flipped), tolerance=0.0)
    d = result.scorers[0]
    assert d.pass_to_fail + d.fail_to_pass == 3
    assert not d.significant and not result.regressed


def test_a_significant_drop_within_tolerance_passes() -> None:
    a = verdicts("exact", [True] * 200)
    b = verdicts("exact", [True] * 194 + [False] * 6)  # -3 points, significant (p = 1/32)
    result = compare("A", "B", a, b, tolerance=0.05)
    assert result.scorers[0].significant and not result.regressed


def test_numeric_scorers_use_a_paired_bootstrap() -> None:
    rng = random.Random(1)
    a_vals = [rng.uniform(0.5, 1.0) for _ in range(30)]
    worse = [v - 0.2 + rng.uniform(-0.02, 0.02) for v in a_vals]
    noisy = [v + rng.uniform(-0.2, 0.2) for v in a_vals]
    planted = compare("A", "B", values("similarity", a_vals), values("similarity", worse), tolerance=0.1)
    d = planted.scorers[0]
    assert d.kind == "numeric" and d.interval is not None and d.interval[1] < 0
    assert d.delta == pytest.approx(sum(w - a for w, a in zip(worse, a_vals, strict=True)) / 30)
    assert planted.regressed
    assert not compare("A", "B", values("similarity", a_vals), values("similarity", noisy), tolerance=0.1).regressed
    # an error measure: lower is better, so going down is no regression, going up is
    assert not compare("A", "B", values("err", a_vals), values("err", worse), tolerance=0.1,
                       lower_is_better=["err"]).regressed
    assert compare("A", "B", values("err", worse), values("err", a_vals), tolerance=0.1,
                   lower_is_better=["err"]).regressed


def test_per_item_deltas_cost_and_latency() -> None:
    a = verdicts("exact", [True, False, True])
    b = verdicts("exact", [False, False, True])
    ta = [TrialRow(f"i{n:03d}", f"ra{n}", "x", None, 100.0, 0.001, 10) for n in range(3)]
    tb = [TrialRow(f"i{n:03d}", f"rb{n}", "y", None, 150.0, 0.003, 10) for n in range(3)]
    result = compare("A", "B", a, b, ta, tb)
    assert [i["scores"]["exact"]["delta"] for i in result.items] == [-1.0, 0.0, 0.0]
    assert result.items[0]["run_a"] == "ra0" and result.items[0]["run_b"] == "rb0"
    assert result.items[0]["cost_delta"] == pytest.approx(0.002) and result.items[0]["latency_delta_ms"] == 50.0
    out = result.as_dict()
    assert out["cost_delta"] == pytest.approx(0.006) and out["latency_delta_ms"] == 50.0
    assert out["regressed"] is False  # one item went down: not significant


def test_a_numeric_scorer_with_verdicts_is_compared_by_its_values() -> None:
    a = [ScoreRow(f"i{n}", "similarity", 0.9, True, None, {"kind": "numeric"}, None) for n in range(10)]
    b = [ScoreRow(f"i{n}", "similarity", 0.6, True, None, {"kind": "numeric"}, None) for n in range(10)]
    d = compare("A", "B", a, b, tolerance=0.1).scorers[0]
    assert d.kind == "numeric" and d.delta == pytest.approx(-0.3) and d.regression
