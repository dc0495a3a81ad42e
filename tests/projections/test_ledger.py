"""The cost ledger: figures checked by hand against genai-prices' data, unpriced models, totals."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta, timezone
from decimal import Decimal

import genai_prices
import genai_prices.data
import pytest
from genai_prices.data_snapshot import DataSnapshot, set_custom_snapshot
from genai_prices.types import ModelPrice

from tether.projections import CostLedger
from tether.projections.ledger import calls, totals
from tether.schemas import Event, LlmCallCompleted, LlmCallRequested, Usage

from ._runs import T0, Run, by_hand, fold, republished

R = Run(tenant="acme")


def completed(call: str, provider: str, model: str, usage: Usage, at: float = 1, run: Run = R) -> Event:
    return run(LlmCallCompleted(call_id=call, provider=provider, model=model, usage=usage), at)


@pytest.mark.parametrize(("provider", "model", "usage"), [
    ("openai", "gpt-4o", Usage(input_tokens=1200, output_tokens=300)),
    ("openai", "gpt-4o", Usage(input_tokens=1200, output_tokens=300, cached_input_tokens=1000)),
    ("openai", "gpt-5-mini", Usage(input_tokens=5000, output_tokens=2000, cached_input_tokens=3000,
                                   reasoning_tokens=1500)),
    ("anthropic", "claude-haiku-4-5", Usage(input_tokens=10_000, output_tokens=500)),
    ("anthropic", "claude-haiku-4-5", Usage(input_tokens=10_000, output_tokens=500, cached_input_tokens=2000,
                                            cache_write_tokens=3000)),
    ("google", "gemini-2.5-flash", Usage(input_tokens=8000, output_tokens=1000, cached_input_tokens=6000)),
], ids=["gpt-4o", "gpt-4o-cached", "gpt-5-mini-cached-reasoning", "haiku", "haiku-cache-read-write",
        "gemini-flash-cached"])
def test_each_call_is_priced_as_by_hand(provider: str, model: str, usage: Usage) -> None:
    [row] = calls(fold(CostLedger(), [completed("c1", provider, model, usage)]).db)
    assert row["usd"] == pytest.approx(by_hand(provider, model, usage), rel=1e-9)
    assert (row["priced"], row["price_source"], row["unpriced_reason"]) == (1, "genai-prices", None)
    assert row["price_version"] == genai_prices.__version__
    assert (row["input_tokens"], row["output_tokens"], row["cached_tokens"], row["cache_write_tokens"],
            row["reasoning_tokens"]) == (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens,
                                         usage.cache_write_tokens, usage.reasoning_tokens)
    assert (row["call_id"], row["run_id"], row["agent"], row["tenant"]) == ("c1", "r1", "bot", "acme")
    assert (row["provider"], row["model"], row["day"]) == (provider, model, "2026-01-01")


def test_cached_tokens_are_not_counted_twice() -> None:
    plain, cached = Usage(input_tokens=10_000, output_tokens=0), Usage(input_tokens=10_000, cached_input_tokens=8000)
    db = fold(CostLedger(), [completed("a", "openai", "gpt-4o", plain), completed("b", "openai", "gpt-4o", cached)]).db
    usd = {r["call_id"]: r["usd"] for r in calls(db)}
    [openai] = [p for p in genai_prices.data.providers if p.id == "openai"]
    [gpt4o] = [m for m in openai.models if m.id == "gpt-4o"]
    assert isinstance(gpt4o.prices, ModelPrice)
    full, cache = (float(gpt4o.prices.input_mtok) / 1e6,  # type: ignore[attr-defined]
                   float(gpt4o.prices.cache_read_mtok) / 1e6)  # type: ignore[attr-defined]
    assert 0 < cache < full
    # 2,000 uncached tokens at the input rate and 8,000 at the cache rate, not 10,000 + 8,000
    assert usd["b"] == pytest.approx(2000 * full + 8000 * cache)
    assert usd["a"] == pytest.approx(10_000 * full)
    [total] = totals(db, by="model")
    assert total["input_tokens"] == 20_000 and total["cached_tokens"] == 8000


def test_an_unknown_model_is_unpriced_never_free() -> None:
    known = Usage(input_tokens=1000, output_tokens=100)
    db = fold(CostLedger(), [completed("a", "openai", "gpt-4o", known),
                             completed("b", "openai", "no-such-model-9", known),
                             completed("c", "acme-gateway", "house-model", known)]).db
    rows = {r["call_id"]: r for r in calls(db)}
    for call in ("b", "c"):
        assert rows[call]["usd"] is None and rows[call]["priced"] == 0
        assert rows[call]["unpriced_reason"]
    assert "no-such-model-9" in rows["b"]["unpriced_reason"]
    by_model = {t["key"]: t for t in totals(db, by="model")}
    assert by_model["no-such-model-9"]["usd"] is None and by_model["no-such-model-9"]["unpriced"] == 1
    [provider] = totals(db, by="provider", since=None)[:1]
    assert provider["key"] == "openai" and provider["calls"] == 2 and provider["unpriced"] == 1
    assert provider["usd"] == pytest.approx(by_hand("openai", "gpt-4o", known)), "the priced part, flagged"
    assert [r["call_id"] for r in calls(db, unpriced=True)] == ["b", "c"]


def test_a_provider_genai_prices_does_not_know_is_matched_by_model() -> None:
    usage = Usage(input_tokens=1000, output_tokens=100)
    [row] = calls(fold(CostLedger(), [completed("a", "my-gateway", "claude-haiku-4-5", usage)]).db)
    assert row["usd"] == pytest.approx(by_hand("anthropic", "claude-haiku-4-5", usage))
    assert row["price_source"] == "genai-prices (matched by model)"


def test_a_duplicate_completion_is_one_row() -> None:
    event = completed("c1", "openai", "gpt-4o", Usage(input_tokens=100, output_tokens=10))
    db = fold(CostLedger(), [event, event, republished(event)]).db
    assert [t["calls"] for t in totals(db, by="run")] == [1]


def test_totals_by_every_grouping() -> None:
    other = Run("r2", agent="helper")
    u = Usage(input_tokens=1000, output_tokens=100)
    late = Run("r3", agent="helper")
    new_york = timezone(timedelta(hours=-5))
    events = [
        completed("a", "openai", "gpt-4o", u, at=0),
        completed("b", "openai", "gpt-4o-mini", u, at=10),
        completed("c", "anthropic", "claude-haiku-4-5", u, at=20, run=other),
        # 23:30 in New York on Jan 1 is Jan 2 in UTC: the ledger's days are UTC days
        late(LlmCallCompleted(call_id="d", provider="openai", model="gpt-4o", usage=u),
             0, time=(T0 + timedelta(hours=16, minutes=30)).astimezone(new_york)),
        R(LlmCallRequested(call_id="e", provider="openai", model="gpt-4o"), 30),  # not completed: no row
    ]
    db = fold(CostLedger(), events).db
    price = {m: by_hand(p, m, u) for p, m in [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"),
                                               ("anthropic", "claude-haiku-4-5")]}

    def grouped(by: str, **kw: object) -> dict[str, tuple[int, float]]:
        return {t["key"]: (t["calls"], round(t["usd"], 12)) for t in totals(db, by=by, **kw)}  # type: ignore[arg-type]

    assert grouped("model") == {"gpt-4o": (2, round(2 * price["gpt-4o"], 12)),
                                "gpt-4o-mini": (1, round(price["gpt-4o-mini"], 12)),
                                "claude-haiku-4-5": (1, round(price["claude-haiku-4-5"], 12))}
    assert list(grouped("model")) == ["gpt-4o", "claude-haiku-4-5", "gpt-4o-mini"], "most expensive first"
    assert grouped("agent") == {"bot": (2, round(price["gpt-4o"] + price["gpt-4o-mini"], 12)),
                                "helper": (2, round(price["claude-haiku-4-5"] + price["gpt-4o"], 12))}
    assert grouped("run")["r3"] == (1, round(price["gpt-4o"], 12))
    assert grouped("provider")["anthropic"] == (1, round(price["claude-haiku-4-5"], 12))
    assert list(grouped("day")) == ["2026-01-01", "2026-01-02"]
    assert grouped("day", since=T0 + timedelta(seconds=15)) == {
        "2026-01-01": (1, round(price["claude-haiku-4-5"], 12)), "2026-01-02": (1, round(price["gpt-4o"], 12))}
    [one] = totals(db, by="run", since=T0.timestamp() + 15)[:1]
    assert one["calls"] == 1
    with pytest.raises(ValueError, match="choose one of"):
        totals(db, by="tenant")  # type: ignore[arg-type]
    assert [r["call_id"] for r in calls(db, agent="helper")] == ["d", "c"]
    assert [r["call_id"] for r in calls(db, model="gpt-4o", run_id="r1")] == ["a"]
    assert [r["call_id"] for r in calls(db, provider="anthropic", unpriced=False, limit=5)] == ["c"]


@pytest.fixture
def gpt4o_doubled() -> Iterator[None]:
    """A newer price table in which gpt-4o costs twice as much."""
    providers = []
    for provider in genai_prices.data.providers:
        if provider.id == "openai":
            models = []
            for model in provider.models:
                if model.id == "gpt-4o":
                    old = model.prices
                    assert isinstance(old, ModelPrice)
                    model = dataclasses.replace(model, price_variants=[], prices=ModelPrice(
                        input_mtok=Decimal(2) * old.input_mtok, output_mtok=Decimal(2) * old.output_mtok,  # type: ignore[attr-defined]
                        cache_read_mtok=Decimal(2) * old.cache_read_mtok))  # type: ignore[attr-defined]
                models.append(model)
            provider = dataclasses.replace(provider, models=models)
        providers.append(provider)
    set_custom_snapshot(DataSnapshot(providers=providers, from_auto_update=False))
    try:
        yield
    finally:
        set_custom_snapshot(None)


def test_a_rebuild_under_a_newer_price_table_reprices_history(gpt4o_doubled: None) -> None:
    usage = Usage(input_tokens=1000, output_tokens=100, cached_input_tokens=200)
    events = [completed("a", "openai", "gpt-4o", usage)]
    [repriced] = calls(fold(CostLedger(), events).db)
    set_custom_snapshot(None)
    [original] = calls(fold(CostLedger(), events).db)
    assert original["usd"] == pytest.approx(by_hand("openai", "gpt-4o", usage))
    assert repriced["usd"] == pytest.approx(2 * original["usd"])


def test_apply_is_pure_and_reads_only_completions_and_replays() -> None:
    view = CostLedger()
    event = completed("c1", "openai", "gpt-4o", Usage(input_tokens=10))
    assert view.apply(event, 3) == view.apply(event, 3)
    assert view.types == frozenset({"tether.llm.call.completed", "tether.call.replayed"})
    assert view.apply(R(LlmCallRequested(call_id="c1", provider="openai", model="gpt-4o"), 0), 1) == []
    assert view.notify_key(view.apply(event, 3)[0]) == "c1"


def test_a_replayed_call_costs_nothing_and_saves_what_its_original_cost() -> None:
    from tether.schemas import CallReplayed

    u = Usage(input_tokens=1200, output_tokens=300)
    events = [completed("paid", "openai", "gpt-4o", u),
              R(CallReplayed(call_id="again", call_kind="llm", via="journal", original_call_id="paid",
                             provider="openai", model="gpt-4o", usage=u), 2),
              R(CallReplayed(call_id="hit", call_kind="llm", via="cache", original_call_id="paid",
                             provider="openai", model="gpt-4o", usage=u), 3),
              R(CallReplayed(call_id="tool", call_kind="tool", via="journal", original_call_id="t0", tool="send"), 4)]
    db = fold(CostLedger(), events).db
    [row] = totals(db, by="model")
    paid = by_hand("openai", "gpt-4o", u)
    assert (row["calls"], row["replayed"], row["cache_hits"]) == (3, 1, 1)
    assert row["usd"] == pytest.approx(float(paid)), "only the original was paid"
    assert row["saved_usd"] == pytest.approx(2 * float(paid))
    assert row["input_tokens"] == 1200
    again = calls(db, run_id=R.run_id)
    assert {r["call_id"]: (r["via"], r["original_call_id"]) for r in again} == {
        "paid": (None, None), "again": ("journal", "paid"), "hit": ("cache", "paid")}
