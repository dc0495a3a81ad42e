"""Datasets as events: from recorded runs (by id, and by a filter), from JSONL/CSV and code;
versioned (as-of reads, history); bad input refused with nothing added."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tether.bus import Bus
from tether.eval import DatasetError, Evals, items_from_file
from tether.testing import FakeProvider

from .conftest import record_run, unique

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def test_dataset_from_recorded_runs_is_versioned(bus: Bus, fake: FakeProvider, evals: Evals) -> None:
    agent, name = unique("support-bot"), unique("support-qa")
    before = datetime.now(UTC)
    ok = [await record_run(bus, agent, f"where is parcel {n}?") for n in range(3)]
    failed = [await record_run(bus, agent, f"fail on parcel {n}") for n in range(2)]

    first = await evals.add_runs(name, ok)
    items = await evals.items(name)
    assert [i.id for i in items] == sorted(ok)
    item = next(i for i in items if i.id == ok[0])
    assert item.input == "where is parcel 0?" and item.source_run_id == ok[0]
    assert isinstance(item.expected, str) and item.expected.startswith("This is fake reply")
    assert item.tags == ("from-run", "ok") and item.version == 1 and item.metadata["agent"] == agent

    seq, matched = await evals.add_matching_runs(name, agent=agent, status="error", since=before)
    assert sorted(matched) == sorted(failed)
    errors = [i for i in await evals.items(name) if i.id in failed]
    assert len(errors) == 2 and all(i.expected is None and i.tags == ("from-run", "error") for i in errors)
    assert await evals.add_matching_runs(name, agent=agent, status="error", since=datetime.now(UTC)) == (0, [])

    # a new version of an item, then a removal: the past stays readable
    await evals.add_items(name, [{"id": ok[0], "input": "where is parcel 0?", "expected": "In Lisbon."}])
    await evals.remove_item(name, ok[1])
    now = {i.id: i for i in await evals.items(name)}
    assert ok[1] not in now and now[ok[0]].expected == "In Lisbon." and now[ok[0]].version == 2
    then = {i.id: i for i in await evals.items(name, as_of=first)}
    assert sorted(then) == sorted(ok) and then[ok[0]].version == 1 and then[ok[0]].expected == item.expected
    assert len(await evals.items(name, as_of=seq)) == 5
    assert await evals.items(name, as_of=datetime(2000, 1, 1, tzinfo=UTC)) == []
    history = [(c.item_id, c.op, c.version) for c in await evals.history(name)]
    assert history[-2:] == [(ok[0], "added", 2), (ok[1], "removed", 1)]  # the version it removed
    assert len(history) == 7
    listed = {d["dataset"]: d for d in await evals.datasets()}
    assert listed[name]["items"] == 4


async def test_bad_runs_are_refused_and_nothing_is_added(bus: Bus, fake: FakeProvider, evals: Evals) -> None:
    name = unique("qa")
    good = await record_run(bus, unique("bot"), "where is parcel 9?")
    with pytest.raises(DatasetError, match="run 'no-such-run' is not in the log"):
        await evals.add_runs(name, [good, "no-such-run"])
    assert await evals.items(name) == []
    with pytest.raises(DatasetError, match="has no item 'nope'"):
        await evals.remove_item(name, "nope")


async def test_dataset_from_files_and_code(tmp_path: Path, bus: Bus, evals: Evals) -> None:
    name = unique("files")
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text('{"id": "a", "input": "2+2?", "expected": "4", "tags": ["math"]}\n\n'
                     '{"input": {"q": "capital of France"}, "expected": "Paris", "metadata": {"src": "quiz"}}\n')
    csv = tmp_path / "items.csv"
    csv.write_text("id,input,expected,tags\nc,3+3?,6,math;easy\nd,hello,,\n")
    await evals.add_file(name, jsonl)
    await evals.add_file(name, csv)
    await evals.add_items(name, [{"id": "e", "input": "from code"}])
    items = {i.id: i for i in await evals.items(name)}
    assert items["a"].tags == ("math",) and items["a"].expected == "4"
    assert items["c"].tags == ("math", "easy") and items["d"].expected is None
    assert items["e"].input == "from code"
    assert sum(1 for i in items.values() if i.input == {"q": "capital of France"}) == 1
    assert len(items) == 5


@pytest.mark.parametrize(("text", "suffix", "error"), [
    ('{"input": "x"}\n{"input": \n', ".jsonl", r"items.jsonl:2: not JSON"),
    ('{"input": "x"}\n["a"]\n', ".jsonl", r"items.jsonl:2: expected a JSON object"),
    ('{"input": "x", "expcted": "y"}\n', ".jsonl", r"items.jsonl:1: unknown field\(s\) \['expcted'\]"),
    ('{"expected": "y"}\n', ".jsonl", r"items.jsonl:1: no `input`"),
    ("question,answer\nq,a\n", ".csv", r"must name the columns, `input` among them"),
    ("input,expected\nq,a\n,b\n", ".csv", r"items.csv:3: no `input`"),
    ("input\n", ".txt", r"expected a .jsonl or .csv file"),
])
def test_bad_files_name_the_line(tmp_path: Path, text: str, suffix: str, error: str) -> None:
    path = tmp_path / f"items{suffix}"
    path.write_text(text)
    with pytest.raises(DatasetError, match=error):
        items_from_file(path)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read it"):
        items_from_file(tmp_path / "nope.jsonl")
