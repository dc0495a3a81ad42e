"""The evaluation API: datasets as events (from runs, files, code), versioned; reads of the eval
view; scores recorded. It keeps a private copy of the eval view, folded from the log's
``tether.eval.*`` events before each read, so every read sees every write before it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tether.bus import Bus
from tether.projections import Item, ViewStore
from tether.projections.eval import (
    DatasetItem,
    EvalView,
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
from tether.schemas import DatasetItemAdded, DatasetItemRemoved, Event, InvalidEvent, ScoreRecorded, uuid7

from ._log import EVAL_SUBJECTS, read_events, read_run, runs_matching
from ._scorers import Score

__all__ = ["DatasetError", "Evals", "NewItem", "items_from_file"]

SOURCE = "urn:tether:eval"


class DatasetError(ValueError):
    """A dataset input that cannot be used; the message says which line or run, and what to do."""


@dataclass(frozen=True)
class NewItem:
    """An item to add: input, expected output (optional), tags; ``id`` defaults to a new one."""

    input: Any
    expected: Any = None
    tags: tuple[str, ...] = ()
    id: str | None = None
    source_run_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def items_from_file(path: Path) -> list[NewItem]:
    """Items from a JSONL file (one object a line: ``input``, ``expected``, ``tags``, ``id``,
    ``metadata``) or a CSV file (columns ``input``, ``expected``, ``tags`` separated by ``;``,
    ``id``). Every line is checked before anything is added: a bad one is a :class:`DatasetError`
    naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _from_jsonl(path, text)
    if suffix == ".csv":
        return _from_csv(path, text)
    raise DatasetError(f"{path}: expected a .jsonl or .csv file (one item a line)")


_KEYS = frozenset({"input", "expected", "tags", "id", "metadata"})


def _item_of(where: str, row: Mapping[str, Any]) -> NewItem:
    unknown = set(row) - _KEYS
    if unknown:
        raise DatasetError(f"{where}: unknown field(s) {sorted(unknown)}; an item has {sorted(_KEYS)}")
    if row.get("input") in (None, ""):
        raise DatasetError(f"{where}: no `input`; every item needs one")
    tags = row.get("tags") or ()
    if isinstance(tags, str):
        tags = tuple(t.strip() for t in tags.split(";") if t.strip())
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise DatasetError(f"{where}: `tags` must be a list of strings")
    metadata = row.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise DatasetError(f"{where}: `metadata` must be an object")
    item_id = row.get("id")
    return NewItem(row["input"], None if row.get("expected") == "" else row.get("expected"), tuple(tags),
                   None if item_id in (None, "") else str(item_id), metadata=metadata)


def _from_jsonl(path: Path, text: str) -> list[NewItem]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{number}: not JSON ({exc.msg}); nothing was added") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object per line; nothing was added")
        out.append(_item_of(f"{path}:{number}", row))
    return out


def _from_csv(path: Path, text: str) -> list[NewItem]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "input" not in reader.fieldnames:
        raise DatasetError(f"{path}: the first line must name the columns, `input` among them "
                           "(and `expected`, `tags`, `id`)")
    return [_item_of(f"{path}:{number}", {k: v for k, v in row.items() if k is not None})
            for number, row in enumerate(reader, 2)]


class Evals:
    """Evaluation on one bus: ``async with Evals(bus) as evals: ...``."""

    def __init__(self, bus: Bus, *, agent: str | None = None) -> None:
        self.bus = bus
        self.agent = agent
        self._dir = tempfile.TemporaryDirectory(prefix="tether-eval-")
        self.view = EvalView()
        self.store = ViewStore(self.view, Path(self._dir.name) / "eval.db")
        self._sync = asyncio.Lock()

    async def __aenter__(self) -> Evals:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()
        self._dir.cleanup()

    # -- the log ---------------------------------------------------------------------------------

    async def publish(self, events: Sequence[Event]) -> int:
        """Publish ``events``; the stream sequence of the last (0 if none)."""
        last = 0
        for event in events:
            receipt = await self.bus.publish(event)
            if receipt.stream_seq is None:
                raise RuntimeError(f"event {event.id} was not stored (NATS unreachable: it waits in the outbox); "
                                   "retry when the server is back")
            last = max(last, receipt.stream_seq)
        return last

    async def sync(self) -> int:
        """Fold every eval event in the log into this client's view; its checkpoint."""
        async with self._sync:
            found = await read_events(self.bus, EVAL_SUBJECTS, after=self.store.seq)
            if found:
                self.store.apply_batch([Item(seq, event, error=error) for seq, event, error in found], notify=False)
            return self.store.seq

    def _event(self, data: Any, *, runid: str | None = None) -> Event:
        return Event.of(data, agentid=self.agent, runid=runid, source=SOURCE)

    # -- datasets --------------------------------------------------------------------------------

    async def add_items(self, dataset: str, items: Iterable[NewItem | Mapping[str, Any]]) -> int:
        """Add items (or new versions of items with the same id); the position after them."""
        events: list[Event] = []
        try:
            for item in items:
                new = item if isinstance(item, NewItem) else _item_of(f"item {len(events) + 1}", item)
                events.append(self._event(DatasetItemAdded(
                    dataset=dataset, item_id=new.id or uuid7(), input=new.input, expected=new.expected,
                    tags=new.tags, source_run_id=new.source_run_id, metadata=new.metadata)))
        except InvalidEvent as exc:
            raise DatasetError(f"dataset {dataset!r}: {exc}; nothing was added") from None
        return await self.publish(events)

    async def add_file(self, dataset: str, path: Path) -> int:
        return await self.add_items(dataset, items_from_file(path))

    async def add_runs(self, dataset: str, run_ids: Sequence[str], *, expected: str = "output",
                       tags: Sequence[str] = ()) -> int:
        """An item from each recorded run: its input, its output as the expected one (``expected="output"``,
        for a run that finished ``ok``; ``"none"``: no expected output), tagged ``from-run`` and its
        status. The item's id is the run's id, so adding a run twice makes a new version."""
        if expected not in ("output", "none"):
            raise DatasetError(f"expected={expected!r}: use 'output' or 'none'")
        new = []
        for run_id in run_ids:
            trace = await read_run(self.bus, run_id)
            if not trace.events:
                raise DatasetError(f"run {run_id!r} is not in the log (`tether runs` lists runs); nothing was added")
            if trace.input is None:
                raise DatasetError(f"run {run_id!r} recorded no input (pass input= to tether.run); nothing was added")
            want = trace.output if expected == "output" and trace.status == "ok" else None
            new.append(NewItem(trace.input, want, ("from-run", trace.status or "running", *tags), id=run_id,
                               source_run_id=run_id, metadata={"agent": trace.agent, "error": trace.error}))
        return await self.add_items(dataset, new)

    async def add_matching_runs(self, dataset: str, *, agent: str | None = None, status: str | None = "error",
                                since: datetime | None = None, expected: str = "output") -> tuple[int, list[str]]:
        """Items from every run of ``agent`` that finished with ``status`` since ``since``."""
        runs = await runs_matching(self.bus, agent=agent, status=status, since=since)
        if not runs:
            return 0, []
        return await self.add_runs(dataset, runs, expected=expected), runs

    async def remove_item(self, dataset: str, item_id: str) -> int:
        await self.sync()
        if not any(i.id == item_id for i in dataset_items(self.store.db, dataset)):
            raise DatasetError(f"dataset {dataset!r} has no item {item_id!r} (`tether eval dataset show {dataset}`)")
        return await self.publish([self._event(DatasetItemRemoved(dataset=dataset, item_id=item_id))])

    async def datasets(self) -> list[dict[str, Any]]:
        await self.sync()
        return dataset_names(self.store.db)

    async def items(self, dataset: str, *, as_of: int | datetime | None = None) -> list[DatasetItem]:
        """The dataset's items now, or as of a stream sequence or a time."""
        await self.sync()
        if isinstance(as_of, datetime):
            row = self.store.db.execute("SELECT max(seq) FROM dataset_items WHERE time <= ?",
                                        (as_of.timestamp(),)).fetchone()
            as_of = row[0] or 0
        return dataset_items(self.store.db, dataset, as_of=as_of)

    async def history(self, dataset: str) -> list[ItemChange]:
        await self.sync()
        return dataset_history(self.store.db, dataset)

    # -- experiments and scores ------------------------------------------------------------------

    async def experiments(self) -> list[dict[str, Any]]:
        await self.sync()
        return experiment_names(self.store.db)

    async def experiment(self, experiment: str) -> dict[str, Any] | None:
        await self.sync()
        return experiment_info(self.store.db, experiment)

    async def trials(self, experiment: str) -> list[TrialRow]:
        await self.sync()
        return trials_of(self.store.db, experiment)

    async def scores(self, experiment: str) -> list[ScoreRow]:
        await self.sync()
        return scores_of(self.store.db, experiment)

    def score_event(self, experiment: str, item_id: str, scorer: str, score: Score, *,
                    run_id: str | None = None, kind: str = "pass") -> Event:
        """A score as an event; a ``numeric`` scorer's says so in its metadata (``kind``), so a
        comparison compares its values even when it also gives verdicts."""
        metadata = {**score.metadata, "kind": "numeric"} if kind == "numeric" else score.metadata
        return self._event(ScoreRecorded(experiment=experiment, item_id=item_id, scorer=scorer, run_id=run_id,
                                         value=score.value, passed=score.passed, reason=score.reason,
                                         metadata=metadata))

    async def record_score(self, experiment: str, item_id: str, scorer: str, score: Score, *,
                           run_id: str | None = None, kind: str = "pass") -> int:
        """Record a score of your own (a human label, an external grader's) as an event."""
        return await self.publish([self.score_event(experiment, item_id, scorer, score, run_id=run_id, kind=kind)])
