"""Comparing two experiments item by item: paired deltas per scorer, McNemar's exact test for
pass/fail scorers, a paired bootstrap interval for numeric ones, cost and latency deltas, and
the CI verdict: a regression only when it is larger than the tolerance *and* significant.
Pure: rows in, a :class:`Comparison` out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tether.projections.eval import ScoreRow, TrialRow

from ._stats import bootstrap_mean_interval, mcnemar_exact

__all__ = ["Comparison", "ScorerDelta", "compare"]


@dataclass(frozen=True)
class ScorerDelta:
    scorer: str
    kind: str
    """``pass`` (McNemar) or ``numeric`` (bootstrap)."""
    n: int
    """Items scored in both experiments."""
    mean_a: float
    mean_b: float
    delta: float
    """B minus A: a pass rate's change, or the mean value's."""
    p_value: float | None = None
    interval: tuple[float, float] | None = None
    pass_to_fail: int = 0
    fail_to_pass: int = 0
    significant: bool = False
    regression: bool = False
    higher_is_better: bool = True


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    scorers: list[ScorerDelta]
    items: list[dict[str, Any]] = field(default_factory=list)
    """Per item: its scores in A and B and their deltas, cost and latency."""
    cost_a: float = 0.0
    cost_b: float = 0.0
    latency_a: float | None = None
    latency_b: float | None = None
    tolerance: float = 0.0
    alpha: float = 0.05

    @property
    def regressed(self) -> bool:
        return any(s.regression for s in self.scorers)

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "scorers": [asdict(s) for s in self.scorers], "items": self.items,
                "cost_a": self.cost_a, "cost_b": self.cost_b, "cost_delta": self.cost_b - self.cost_a,
                "latency_a_ms": self.latency_a, "latency_b_ms": self.latency_b,
                "latency_delta_ms": None if self.latency_a is None or self.latency_b is None
                else self.latency_b - self.latency_a,
                "tolerance": self.tolerance, "alpha": self.alpha, "regressed": self.regressed}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def compare(a: str, b: str, scores_a: Sequence[ScoreRow], scores_b: Sequence[ScoreRow],
            trials_a: Sequence[TrialRow] = (), trials_b: Sequence[TrialRow] = (), *, tolerance: float = 0.0,
            alpha: float = 0.05, lower_is_better: Sequence[str] = (), resamples: int = 2000,
            seed: int = 0) -> Comparison:
    """B against A, paired by item. A scorer whose paired scores all carry a verdict is pass/fail
    (McNemar's exact test on the discordant pairs), unless its scores say they are ``numeric``
    (metadata ``kind``, as the similarity scorer's); otherwise its values are compared (a
    percentile bootstrap interval of the mean paired delta, significant when it excludes 0).

    A scorer regresses when B is worse by more than ``tolerance`` (pass rate, or value, in the
    scorer's own units) **and** the difference is significant at ``alpha``. Scorers named in
    ``lower_is_better`` (an error, a cost) regress when their value goes up.
    """
    by_a = {(s.item_id, s.scorer): s for s in scores_a}
    by_b = {(s.item_id, s.scorer): s for s in scores_b}
    names = sorted({s for _, s in by_a} | {s for _, s in by_b})
    deltas: list[ScorerDelta] = []
    per_item: dict[str, dict[str, Any]] = {}
    for name in names:
        pairs = [(by_a[key], by_b[key]) for key in sorted(by_a) if key[1] == name and key in by_b]
        verdicts = [(x.passed, y.passed) for x, y in pairs if x.passed is not None and y.passed is not None]
        values = [(x.value, y.value) for x, y in pairs if x.value is not None and y.value is not None]
        better_high = name not in lower_is_better
        numeric = any(x.metadata.get("kind") == "numeric" or y.metadata.get("kind") == "numeric" for x, y in pairs)
        if pairs and len(verdicts) == len(pairs) and not numeric:
            b_count = sum(1 for x, y in verdicts if x and not y)
            c_count = sum(1 for x, y in verdicts if not x and y)
            rate_a = _mean([float(x) for x, _ in verdicts])
            rate_b = _mean([float(y) for _, y in verdicts])
            p = mcnemar_exact(b_count, c_count)
            significant = p < alpha
            regression = significant and (rate_a - rate_b) > tolerance
            deltas.append(ScorerDelta(name, "pass", len(verdicts), rate_a, rate_b, rate_b - rate_a, p_value=p,
                                      pass_to_fail=b_count, fail_to_pass=c_count, significant=significant,
                                      regression=regression))
        else:
            diffs = [y - x for x, y in values]
            low, high = bootstrap_mean_interval(diffs, confidence=1 - alpha, resamples=resamples, seed=seed)
            mean_delta = _mean(diffs)
            significant = len(diffs) > 1 and (low > 0 or high < 0)
            worse = -mean_delta if better_high else mean_delta
            deltas.append(ScorerDelta(name, "numeric", len(values), _mean([x for x, _ in values]),
                                      _mean([y for _, y in values]), mean_delta, interval=(low, high),
                                      significant=significant, regression=significant and worse > tolerance,
                                      higher_is_better=better_high))
        for x, y in pairs:
            row = per_item.setdefault(x.item_id, {"item_id": x.item_id, "scores": {}})
            row["scores"][name] = {"a": x.value, "b": y.value, "passed_a": x.passed, "passed_b": y.passed,
                                   "delta": None if x.value is None or y.value is None else y.value - x.value}
    ta = {t.item_id: t for t in trials_a}
    tb = {t.item_id: t for t in trials_b}
    for item_id in sorted(set(ta) & set(tb)):
        row = per_item.setdefault(item_id, {"item_id": item_id, "scores": {}})
        row["cost_delta"] = (tb[item_id].cost_usd or 0.0) - (ta[item_id].cost_usd or 0.0)
        la, lb = ta[item_id].latency_ms, tb[item_id].latency_ms
        row["latency_delta_ms"] = None if la is None or lb is None else lb - la
        row["run_a"], row["run_b"] = ta[item_id].run_id, tb[item_id].run_id
    lat_a = [t.latency_ms for t in trials_a if t.latency_ms is not None]
    lat_b = [t.latency_ms for t in trials_b if t.latency_ms is not None]
    return Comparison(a, b, deltas, [per_item[k] for k in sorted(per_item)],
                      cost_a=sum(t.cost_usd or 0.0 for t in trials_a), cost_b=sum(t.cost_usd or 0.0 for t in trials_b),
                      latency_a=_mean(lat_a) if lat_a else None, latency_b=_mean(lat_b) if lat_b else None,
                      tolerance=tolerance, alpha=alpha)
