"""Compaction and near-duplicates: pure choices, and the summarisers that write summaries.

``plan_compaction`` decides which entries a summary replaces (the oldest, until what
stays plus the summary fits the budget); a :class:`Summarizer` writes the summary. The
default, :class:`ExtractiveSummarizer`, picks the most central sentences and needs no
model; :class:`LlmSummarizer` asks a model through tether (the call is recorded, and the
summary is recorded in ``memory.compacted``, so replay is deterministic).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._rank import STOPWORDS, estimate_tokens, words
from ._types import Entry

__all__ = [
    "ExtractiveSummarizer",
    "LlmSummarizer",
    "Plan",
    "Summarizer",
    "Summary",
    "duplicates",
    "plan_compaction",
    "similarity",
]

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True, slots=True)
class Summary:
    text: str
    call_id: str | None = None


class Summarizer(Protocol):
    name: str

    async def summarize(self, entries: Sequence[Entry], token_budget: int, *, agent: str | None = None,
                        run: str | None = None) -> Summary: ...


def _shingles(text: str) -> set[str]:
    tokens = words(text)
    if len(tokens) < 3:
        return set(tokens)
    return {" ".join(tokens[i:i + 3]) for i in range(len(tokens) - 2)}


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of word 3-shingles (of words, for very short texts): 1.0 is identical."""
    sa, sb = _shingles(a), _shingles(b)
    if not sa or not sb:
        return 1.0 if sa == sb else 0.0
    return len(sa & sb) / len(sa | sb)


def duplicates(entries: Sequence[Entry], threshold: float) -> list[tuple[Entry, Entry]]:
    """(older, newer) pairs of near-duplicates; each older entry appears once, paired with the newest."""
    out: list[tuple[Entry, Entry]] = []
    taken: set[tuple[str, str]] = set()
    ordered = sorted(entries, key=lambda e: e.seq, reverse=True)
    for i, newer in enumerate(ordered):
        if (newer.namespace, newer.key) in taken:
            continue
        for older in ordered[i + 1:]:
            if (older.namespace, older.key) in taken:
                continue
            if similarity(newer.text, older.text) >= threshold:
                out.append((older, newer))
                taken.add((older.namespace, older.key))
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    replace: tuple[Entry, ...]
    keep: tuple[Entry, ...]
    summary_budget: int


def plan_compaction(entries: Sequence[Entry], token_budget: int, *, summary_share: float = 0.25) -> Plan | None:
    """Which entries to summarise so the namespace fits ``token_budget``; None if it already fits.

    The newest entries stay as they are while they fit in the budget less the summary's
    share; everything older is summarised into at most that share.
    """
    total = sum(estimate_tokens(e.text) for e in entries)
    if total <= token_budget or len(entries) < 2:
        return None
    summary_budget = max(8, int(token_budget * summary_share))
    room = token_budget - summary_budget
    keep: list[Entry] = []
    for entry in sorted(entries, key=lambda e: e.seq, reverse=True):
        cost = estimate_tokens(entry.text)
        if cost > room:
            break
        keep.append(entry)
        room -= cost
    kept = {(e.namespace, e.key) for e in keep}
    replace = tuple(e for e in sorted(entries, key=lambda e: e.seq) if (e.namespace, e.key) not in kept)
    if len(replace) < 2 and not keep:
        return None
    if len(replace) < 2:  # one entry alone is not worth a summary: fold in the oldest kept one
        oldest = min(keep, key=lambda e: e.seq)
        keep.remove(oldest)
        replace = tuple(sorted((*replace, oldest), key=lambda e: e.seq))
    return Plan(replace, tuple(sorted(keep, key=lambda e: e.seq)), summary_budget)


class ExtractiveSummarizer:
    """The most central sentences, in their original order, within the budget. No model involved."""

    name = "extractive"

    async def summarize(self, entries: Sequence[Entry], token_budget: int, *, agent: str | None = None,
                        run: str | None = None) -> Summary:
        return Summary(self.extract(entries, token_budget))

    @staticmethod
    def extract(entries: Sequence[Entry], token_budget: int) -> str:
        sentences: list[tuple[int, str]] = []
        for entry in entries:
            for part in _SENTENCE.split(entry.text):
                part = part.strip()
                if part:
                    sentences.append((len(sentences), part))
        freq = Counter(w for _, s in sentences for w in set(words(s)) if w not in STOPWORDS)

        def score(sentence: str) -> float:
            content = [w for w in words(sentence) if w not in STOPWORDS]
            return sum(freq[w] for w in content) / (len(content) ** 0.5 or 1.0)

        ranked = sorted(sentences, key=lambda s: (-score(s[1]), s[0]))
        chosen: list[tuple[int, str]] = []
        used = 0
        seen: list[str] = []
        for index, sentence in ranked:
            if any(similarity(sentence, other) >= 0.8 for other in seen):
                continue
            cost = estimate_tokens(sentence) + 1
            if used + cost > token_budget:
                continue
            chosen.append((index, sentence))
            seen.append(sentence)
            used += cost
        if not chosen and ranked:
            first = ranked[0][1]
            return first[: max(1, token_budget * 4 - 1)].rstrip() + "…"
        return " ".join(s for _, s in sorted(chosen))


class LlmSummarizer:
    """A summary written by a model through tether: ``calls`` is a started InlineCalls or DurableCalls."""

    def __init__(self, calls: Any, provider: str, model: str, *, instructions: str | None = None) -> None:
        self.calls = calls
        self.provider = provider
        self.model = model
        self.name = f"llm:{provider}:{model}"
        self.instructions = instructions or (
            "You compact an AI agent's long-term memory. Summarise the entries below into one short text that "
            "keeps every durable fact (names, numbers, dates, preferences, decisions); drop chit-chat and "
            "repetition. Answer with the summary only.")

    async def summarize(self, entries: Sequence[Entry], token_budget: int, *, agent: str | None = None,
                        run: str | None = None) -> Summary:
        listing = "\n".join(f"[{e.key}] {e.text}" for e in entries)
        body = {"model": self.model, "max_tokens": token_budget, "messages": [
            {"role": "system", "content": f"{self.instructions} At most {token_budget} tokens."},
            {"role": "user", "content": listing},
        ]}
        result = await self.calls.llm(self.provider, self.model, body, agentid=agent, runid=run)
        text = str(result.response["choices"][0]["message"]["content"] or "").strip()
        if estimate_tokens(text) > token_budget:
            text = text[: token_budget * 4 - 1].rstrip() + "…"
        return Summary(text or ExtractiveSummarizer.extract(entries, token_budget), result.call_id)
