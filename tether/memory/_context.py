"""Packing search hits into prompt text that fits a token budget, one citation per item."""

from __future__ import annotations

from collections.abc import Sequence

from ._rank import estimate_tokens
from ._types import Context, Hit

__all__ = ["HEADER", "pack"]

HEADER = "Relevant memory (cite by [n]):"


def _line(n: int, hit: Hit, text: str) -> str:
    e = hit.entry
    when = e.updated_at.date().isoformat() if e.updated_at else "?"
    return f"[{n}] {text} ({e.citation}, {when})"


def pack(hits: Sequence[Hit], token_budget: int) -> Context:
    """Best hits first while they fit; an item that does not fit is skipped for a smaller one.
    If not even the best one fits, it is cut (ending in ``…``) rather than left out."""
    lines = [HEADER]
    used = estimate_tokens(HEADER)
    chosen: list[Hit] = []
    for hit in hits:
        line = _line(len(chosen) + 1, hit, " ".join(hit.entry.text.split()))
        cost = estimate_tokens(line) + 1
        if used + cost <= token_budget:
            lines.append(line)
            chosen.append(hit)
            used += cost
    if not chosen and hits:
        hit = hits[0]
        frame = estimate_tokens(_line(1, hit, "…")) + 1
        room = (token_budget - used - frame) * 4
        if room > 0:
            text = " ".join(hit.entry.text.split())[:room].rstrip() + "…"
            line = _line(1, hit, text)
            lines.append(line)
            chosen.append(hit)
            used += estimate_tokens(line) + 1
    if not chosen:
        return Context("", (), 0, token_budget, ())
    text = "\n".join(lines)
    return Context(text, tuple(chosen), estimate_tokens(text), token_budget, tuple(h.entry.citation for h in chosen))
