"""Ranking, fusion and packing: pure functions of scores, ages and budgets."""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from typing import TypeVar

__all__ = [
    "STOPWORDS",
    "estimate_tokens",
    "fts_query",
    "query_terms",
    "recency",
    "rerank",
    "rrf",
    "words",
]

K = TypeVar("K", bound=Hashable)

_STOP = """
a about above after again all am an and any are as at be because been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only
or other our ours ourselves out over own same she should so some such than that the their theirs them themselves
then there these they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves
"""
STOPWORDS = frozenset(_STOP.split())

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def query_terms(text: str) -> list[str]:
    """The content words of a query, at most 32 (each is quoted in FTS syntax: input is never syntax)."""
    tokens = words(text)
    content = [t for t in tokens if t not in STOPWORDS and len(t) > 1] or tokens
    return list(dict.fromkeys(content))[:32]


def fts_query(text: str) -> str | None:
    """An FTS5 query matching any of the text's content words."""
    unique = query_terms(text)
    return " OR ".join(f'"{t}"' for t in unique) if unique else None


def estimate_tokens(text: str) -> int:
    """About four characters per token: the usual rule of thumb for English and code."""
    return max(1, math.ceil(len(text) / 4))


def recency(age_s: float, half_life_s: float) -> float:
    """1 for brand new, 0.5 after one half-life."""
    return float(0.5 ** (max(0.0, age_s) / half_life_s)) if half_life_s > 0 else 0.0


def rerank(relevance: Sequence[float], ages_s: Sequence[float], *, weight: float, half_life_s: float) -> list[float]:
    """Blend relevance (normalised to the best candidate) with recency: ``rel * (1 + w * recency)``."""
    best = max(relevance, default=0.0) or 1.0
    return [(r / best) * (1.0 + weight * recency(a, half_life_s)) for r, a in zip(relevance, ages_s, strict=True)]


def rrf(*rankings: Sequence[K], k: int = 60) -> dict[K, float]:
    """Reciprocal rank fusion: ``sum(1 / (k + rank))`` over the rankings an item appears in."""
    out: dict[K, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            out[item] = out.get(item, 0.0) + 1.0 / (k + rank)
    return out
