"""A judge measured against gold labels: agreement, TPR, FPR, and its pass rate corrected."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tether.projections.eval import ScoreRow

from ._stats import Calibration, calibrate, rogan_gladen

__all__ = ["JudgeReport", "judge_report"]


@dataclass(frozen=True)
class JudgeReport:
    scorer: str
    calibration: Calibration
    observed_pass_rate: float
    """The judge's pass rate over every item it judged."""
    corrected_pass_rate: float | None
    """Rogan-Gladen: the pass rate the judge's TPR and FPR imply (None if they cannot correct it)."""
    judged: int
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"scorer": self.scorer, **asdict(self.calibration), "observed_pass_rate": self.observed_pass_rate,
                "corrected_pass_rate": self.corrected_pass_rate, "judged": self.judged, "note": self.note}


def judge_report(scores: Sequence[ScoreRow], scorer: str, gold: Mapping[str, bool]) -> JudgeReport:
    """Measure ``scorer``'s verdicts against ``gold`` (item id → the true verdict, a small labelled
    sample), then correct its pass rate over all the items it judged."""
    verdicts = {s.item_id: s.passed for s in scores if s.scorer == scorer and s.passed is not None}
    if not verdicts:
        raise ValueError(f"no verdicts of scorer {scorer!r} in these scores")
    labelled = sorted(set(gold) & set(verdicts))
    if not labelled:
        raise ValueError(f"none of the {len(gold)} gold-labelled items was judged by {scorer!r}: label items of "
                         "this experiment")
    cal = calibrate([bool(verdicts[i]) for i in labelled], [gold[i] for i in labelled])
    observed = sum(1 for v in verdicts.values() if v) / len(verdicts)
    corrected, note = None, None
    if cal.tpr is None or cal.fpr is None:
        note = "the gold sample needs both passing and failing items to correct the pass rate"
    else:
        try:
            corrected = rogan_gladen(observed, cal.tpr, cal.fpr)
        except ValueError as exc:
            note = str(exc)
    return JudgeReport(scorer, cal, observed, corrected, len(verdicts), note)
