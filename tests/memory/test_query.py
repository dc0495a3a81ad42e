"""The keyword retriever's SQL (``tether.memory._query.keyword``) on views folded here, no NATS: the
ways it can find and score its candidates give the same entries with the same scores, in the same order."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tether.memory import InMemoryKeyStore, MemoryStore, MemoryView, _query
from tether.memory._codec import seal_entry
from tether.memory._view import ns_token
from tether.projections import Item
from tether.schemas import Event, MemoryCompacted, MemoryDeleted, MemoryWritten

NAMESPACES = ["team:a", "team:b", "agent:x", "user:1", "user:2"]
NOW = 1.8e9


def _fold(path: Path, n: int, seed: int, vocabulary: int, lengths: tuple[int, int]) -> list[str]:
    """A view of ``n`` events over five namespaces: versions of the same keys, deletions, compactions,
    entries expired or not; Zipf-distributed words, so some match most entries. Returns the words."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(vocabulary)]
    weights = [1 / (i + 1) for i in range(vocabulary)]
    keys = InMemoryKeyStore()
    store = MemoryStore(MemoryView(keys), path)
    versions: dict[tuple[str, str], int] = {}
    items: list[Item] = []
    for seq in range(1, n + 1):
        ns, key, r = rng.choice(NAMESPACES), f"k{rng.randrange(max(n // 3, 1))}", rng.random()
        payload: Any
        if r < 0.05 and (ns, key) in versions:
            payload = MemoryDeleted(namespace=ns, key=key, version=versions[(ns, key)])
        elif r < 0.06:
            replaced = tuple(f"{k}@{v}" for (space, k), v in list(versions.items())[:3] if space == ns)
            payload = MemoryCompacted(namespace=ns, key=f"summary{seq}", version=1, replaced=replaced,
                                      summary=" ".join(rng.choices(vocab, weights, k=8)))
        else:
            versions[(ns, key)] = version = versions.get((ns, key), 0) + 1
            expires = datetime.fromtimestamp(NOW + (-5 if rng.random() < 0.3 else 1e6), UTC) \
                if rng.random() < 0.1 else None
            text = " ".join(rng.choices(vocab, weights, k=rng.randint(*lengths)))
            payload = MemoryWritten(namespace=ns, key=key, version=version, expires_at=expires, **seal_entry(
                keys, ns, key, text, {"bucket": rng.randrange(4), "tag": rng.choice(vocab[:50])}, None))
        items.append(Item(seq, Event.of(payload, agentid="bot", time=datetime.fromtimestamp(NOW - n + seq, UTC))))
    for i in range(0, len(items), 500):  # a segment of the FTS index per batch, as a feed writes them
        store.apply_batch(items[i:i + 500])
    store.close()
    return vocab


def _searches(vocab: list[str], n: int, count: int) -> Iterator[tuple[list[str], dict[str, Any]]]:
    rng = random.Random(n)
    weights = [1 / (i + 1) for i in range(len(vocab))]
    for _ in range(count):
        terms = list(dict.fromkeys(rng.choices(vocab, weights, k=rng.randint(1, 4))))
        if rng.random() < 0.1:
            terms.append("absent")
        if rng.random() < 0.1:  # a word that is a namespace's token: never matched in the namespace column
            terms.append(ns_token(rng.choice(NAMESPACES)))
        pick, past = rng.random(), rng.random()
        names = None if pick < 0.2 else [] if pick < 0.23 else rng.sample(NAMESPACES, rng.randint(1, 3))
        yield terms, {"namespaces": names, "patterns": None if names is not None else rng.choice([["team:*"], ["*"]]),
                      "filters": {"bucket": rng.randrange(4)} if rng.random() < 0.2 else None,
                      "limit": rng.choice([5, 40, 100]), "include_compacted": rng.random() < 0.2,
                      "weights": rng.choice([(1.0, 1.0, 1.0), (1.0, 0.5, 0.5)]),
                      "as_of": rng.randrange(1, n + 1) if past < 0.1 else None,
                      "valid_at": NOW - rng.randrange(n) if 0.1 <= past < 0.2 else None}


@pytest.mark.parametrize(("n", "vocabulary", "lengths"), [
    (300, 600, (4, 20)),  # small: every match is scored
    (6000, 600, (4, 20)),  # common words pruned, the most recent SCAN_LIMIT matches of the rest ranked
    (4000, 6, (1, 3)),  # a few words: most entries tie on BM25 with others
])
def test_the_faster_queries_find_what_the_plain_ones_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, vocabulary: int, lengths: tuple[int, int]) -> None:
    """The plain way: one FTS query per search, each word matched with a filter on the text, key and
    metadata columns. The faster: from ``APART_FROM`` entries in the searched namespaces on, the
    query with their phrase only finds the candidates and another without it scores them (BM25 counts
    the matches of each phrase of its query), and words no namespace token can be are matched without
    the column filter. Every search finds the same entries with the same scores in the same order."""
    path = tmp_path / "view.db"
    vocab = _fold(path, n, n, vocabulary, lengths)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    phrase = _query._phrase
    scored_apart = 0
    try:
        plain, faster = _query.TermStats(), _query.TermStats()
        for terms, scope in _searches(vocab, n, 150):
            monkeypatch.setattr(_query, "APART_FROM", 10**9)
            monkeypatch.setattr(_query, "_phrase", lambda term: f'{_query.FIELDS} : "{term}"')
            expected = _query.keyword(db, terms, now=NOW, stats=plain, **scope)
            monkeypatch.setattr(_query, "APART_FROM", 0)
            monkeypatch.setattr(_query, "_phrase", phrase)
            statements.clear()
            found = _query.keyword(db, terms, now=NOW, stats=faster, **scope)
            assert [(e, rel) for e, rel in found] == [(e, rel) for e, rel in expected], (terms, scope)
            apart = [s for s in statements if "bm25(" in s and "json_each" in s]  # (parameters expanded)
            assert not any(" ns : " in s for s in apart)
            scored_apart += bool(apart)
    finally:
        db.close()
    assert scored_apart >= 30  # the searches did take that path


def test_words_are_matched_without_a_column_filter_unless_a_namespace_token_could_be_one() -> None:
    assert _query._phrase("kalo") == '"kalo"'
    assert _query._phrase("dana_2") == '"dana_2"'
    for word in ("nsfw", "ns1f3a", "x_nsab", "café"):  # may be (or fold into) a namespace column's token
        assert _query._phrase(word) == f'{_query.FIELDS} : "{word}"'


def test_the_namespace_phrase_is_scored_apart_only_in_large_namespaces(tmp_path: Path) -> None:
    path = tmp_path / "view.db"
    vocab = _fold(path, 3000, 1, 300, (4, 20))
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    try:
        stats = _query.TermStats()
        _query.keyword(db, vocab[5:8], namespaces=["team:a"], patterns=None, filters=None, now=NOW, limit=10,
                       stats=stats)
        scoring = [s for s in statements if "bm25(" in s]
        assert scoring and all(f'ns : ("{ns_token("team:a")}")' in s for s in scoring)  # 600 entries: one query
        assert stats.of(db, ns_token("team:a"), "ns") < _query.APART_FROM
    finally:
        db.close()
