"""The pure statistics, against values computed by hand and by scipy (recorded here, not imported)."""

from __future__ import annotations

import math

import pytest

from tether.eval import bootstrap_mean_interval, calibrate, mcnemar_exact, rogan_gladen


@pytest.mark.parametrize(("b", "c", "expected"), [
    (0, 0, 1.0),
    (10, 2, 158 / 4096),          # 2 * (C(12,0) + C(12,1) + C(12,2)) / 2**12; scipy binomtest(2, 12): 0.03857
    (6, 0, 2 / 64),               # every discordant pair one way
    (5, 5, 1.0),                  # balanced: capped at 1
    (1, 3, 10 / 16),              # 2 * (1 + 4) / 16
    (25, 5, 2 * sum(math.comb(30, k) for k in range(6)) / 2**30),  # scipy: 0.000325
])
def test_mcnemar_exact_matches_the_binomial(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(c, b) == mcnemar_exact(b, c)


def test_mcnemar_known_decimal_values() -> None:
    assert mcnemar_exact(10, 2) == pytest.approx(0.03857421875)
    assert mcnemar_exact(25, 5) == pytest.approx(0.000325, abs=5e-7)


def test_mcnemar_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        mcnemar_exact(-1, 2)


def test_bootstrap_interval_brackets_the_mean_and_is_seeded() -> None:
    deltas = [0.1, 0.2, 0.0, 0.3, 0.1, 0.2, 0.15, 0.05]
    low, high = bootstrap_mean_interval(deltas, seed=3)
    assert low < sum(deltas) / len(deltas) < high
    assert low > 0  # every delta is at least 0 and most are above: the interval excludes 0
    assert (low, high) == bootstrap_mean_interval(deltas, seed=3)
    noisy = [0.5, -0.4, 0.3, -0.6, 0.2, -0.1]
    n_low, n_high = bootstrap_mean_interval(noisy)
    assert n_low < 0 < n_high
    assert bootstrap_mean_interval([]) == (0.0, 0.0) and bootstrap_mean_interval([0.7]) == (0.7, 0.7)
    constant = bootstrap_mean_interval([-0.25] * 10)
    assert constant == (pytest.approx(-0.25), pytest.approx(-0.25))


def test_calibration_counts_and_rates() -> None:
    judged = [True, True, True, False, True, False, False, True]
    gold = [True, True, False, False, True, True, False, False]
    cal = calibrate(judged, gold)
    assert (cal.true_positives, cal.false_positives, cal.true_negatives, cal.false_negatives) == (3, 2, 2, 1)
    assert cal.agreement == 5 / 8 and cal.tpr == 3 / 4 and cal.fpr == 2 / 4
    assert calibrate([True], [True]).fpr is None
    with pytest.raises(ValueError, match="pair them"):
        calibrate([True], [True, False])


def test_rogan_gladen_corrects_a_judge() -> None:
    # sensitivity 0.9, specificity 0.8, observed 0.5: (0.5 + 0.8 - 1) / (0.9 + 0.8 - 1) = 0.3 / 0.7
    assert rogan_gladen(0.5, tpr=0.9, fpr=0.2) == pytest.approx(3 / 7)
    assert rogan_gladen(0.1, tpr=0.9, fpr=0.2) == 0.0  # below the false positive rate: clipped
    assert rogan_gladen(1.0, tpr=1.0, fpr=0.0) == 1.0
    with pytest.raises(ValueError, match="no better than chance"):
        rogan_gladen(0.5, tpr=0.4, fpr=0.4)
