"""Pricing through genai-prices' real data: positive prices, cache rates, unknown models."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import genai_prices
import pytest

from tests._ast import parse
from tether import pricing
from tether.pricing import DEFAULT_MAX_OUTPUT_TOKENS, Price, estimate, estimate_tokens, price
from tether.schemas import Usage

AT = datetime(2026, 1, 1, tzinfo=UTC)  # a fixed date, so price changes in the data do not flake


def test_a_known_model_has_a_positive_price() -> None:
    result = price("openai", "gpt-4o", Usage(input_tokens=1000, output_tokens=500), at=AT)
    assert result.usd is not None and result.usd > 0
    assert result.priced and result.unpriced_reason is None
    assert result.source == "genai-prices"
    assert result.version == genai_prices.__version__


def test_input_and_output_both_cost() -> None:
    base = price("anthropic", "claude-haiku-4-5", Usage(input_tokens=1000, output_tokens=100), at=AT).usd
    more_in = price("anthropic", "claude-haiku-4-5", Usage(input_tokens=2000, output_tokens=100), at=AT).usd
    more_out = price("anthropic", "claude-haiku-4-5", Usage(input_tokens=1000, output_tokens=200), at=AT).usd
    assert base is not None and more_in is not None and more_out is not None
    assert more_in > base and more_out > base


@pytest.mark.parametrize(("provider", "model"), [("openai", "gpt-4o"), ("anthropic", "claude-haiku-4-5")])
def test_cached_tokens_are_cheaper_and_not_double_counted(provider: str, model: str) -> None:
    plain = price(provider, model, Usage(input_tokens=10_000, output_tokens=100), at=AT).usd
    cached = price(provider, model, Usage(input_tokens=10_000, cached_input_tokens=8_000, output_tokens=100),
                   at=AT).usd
    uncached_part = price(provider, model, Usage(input_tokens=2_000, output_tokens=100), at=AT).usd
    assert plain is not None and cached is not None and uncached_part is not None
    assert cached < plain  # cheaper...
    assert cached > uncached_part  # ...yet the 8,000 cached tokens still cost something
    # not double counted: the cached tokens are not also charged at the full input rate
    full_rate_for_8k = plain - uncached_part
    assert cached - uncached_part < full_rate_for_8k


def test_cached_tokens_priced_at_the_cache_rate_exactly() -> None:
    # gpt-4o in genai-prices: $2.50 per MTok input, $1.25 per MTok cached input, $10 per MTok output;
    # derive the rates from the data rather than trusting this comment
    def usd(usage: Usage) -> float:
        value = price("openai", "gpt-4o", usage, at=AT).usd
        assert value is not None
        return value

    input_rate = usd(Usage(input_tokens=1_000_000))
    cache_rate = usd(Usage(input_tokens=1_000_000, cached_input_tokens=1_000_000))
    assert 0 < cache_rate < input_rate
    mixed = usd(Usage(input_tokens=1_000_000, cached_input_tokens=250_000))
    assert mixed == pytest.approx(0.75 * input_rate + 0.25 * cache_rate)


def test_cache_writes_are_priced_as_their_own_part() -> None:
    plain = price("anthropic", "claude-haiku-4-5", Usage(input_tokens=10_000), at=AT).usd
    written = price("anthropic", "claude-haiku-4-5", Usage(input_tokens=10_000, cache_write_tokens=10_000),
                    at=AT).usd
    assert plain is not None and written is not None
    assert written > plain  # Anthropic charges a premium to write the cache


def test_an_unknown_model_is_unpriced_never_free() -> None:
    result = price("openai", "no-such-model-xyz", Usage(input_tokens=1000, output_tokens=10), at=AT)
    assert result.usd is None
    assert not result.priced
    assert result.unpriced_reason is not None and "no-such-model-xyz" in result.unpriced_reason


def test_an_unknown_provider_is_matched_by_model() -> None:
    direct = price("openai", "gpt-4o", Usage(input_tokens=1000, output_tokens=10), at=AT)
    via_gateway = price("fake", "gpt-4o", Usage(input_tokens=1000, output_tokens=10), at=AT)
    assert via_gateway.usd == direct.usd
    assert via_gateway.source == "genai-prices (matched by model)"
    nothing = price("fake", "fake-model-1", Usage(input_tokens=1000), at=AT)
    assert nothing.usd is None and nothing.unpriced_reason is not None


def test_inconsistent_usage_is_unpriced_with_a_reason() -> None:
    result = price("openai", "gpt-4o", Usage(input_tokens=10, cached_input_tokens=50), at=AT)
    assert result.usd is None
    assert result.unpriced_reason is not None and "cached_input_tokens (50)" in result.unpriced_reason


def test_estimate_is_an_upper_bound() -> None:
    est = estimate("openai", "gpt-4o", input_tokens=1000, max_output_tokens=1024, at=AT)
    actual = price("openai", "gpt-4o", Usage(input_tokens=1000, cached_input_tokens=600, output_tokens=200),
                   at=AT)
    assert est.usd is not None and actual.usd is not None
    assert est.usd > actual.usd
    unknown = estimate("openai", "nope-nope", input_tokens=1, max_output_tokens=1, at=AT)
    assert isinstance(unknown, Price)
    assert unknown.usd is None and unknown.unpriced_reason is not None


# -- token estimates -------------------------------------------------------------------


def test_estimate_tokens_for_chat() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "system", "content": "x" * 400},
                                             {"role": "user", "content": "y" * 800}], "max_tokens": 256}
    tokens_in, tokens_out = estimate_tokens(body)
    assert 300 <= tokens_in <= 320  # 1,200 characters / 4, plus a few per message
    assert tokens_out == 256


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
def test_max_output_keys(key: str) -> None:
    assert estimate_tokens({"input": "hello", key: 77}) == (estimate_tokens({"input": "hello"})[0], 77)


def test_default_max_output() -> None:
    assert estimate_tokens({"messages": []})[1] == DEFAULT_MAX_OUTPUT_TOKENS == 1024
    assert estimate_tokens({"messages": [], "max_tokens": True})[1] == 1024
    assert estimate_tokens({"input": "abc"}, operation="embeddings")[1] == 0


def test_estimate_tokens_for_parts_tools_and_images() -> None:
    text_only = {"messages": [{"role": "user", "content": [{"type": "text", "text": "z" * 4000}]}]}
    with_image = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "z" * 4000},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 1_000_000}}]}]}
    base = estimate_tokens(text_only)[0]
    assert 1000 <= base <= 1010
    image = estimate_tokens(with_image)[0]
    assert image - base == 1000  # a flat allowance, not the base64 length
    anthropic = {"system": "s" * 40, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "data": "B" * 100_000}}]}]}
    assert estimate_tokens(anthropic)[0] < 1100
    with_tools = {**text_only, "tools": [{"type": "function", "function": {"name": "search",
                                                                             "description": "d" * 400}}]}
    assert estimate_tokens(with_tools)[0] > base + 90


def test_estimate_tokens_for_responses_and_embeddings_input() -> None:
    assert estimate_tokens({"input": "w" * 400, "instructions": "i" * 400})[0] >= 200
    assert estimate_tokens({"input": [[1, 2, 3, 4, 5]]}, operation="embeddings")[0] >= 5


def test_pricing_imports_nothing_of_tether_but_schemas() -> None:
    tree = parse(Path(pricing.__file__).read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {m for m in modules if m.startswith("tether")} == {"tether.schemas"}


def _every_model() -> list[tuple[str, str]]:
    from genai_prices.data_snapshot import get_snapshot

    return [(p.id, m.id) for p in get_snapshot().providers for m in p.models]


def test_the_fast_path_gives_the_library_figure_for_every_model_in_the_table() -> None:
    """price() reads a model's rates once and sums them; genai-prices' own calc_price is the
    reference, for every model it knows, at several dates and usages (tiers included)."""
    import random

    rng = random.Random(7)
    checked = fast = 0
    for provider, model in _every_model():
        for at in (AT, datetime(2024, 6, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)):
            for _ in range(3):
                inp = rng.choice((0, 1, 999, 12_345, 250_000, 1_500_000))
                cached = rng.choice((0, inp // 3))
                write = rng.choice((0, (inp - cached) // 4))
                usage = Usage(input_tokens=inp, output_tokens=rng.choice((0, 7, 4_321, 90_000)),
                              cached_input_tokens=cached, cache_write_tokens=write)
                got = price(provider, model, usage, at=at)
                want = pricing._library_price(provider, model, usage, at, pricing._version())
                assert got == want, (provider, model, at, usage)
                checked += 1
                fast += not isinstance(pricing._rates(provider, model, at), type(None))
    assert checked > 1000
    assert fast > checked * 0.95  # the table really goes through the fast path


def test_fast_path_rates_follow_a_new_price_table() -> None:
    """A new snapshot (an update, set_custom_snapshot) drops every remembered rate."""
    from genai_prices import data_snapshot

    usage = Usage(input_tokens=1_000, output_tokens=100)
    before = price("openai", "gpt-4o", usage, at=AT)
    original = data_snapshot.get_snapshot()
    cheaper = data_snapshot.DataSnapshot(providers=[p for p in original.providers if p.id != "openai"],
                                         from_auto_update=False)
    data_snapshot.set_custom_snapshot(cheaper)
    try:
        after = price("openai", "gpt-4o", usage, at=AT)
        assert after.usd is None or after.source != before.source or after.usd != before.usd
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert price("openai", "gpt-4o", usage, at=AT) == before
