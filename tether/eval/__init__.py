"""Evaluation: datasets as events (from recorded runs, files, code; versioned), scorers,
experiments (an agent over a dataset with one variant, or a replay with tool results from the
log), comparisons with paired statistics and a CI verdict, judge calibration, online scoring.

See docs/evaluation.md.
"""

from tether.projections.eval import (
    DatasetItem,
    EvalView,
    ItemChange,
    ScoreRow,
    TrialRow,
    experiment_info,
    experiment_names,
    scores_of,
    trials_of,
)

from ._calibration import JudgeReport, judge_report
from ._client import DatasetError, Evals, NewItem, items_from_file
from ._compare import Comparison, ScorerDelta, compare
from ._experiment import ExperimentResult, Variant, load_agent, run_experiment
from ._judge import Judge, judge
from ._log import read_run, runs_matching
from ._online import OnlineScorer
from ._scorers import (
    Case,
    Score,
    Scorer,
    called_tool,
    contains,
    cost_below,
    custom,
    exact,
    json_schema,
    no_dead_letters,
    numeric,
    regex,
    retries_at_most,
    similarity,
)
from ._stats import Calibration, bootstrap_mean_interval, calibrate, mcnemar_exact, rogan_gladen
from ._trace import RunTrace, ToolUse

__all__ = [
    "Calibration",
    "Case",
    "Comparison",
    "DatasetError",
    "DatasetItem",
    "EvalView",
    "Evals",
    "ExperimentResult",
    "ItemChange",
    "Judge",
    "JudgeReport",
    "NewItem",
    "OnlineScorer",
    "RunTrace",
    "Score",
    "ScoreRow",
    "Scorer",
    "ScorerDelta",
    "ToolUse",
    "TrialRow",
    "Variant",
    "bootstrap_mean_interval",
    "calibrate",
    "called_tool",
    "compare",
    "contains",
    "cost_below",
    "custom",
    "exact",
    "experiment_info",
    "experiment_names",
    "items_from_file",
    "json_schema",
    "judge",
    "judge_report",
    "load_agent",
    "mcnemar_exact",
    "no_dead_letters",
    "numeric",
    "read_run",
    "regex",
    "retries_at_most",
    "rogan_gladen",
    "run_experiment",
    "runs_matching",
    "scores_of",
    "similarity",
    "trials_of",
]
