"""The cost ledger's fold: each completed LLM call into a priced row of ``calls``, and each
replayed one (journal or cache) into a row that cost nothing and saved what the original cost."""

from __future__ import annotations

from datetime import UTC

from tether.schemas import CallReplayed, Event, LlmCallCompleted

from .._ops import Op, Table, Upsert
from .._priced import call_price
from .._store import Projection

__all__ = ["CostLedger"]

CALLS = Table("calls", {
    "call_id": "TEXT", "run_id": "TEXT", "agent": "TEXT", "tenant": "TEXT", "provider": "TEXT", "model": "TEXT",
    "day": "TEXT", "at": "REAL", "input_tokens": "INTEGER", "output_tokens": "INTEGER", "cached_tokens": "INTEGER",
    "cache_write_tokens": "INTEGER", "reasoning_tokens": "INTEGER", "usd": "REAL", "priced": "INTEGER",
    "price_source": "TEXT", "price_version": "TEXT", "unpriced_reason": "TEXT", "seq": "INTEGER",
    "via": "TEXT", "saved_usd": "REAL", "original_call_id": "TEXT",
}, key=("call_id",), indexes=(("at",), ("run_id",)))


class CostLedger(Projection):
    """Priced LLM calls: table ``calls``, one row per completed LLM call, priced by :func:`tether.pricing.price`.

    Each ``llm.call.completed`` becomes a row keyed by its call id (a duplicate event
    rewrites the same row), with its tokens, the dollars, and where that figure came from
    (``price_source``, ``price_version``). A model genai-prices does not know is recorded
    with ``usd`` NULL, ``priced`` 0 and the reason: unpriced, never free. Calls are priced
    at the event's own time, so a rebuild gives the same figures; a rebuild under a newer
    genai-prices re-prices history (``tether replay cost``).

    Tokens as tether records them (see :class:`tether.schemas.Usage`): ``cached_tokens`` and
    ``cache_write_tokens`` are parts of ``input_tokens`` and ``reasoning_tokens`` a part of
    ``output_tokens``; each part is priced once, at its own rate.

    A call answered from the record (``call.replayed``: a resumed run's journal, ``via``
    ``journal``, or the response cache, ``cache``) costs nothing: its row has no tokens,
    ``usd`` 0, and ``saved_usd``, what its original's usage costs at the event's time, with
    ``original_call_id``.

    Read it with :func:`~tether.projections.ledger.totals` and :func:`~tether.projections.ledger.calls`.
    """

    name = "cost"
    version = 2
    tables = (CALLS,)
    types = frozenset({LlmCallCompleted.event_type, CallReplayed.event_type})

    def apply(self, event: Event, seq: int) -> list[Op]:
        data = event.data
        if isinstance(data, CallReplayed):
            return self._replayed(event, data, seq)
        if not isinstance(data, LlmCallCompleted):
            return []
        usage = data.usage
        cost = call_price(data.provider, data.model, usage, event.time)
        return [Upsert("calls", {
            "call_id": data.call_id, "run_id": event.runid, "agent": event.agentid,
            "tenant": event.extensions.get("tenant"), "provider": data.provider, "model": data.model,
            "day": event.time.astimezone(UTC).date().isoformat(), "at": event.time.timestamp(),
            "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_input_tokens, "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens, "usd": cost.usd, "priced": int(cost.priced),
            "price_source": cost.source, "price_version": cost.version, "unpriced_reason": cost.unpriced_reason,
            "seq": seq,
        })]

    def _replayed(self, event: Event, data: CallReplayed, seq: int) -> list[Op]:
        if data.call_kind != "llm":
            return []
        provider, model = data.provider or "?", data.model or "?"
        saved = call_price(provider, model, data.usage, event.time)
        return [Upsert("calls", {
            "call_id": data.call_id, "run_id": event.runid, "agent": event.agentid,
            "tenant": event.extensions.get("tenant"), "provider": provider, "model": model,
            "day": event.time.astimezone(UTC).date().isoformat(), "at": event.time.timestamp(),
            "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "cache_write_tokens": 0,
            "reasoning_tokens": 0, "usd": 0.0, "priced": 1, "price_source": data.via, "price_version": None,
            "unpriced_reason": None, "seq": seq, "via": data.via, "saved_usd": saved.usd,
            "original_call_id": data.original_call_id,
        })]
