"""The one place tether turns token usage into dollars, for budgets and the cost ledger alike.

Prices come from the ``genai-prices`` package (its bundled snapshot, or a newer one if
the application installed ``genai_prices.UpdatePrices``), never from a table of our own.
A model it does not know is *unpriced* (``usd=None`` with a reason), never free.

Imports nothing of tether but :mod:`tether.schemas`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import genai_prices

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
    ``input``, ``instructions``, ``prompt`` and ``tools``, plus a few tokens per message;
    images count a flat 1,000 tokens and binary data nothing. Output: the request's
    ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``, else 1,024 (0 for
    ``operation="embeddings"``). Good enough to refuse a call that would break a budget,
    not an invoice.
    """
    chars = 0
    fixed = _TOKENS_PER_REQUEST
    for key in ("system", "instructions", "prompt", "input", "tools"):
        if key in body:
            text, extra = _text_size(body[key])
            chars += text
            fixed += extra
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            text, extra = _text_size(message)
            chars += text
            fixed += extra + _TOKENS_PER_MESSAGE
    input_tokens = fixed + math.ceil(chars / _CHARS_PER_TOKEN)
    if operation == "embeddings":
        return input_tokens, 0
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
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
