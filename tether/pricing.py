"""The one place tether turns token usage into dollars, for budgets and the cost ledger alike.

Prices come from the ``genai-prices`` package (its bundled snapshot, or a newer one if
the application installed ``genai_prices.UpdatePrices``), never from a table of our own.
A model it does not know is *unpriced* (``usd=None`` with a reason), never free.

Imports nothing of tether but :mod:`tether.schemas`.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import TieredPrices

from tether.schemas import Usage

__all__ = ["DEFAULT_MAX_OUTPUT_TOKENS", "Price", "estimate", "estimate_tokens", "price"]

SOURCE = "genai-prices"
DEFAULT_MAX_OUTPUT_TOKENS = 1024
"""Output tokens assumed by :func:`estimate_tokens` when a request sets no maximum."""
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REQUEST = 3
_TOKENS_PER_IMAGE = 1000
_IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})
_BINARY_KEYS = frozenset({"image_url", "url", "data", "file_data", "source", "input_audio"})
_NOT_TEXT_KEYS = frozenset({"role", "type", "id", "tool_call_id", "call_id", "cache_control", "status"})


@dataclass(frozen=True)
class Price:
    """What a call cost (or may cost), in US dollars, and where that figure came from.

    ``usd`` is ``None`` when the model has no known price; ``unpriced_reason`` says why.
    ``source`` is ``"genai-prices"``, or ``"genai-prices (matched by model)"`` when the
    provider name was not one genai-prices knows (a gateway, the fake provider) and the
    model name alone found the price. ``version`` is the genai-prices version, plus the
    data timestamp when prices were auto-updated.
    """

    usd: float | None
    source: str
    version: str
    unpriced_reason: str | None = None

    @property
    def priced(self) -> bool:
        return self.usd is not None


def price(provider: str, model: str, usage: Usage, *, at: datetime | None = None) -> Price:
    """The price of ``usage`` on ``provider``'s ``model`` (at time ``at``, default now).

    tether's ``Usage`` counts cached reads and cache writes as parts of ``input_tokens``,
    which is what genai-prices expects too; each part is priced at its own rate, once.
    """
    version = _version()
    cache_parts = usage.cached_input_tokens + usage.cache_write_tokens
    if cache_parts > usage.input_tokens:
        return Price(None, SOURCE, version,
                     f"inconsistent usage: cached_input_tokens ({usage.cached_input_tokens}) + "
                     f"cache_write_tokens ({usage.cache_write_tokens}) exceed input_tokens "
                     f"({usage.input_tokens}), which must include them")
    known = _rates(provider, model, at or datetime.now(UTC))
    if isinstance(known, Price):
        return known
    if known is not None:
        return known.price(usage)
    return _library_price(provider, model, usage, at, version)


def _library_price(provider: str, model: str, usage: Usage, at: datetime | None, version: str) -> Price:
    """genai-prices' own ``calc_price``: the reference the fast path in :func:`_rates` matches."""
    tokens = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    try:
        calculation = genai_prices.calc_price(tokens, model_ref=model, provider_id=provider,
                                              genai_request_timestamp=at)
        source = SOURCE
    except LookupError as exc:
        if not str(exc).startswith("Unable to find provider"):
            return Price(None, SOURCE, version, f"{provider}:{model} has no price in genai-prices ({exc})")
        try:
            calculation = genai_prices.calc_price(tokens, model_ref=model, genai_request_timestamp=at)
        except LookupError:
            return Price(None, SOURCE, version,
                         f"genai-prices knows neither the provider {provider!r} nor the model {model!r}")
        source = f"{SOURCE} (matched by model)"
    except ValueError as exc:  # usage it refuses, e.g. more cached tokens than input tokens
        return Price(None, SOURCE, version, f"usage cannot be priced: {exc}")
    if calculation.auto_update_timestamp is not None:
        version = f"{version}+{calculation.auto_update_timestamp.isoformat()}"
    return Price(float(calculation.total_price), source, version)


# -- the fast path ------------------------------------------------------------------------------
#
# genai-prices finds a model quickly (it caches the lookup), but then resolves the price's
# units and validates them on every call: some 50 us, paid on every budget check and by two
# views for every completion. A model price is linear in the four token counts tether
# reports within each band of input tokens its tiers define (a tier's rate applies to every
# token once the input passes its start), so the rates of each band are read once, by asking
# genai-prices itself for a few prices inside it, and every later price is that sum in
# Decimal: genai-prices' own figure (tests/test_pricing.py compares the two over the whole
# price table, tiers crossed). Anything the probes cannot price takes the library's path.

_MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class _Linear:
    """A model price's rates while the input tokens stay within one tier (or untiered)."""

    base: Decimal
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal


@dataclass(frozen=True, slots=True)
class _Rates:
    """A model price as rates: one :class:`_Linear` per band of input tokens between the
    thresholds of its tiers (genai-prices applies a tier's rate to every token once the
    input tokens pass its start)."""

    thresholds: tuple[int, ...]
    bands: tuple[_Linear, ...]
    source: str
    version: str

    def price(self, usage: Usage) -> Price:
        r = self.bands[bisect.bisect_left(self.thresholds, usage.input_tokens)]
        uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens
        total = (r.base + r.input * uncached + r.output * usage.output_tokens
                 + r.cache_read * usage.cached_input_tokens + r.cache_write * usage.cache_write_tokens)
        return Price(float(total), self.source, self.version)


class _RateCache:
    """Per genai-prices snapshot: each (provider, model)'s model entry, and each price's rates."""

    def __init__(self, snapshot: object) -> None:
        self.snapshot = snapshot
        self.models: dict[tuple[str, str], tuple[Any, str] | Price] = {}
        self.rates: dict[tuple[int, str], tuple[Any, _Rates | None]] = {}


_cache = _RateCache(None)
_cache_lock = threading.Lock()


def _rates(provider: str, model: str, at: datetime) -> _Rates | Price | None:
    """The rates for this call, an unpriced :class:`Price` when the model is unknown, or
    ``None`` when only the library's own path can price it."""
    global _cache
    snapshot = get_snapshot()
    cache = _cache
    if cache.snapshot is not snapshot:
        with _cache_lock:
            cache = _cache = _RateCache(snapshot)
    found = cache.models.get((provider, model))
    if found is None:
        found = cache.models[(provider, model)] = _find(snapshot, provider, model)
    if isinstance(found, Price):
        return found
    (prov, info), source = found
    if prov.id == "groq":  # genai-prices bills some groq models by the second: not token-linear
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    model_price = info.get_prices(at)
    entry = cache.rates.get((id(model_price), source))
    if entry is None or entry[0] is not model_price:
        version = _version()
        if snapshot.from_auto_update:
            version = f"{version}+{snapshot.timestamp.isoformat()}"
        entry = cache.rates[(id(model_price), source)] = (model_price, _probe(model_price, source, version))
    return entry[1]


def _find(snapshot: Any, provider: str, model: str) -> tuple[Any, str] | Price:
    try:
        return snapshot.find_provider_model(model, None, provider, None), SOURCE
    except LookupError as exc:
        if not str(exc).startswith("Unable to find provider"):
            return Price(None, SOURCE, _version(), f"{provider}:{model} has no price in genai-prices ({exc})")
    try:
        return snapshot.find_provider_model(model, None, None, None), f"{SOURCE} (matched by model)"
    except LookupError:
        return Price(None, SOURCE, _version(),
                     f"genai-prices knows neither the provider {provider!r} nor the model {model!r}")


def _probe(model_price: Any, source: str, version: str) -> _Rates | None:
    """Ask genai-prices for a few prices in each band and solve for the rates; ``None`` if
    it cannot (the library's path then prices every call itself)."""
    thresholds = sorted({tier.start for value in vars(model_price).values() if isinstance(value, TieredPrices)
                         for tier in value.tiers})
    if any(not isinstance(t, int) or t < 0 for t in thresholds) or len(set(thresholds)) != len(thresholds):
        return None

    def total(**tokens: int) -> Decimal:
        return Decimal(model_price.calc_price(genai_prices.Usage(**tokens))["total_price"])

    bands = []
    try:
        for lower, upper in zip([0, *thresholds], [*thresholds, None], strict=True):
            x = lower + 1  # input tokens inside this band: more than ``lower``, at most ``upper``
            if upper is not None and x + 1 > upper:
                return None
            at_x = total(input_tokens=x)
            per_input = total(input_tokens=x + 1) - at_x
            base = at_x - per_input * x
            bands.append(_Linear(base=base, input=per_input,
                                 output=(total(input_tokens=x, output_tokens=_MTOK) - at_x) / _MTOK,
                                 cache_read=(total(input_tokens=x, cache_read_tokens=x) - base) / x,
                                 cache_write=(total(input_tokens=x, cache_write_tokens=x) - base) / x))
    except (ValueError, LookupError, ArithmeticError):
        return None
    return _Rates(tuple(thresholds), tuple(bands), source, version)


def estimate(provider: str, model: str, *, input_tokens: int, max_output_tokens: int,
             at: datetime | None = None) -> Price:
    """The most a call may cost: every input token uncached, every allowed output token used."""
    usage = Usage(input_tokens=max(0, input_tokens), output_tokens=max(0, max_output_tokens))
    return price(provider, model, usage, at=at)


def _version() -> str:
    return str(genai_prices.__version__)


def estimate_tokens(body: Mapping[str, Any], *, operation: str | None = None) -> tuple[int, int]:
    """(estimated input tokens, max output tokens) of a request body, before it is sent.

    Input: about one token per four characters of text in ``messages``, ``system``,
    ``input``, ``instructions``, ``prompt`` and ``tools`` (Gemini's ``contents`` and
    ``systemInstruction``), plus a few tokens per message; images count a flat 1,000 tokens
    and binary data nothing. Output: the request's ``max_tokens`` / ``max_completion_tokens``
    / ``max_output_tokens`` (Gemini's ``generationConfig.maxOutputTokens``), else 1,024 (0 for
    ``operation="embeddings"``). Good enough to refuse a call that would break a budget,
    not an invoice.
    """
    chars = 0
    fixed = _TOKENS_PER_REQUEST
    for key in ("system", "instructions", "prompt", "input", "tools", "systemInstruction"):
        if key in body:
            text, extra = _text_size(body[key])
            chars += text
            fixed += extra
    messages = body.get("messages", body.get("contents"))
    if isinstance(messages, list):
        for message in messages:
            text, extra = _text_size(message)
            chars += text
            fixed += extra + _TOKENS_PER_MESSAGE
    input_tokens = fixed + math.ceil(chars / _CHARS_PER_TOKEN)
    if operation == "embeddings":
        return input_tokens, 0
    config = body.get("generationConfig")
    limits = config if isinstance(config, Mapping) else body
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens", "maxOutputTokens"):
        value = limits.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return input_tokens, value
    return input_tokens, DEFAULT_MAX_OUTPUT_TOKENS


def _text_size(value: Any) -> tuple[int, int]:
    """(characters of text, flat tokens for images) in a JSON value."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, list):
        if value and all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            return len(value) * _CHARS_PER_TOKEN, 0  # already tokens (embeddings input)
        sizes = [_text_size(item) for item in value]
        return sum(s[0] for s in sizes), sum(s[1] for s in sizes)
    if isinstance(value, Mapping):
        chars, fixed = 0, 0
        if value.get("type") in _IMAGE_PARTS:
            fixed += _TOKENS_PER_IMAGE
        for key, item in value.items():
            if key in _BINARY_KEYS or key in _NOT_TEXT_KEYS:
                continue
            text, extra = _text_size(item)
            chars += text
            fixed += extra
        return chars, fixed
    if isinstance(value, int | float) and not isinstance(value, bool):
        return len(str(value)), 0
    return 0, 0
