"""The eval view: datasets (every version of every item), experiments, trials and scores
(:class:`EvalView`), and its queries. ``tether.eval`` writes the events and reads through these."""

from ._fold import EvalView
from ._query import (
    DatasetItem,
    ItemChange,
    ScoreRow,
    TrialRow,
    dataset_history,
    dataset_items,
    dataset_names,
    experiment_info,
    experiment_names,
    scores_of,
    trials_of,
)

__all__ = ["DatasetItem", "EvalView", "ItemChange", "ScoreRow", "TrialRow", "dataset_history", "dataset_items",
           "dataset_names", "experiment_info", "experiment_names", "scores_of", "trials_of"]
