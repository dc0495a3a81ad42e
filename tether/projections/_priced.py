"""Prices for the views: :func:`tether.pricing.price`, remembered across views for a batch.

The traces view and the cost ledger price the same completions, one view after the
other within a batch; the second asks for exactly what the first did. A small memo
answers it. It is dropped whenever genai-prices' price table changes (an update, or
``set_custom_snapshot``), so a rebuild under a newer table never sees an old figure.
"""

from __future__ import annotations

from datetime import datetime

from genai_prices.data_snapshot import get_snapshot

from tether.pricing import Price, price
from tether.schemas import Usage

__all__ = ["call_price"]

_SIZE = 8192
_memo: dict[tuple[str, str, Usage, datetime], Price] = {}
_table: object = None


def call_price(provider: str, model: str, usage: Usage, at: datetime) -> Price:
    """``price(provider, model, usage, at=at)``, the same figure, computed once per batch."""
    global _table
    table = get_snapshot()
    if table is not _table:
        _memo.clear()
        _table = table
    key = (provider, model, usage, at)
    found = _memo.get(key)
    if found is None:
        if len(_memo) >= _SIZE:
            _memo.clear()
        found = _memo[key] = price(provider, model, usage, at=at)
    return found
