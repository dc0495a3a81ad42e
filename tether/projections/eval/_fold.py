"""The eval view: datasets (every version of every item), experiments, trials and scores,
folded from the ``tether.eval.*`` events. Rebuilt by replay like every view.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, ClassVar

from tether.schemas import (
    DatasetItemAdded,
    DatasetItemRemoved,
    Event,
    ExperimentStarted,
    ScoreRecorded,
    TrialCompleted,
)

from .._ops import Op, Table, Upsert
from .._store import Projection

__all__ = ["EvalView"]

_ITEMS = Table("dataset_items", {
    "dataset": "TEXT", "item_id": "TEXT", "seq": "INTEGER", "op": "TEXT", "input": "TEXT", "expected": "TEXT",
    "tags": "TEXT", "source_run_id": "TEXT", "metadata": "TEXT", "time": "REAL", "event_id": "TEXT",
}, key=("dataset", "item_id", "seq"), indexes=(("dataset", "seq"),))
_EXPERIMENTS = Table("experiments", {
    "experiment": "TEXT", "dataset": "TEXT", "dataset_seq": "INTEGER", "variant": "TEXT", "agent": "TEXT",
    "replay": "INTEGER", "seq": "INTEGER", "time": "REAL",
}, key=("experiment",))
_TRIALS = Table("trials", {
    "experiment": "TEXT", "item_id": "TEXT", "run_id": "TEXT", "output": "TEXT", "error": "TEXT",
    "latency_ms": "REAL", "cost_usd": "REAL", "tokens": "INTEGER", "seq": "INTEGER", "time": "REAL",
}, key=("experiment", "item_id"), indexes=(("run_id",),))
_SCORES = Table("scores", {
    "experiment": "TEXT", "item_id": "TEXT", "scorer": "TEXT", "run_id": "TEXT", "value": "REAL",
    "passed": "INTEGER", "reason": "TEXT", "metadata": "TEXT", "seq": "INTEGER", "time": "REAL",
}, key=("experiment", "item_id", "scorer"), indexes=(("experiment", "scorer"),))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class EvalView(Projection):
    """Evaluation, per dataset version and per experiment, item and scorer.

    - ``dataset_items``: one row per item event (``op`` ``added`` or ``removed``) keyed by
      its sequence, so a dataset can be read as of any point of the log, and its history;
    - ``experiments``: one row per experiment (its dataset position and variant);
    - ``trials``: one row per experiment item (the run, output, error, latency, cost);
    - ``scores``: one row per experiment, item and scorer; a later score of the same
      triple (a re-score) replaces the earlier one.
    """

    name = "eval"
    version = 1
    tables = (_ITEMS, _EXPERIMENTS, _TRIALS, _SCORES)
    types: ClassVar[frozenset[str] | None] = frozenset({
        "tether.eval.item.added", "tether.eval.item.removed", "tether.eval.experiment.started",
        "tether.eval.trial.completed", "tether.eval.score.recorded",
    })
    weight = 0.2

    def apply(self, event: Event, seq: int) -> Iterable[Op]:
        when = event.time.timestamp()
        match event.data:
            case DatasetItemAdded() as d:
                return [Upsert("dataset_items", {
                    "dataset": d.dataset, "item_id": d.item_id, "seq": seq, "op": "added", "input": _json(d.input),
                    "expected": _json(d.expected), "tags": _json(list(d.tags)), "source_run_id": d.source_run_id,
                    "metadata": _json(d.metadata), "time": when, "event_id": event.id})]
            case DatasetItemRemoved() as d:
                return [Upsert("dataset_items", {
                    "dataset": d.dataset, "item_id": d.item_id, "seq": seq, "op": "removed", "input": None,
                    "expected": None, "tags": None, "source_run_id": None, "metadata": None, "time": when,
                    "event_id": event.id})]
            case ExperimentStarted() as d:
                return [Upsert("experiments", {
                    "experiment": d.experiment, "dataset": d.dataset, "dataset_seq": d.dataset_seq,
                    "variant": _json(d.variant), "agent": d.agent, "replay": int(d.replay), "seq": seq,
                    "time": when})]
            case TrialCompleted() as d:
                return [Upsert("trials", {
                    "experiment": d.experiment, "item_id": d.item_id, "run_id": d.run_id, "output": _json(d.output),
                    "error": None if d.error is None else _json(d.error.model_dump(mode="json")),
                    "latency_ms": d.latency_ms, "cost_usd": d.cost_usd, "tokens": d.tokens, "seq": seq,
                    "time": when})]
            case ScoreRecorded() as d:
                return [Upsert("scores", {
                    "experiment": d.experiment, "item_id": d.item_id, "scorer": d.scorer, "run_id": d.run_id,
                    "value": d.value, "passed": None if d.passed is None else int(d.passed), "reason": d.reason,
                    "metadata": _json(d.metadata), "seq": seq, "time": when})]
        return []
