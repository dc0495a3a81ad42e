"""The statistics of evaluation, pure and dependency-free: McNemar's exact test, a paired
bootstrap interval, a judge's agreement with gold labels and the Rogan-Gladen corrected rate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Calibration", "bootstrap_mean_interval", "calibrate", "mcnemar_exact", "rogan_gladen"]


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (pass→fail, fail→pass).

    Under no difference each discordant pair goes either way with probability 1/2, so the
    p-value is twice the binomial tail of the smaller count (at most 1). No pairs: 1.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be 0 or more, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return float(min(1.0, 2 * tail / 2**n))


def bootstrap_mean_interval(deltas: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
                            seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval for the mean of paired ``deltas`` (B minus A, per item).

    Seeded, so the same deltas always give the same interval. One delta or none: the
    interval is that delta (or 0, 0): there is nothing to resample.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    n = len(deltas)
    if n == 0:
        return (0.0, 0.0)
    if n == 1:
        return (float(deltas[0]), float(deltas[0]))
    rng = random.Random(seed)
    values = [float(d) for d in deltas]
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    alpha = (1 - confidence) / 2
    low = means[max(0, math.floor(alpha * resamples))]
    high = means[min(resamples - 1, math.ceil((1 - alpha) * resamples) - 1)]
    return (low, high)


@dataclass(frozen=True)
class Calibration:
    """How a pass/fail judge agrees with gold labels on the same items."""

    n: int
    agreement: float
    """Share of items where the judge and the gold label agree."""
    tpr: float | None
    """Sensitivity: the judge's pass rate on items the gold label passes (None without such items)."""
    fpr: float | None
    """The judge's pass rate on items the gold label fails (None without such items)."""
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int


def calibrate(judged: Sequence[bool], gold: Sequence[bool]) -> Calibration:
    """Compare the judge's verdicts with gold labels, item by item."""
    if len(judged) != len(gold):
        raise ValueError(f"{len(judged)} verdicts but {len(gold)} gold labels: pair them item by item")
    tp = sum(1 for j, g in zip(judged, gold, strict=True) if j and g)
    fp = sum(1 for j, g in zip(judged, gold, strict=True) if j and not g)
    tn = sum(1 for j, g in zip(judged, gold, strict=True) if not j and not g)
    fn = sum(1 for j, g in zip(judged, gold, strict=True) if not j and g)
    n = len(gold)
    return Calibration(n=n, agreement=(tp + tn) / n if n else 0.0,
                       tpr=tp / (tp + fn) if tp + fn else None, fpr=fp / (fp + tn) if fp + tn else None,
                       true_positives=tp, false_positives=fp, true_negatives=tn, false_negatives=fn)


def rogan_gladen(observed: float, tpr: float, fpr: float) -> float:
    """The true pass rate behind a judge's ``observed`` pass rate (Rogan-Gladen), in [0, 1].

    ``(observed - fpr) / (tpr - fpr)``, i.e. ``(p + specificity - 1) / (sensitivity +
    specificity - 1)``. A judge no better than chance (``tpr <= fpr``) says nothing: refused.
    """
    if not (0 <= observed <= 1 and 0 <= tpr <= 1 and 0 <= fpr <= 1):
        raise ValueError("observed, tpr and fpr are rates between 0 and 1")
    if tpr <= fpr:
        raise ValueError(f"the judge is no better than chance on the gold sample (TPR {tpr:.2f} <= FPR {fpr:.2f}): "
                         "its pass rate cannot be corrected; fix the rubric or label more items")
    return min(1.0, max(0.0, (observed - fpr) / (tpr - fpr)))
