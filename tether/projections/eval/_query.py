"""Reading the eval view: a dataset as of a log position, its history, experiments, trials, scores."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DatasetItem", "ItemChange", "ScoreRow", "TrialRow", "dataset_history", "dataset_items",
           "dataset_names", "experiment_info", "experiment_names", "scores_of", "trials_of"]


@dataclass(frozen=True)
class DatasetItem:
    """One item of a dataset, at one version."""

    id: str
    input: Any
    expected: Any = None
    tags: tuple[str, ...] = ()
    source_run_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    seq: int = 0
    """The stream sequence of the event that made this version."""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "input": self.input, "expected": self.expected, "tags": list(self.tags),
                "source_run_id": self.source_run_id, "metadata": self.metadata, "version": self.version,
                "seq": self.seq}


@dataclass(frozen=True)
class ItemChange:
    """One event of a dataset's history."""

    item_id: str
    op: str
    version: int
    seq: int
    time: float
    input: Any = None
    expected: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "op": self.op, "version": self.version, "seq": self.seq, "time": self.time,
                "input": self.input, "expected": self.expected}


@dataclass(frozen=True)
class TrialRow:
    item_id: str
    run_id: str | None
    output: Any
    error: dict[str, Any] | None
    latency_ms: float | None
    cost_usd: float | None
    tokens: int


@dataclass(frozen=True)
class ScoreRow:
    item_id: str
    scorer: str
    value: float | None
    passed: bool | None
    reason: str | None
    metadata: dict[str, Any]
    run_id: str | None


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def dataset_names(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every dataset: name, live items now, and the sequence of its last change (its version)."""
    out = []
    for (name,) in db.execute("SELECT DISTINCT dataset FROM dataset_items ORDER BY dataset"):
        items = dataset_items(db, name)
        last = db.execute("SELECT max(seq) FROM dataset_items WHERE dataset = ?", (name,)).fetchone()[0]
        out.append({"dataset": name, "items": len(items), "seq": last})
    return out


def dataset_items(db: sqlite3.Connection, dataset: str, *, as_of: int | None = None) -> list[DatasetItem]:
    """The dataset's live items (each at its latest version) as the log stood at ``as_of``
    (a stream sequence; None: now), ordered by item id."""
    rows = db.execute("SELECT item_id, seq, op, input, expected, tags, source_run_id, metadata FROM dataset_items "
                      "WHERE dataset = ? AND seq <= ? ORDER BY item_id, seq",
                      (dataset, as_of if as_of is not None else 2**62)).fetchall()
    latest: dict[str, tuple[Any, ...]] = {}
    versions: dict[str, int] = {}
    for row in rows:
        latest[row[0]] = row
        if row[2] == "added":
            versions[row[0]] = versions.get(row[0], 0) + 1
    out = []
    for item_id, (_, seq, op, inp, expected, tags, source, metadata) in sorted(latest.items()):
        if op != "added":
            continue
        out.append(DatasetItem(item_id, _loads(inp), _loads(expected), tuple(_loads(tags) or ()), source,
                               _loads(metadata) or {}, versions[item_id], seq))
    return out


def dataset_history(db: sqlite3.Connection, dataset: str) -> list[ItemChange]:
    """Every addition, new version and removal of the dataset's items, in log order."""
    versions: dict[str, int] = {}
    out = []
    for item_id, seq, op, inp, expected, when in db.execute(
            "SELECT item_id, seq, op, input, expected, time FROM dataset_items WHERE dataset = ? ORDER BY seq",
            (dataset,)):
        if op == "added":
            versions[item_id] = versions.get(item_id, 0) + 1
        out.append(ItemChange(item_id, op, versions.get(item_id, 0), seq, when, _loads(inp), _loads(expected)))
    return out


def experiment_names(db: sqlite3.Connection) -> list[dict[str, Any]]:
    return [experiment_info(db, name) or {} for (name,) in
            db.execute("SELECT experiment FROM experiments ORDER BY seq")]


def experiment_info(db: sqlite3.Connection, experiment: str) -> dict[str, Any] | None:
    row = db.execute("SELECT dataset, dataset_seq, variant, agent, replay, seq, time FROM experiments "
                     "WHERE experiment = ?", (experiment,)).fetchone()
    if row is None:
        return None
    dataset, dataset_seq, variant, agent, replay, seq, when = row
    trials, errors, cost, latency = db.execute(
        "SELECT count(*), sum(error IS NOT NULL), sum(cost_usd), avg(latency_ms) FROM trials WHERE experiment = ?",
        (experiment,)).fetchone()
    return {"experiment": experiment, "dataset": dataset, "dataset_seq": dataset_seq, "variant": _loads(variant),
            "agent": agent, "replay": bool(replay), "seq": seq, "time": when, "trials": trials,
            "errors": errors or 0, "cost_usd": cost, "mean_latency_ms": latency}


def trials_of(db: sqlite3.Connection, experiment: str) -> list[TrialRow]:
    return [TrialRow(item, run, _loads(output), _loads(error), latency, cost, tokens or 0)
            for item, run, output, error, latency, cost, tokens in db.execute(
                "SELECT item_id, run_id, output, error, latency_ms, cost_usd, tokens FROM trials "
                "WHERE experiment = ? ORDER BY item_id", (experiment,))]


def scores_of(db: sqlite3.Connection, experiment: str) -> list[ScoreRow]:
    return [ScoreRow(item, scorer, value, None if passed is None else bool(passed), reason, _loads(meta) or {}, run)
            for item, scorer, value, passed, reason, meta, run in db.execute(
                "SELECT item_id, scorer, value, passed, reason, metadata, run_id FROM scores "
                "WHERE experiment = ? ORDER BY item_id, scorer", (experiment,))]
