"""Ranking, fusion and packing: pure functions of scores, ages and budgets.

The query's words keep what decides a question about time or truth: temporal words
("now", "before", "latest") and negations ("not", "never") are not stopwords.
:class:`Ranking` holds the weights hybrid search fuses and re-ranks with; its defaults
were chosen on the tuning half of ``bench/memory_set.json`` (never on the held-out half).
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

__all__ = [
    "FEATURES",
    "KEPT",
    "STOPWORDS",
    "Candidate",
    "Features",
    "Ranking",
    "content_words",
    "estimate_tokens",
    "features",
    "fts_query",
    "fuse",
    "guard",
    "names",
    "query_terms",
    "recency",
    "rerank",
    "rrf",
    "rrf_weighted",
    "score",
    "similar_words",
    "stem",
    "temporal",
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
KEPT = frozenset({"now", "not", "no", "nor", "before", "after", "until", "during", "once", "again", "then",
                  "above", "below", "over", "under", "off", "only", "more", "most"})
"""Words a generic stopword list drops that decide questions about time, truth and amount."""
STOPWORDS = frozenset(_STOP.split()) - KEPT

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def stem(word: str) -> str:
    """A crude stem, enough to match "manager" with "manages" and "leads" with "lead"."""
    for suffix in ("ers", "er", "es", "ed", "ing", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[:-len(suffix)]
    return word


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


def rrf_weighted(rankings: Sequence[tuple[Sequence[K], float]], k: int = 60) -> dict[K, float]:
    """Reciprocal rank fusion with a weight per ranking: ``sum(w / (k + rank))``."""
    out: dict[K, float] = {}
    for ranking, weight in rankings:
        for rank, item in enumerate(ranking, start=1):
            out[item] = out.get(item, 0.0) + weight / (k + rank)
    return out


def rrf(*rankings: Sequence[K], k: int = 60) -> dict[K, float]:
    """Reciprocal rank fusion: ``sum(1 / (k + rank))`` over the rankings an item appears in."""
    out: dict[K, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            out[item] = out.get(item, 0.0) + 1.0 / (k + rank)
    return out


@dataclass(frozen=True, slots=True)
class Ranking:
    """How hybrid search scores a candidate: a weighted sum of its keyword relevance (BM25), its
    embedding similarity (cosine) and, for a query naming someone, its cosine to the query without
    the names, each as a z-score among the candidates, and, for a question
    about the present ("now", "latest", "current"), how recent its valid time is among the
    candidates; the keyword retriever's best hit keeps a place in the top three. Keyword search
    uses the field weights only."""

    keyword: float = 0.5
    semantic: float = 0.5
    fusion: str = "zscore"
    """How the two scores are put on one scale before they are weighed: ``zscore`` (each as its
    distance from the candidates' mean in standard deviations, a missing one as the lowest; the
    sum then shifted so the worst candidate is 0), ``ratio`` (BM25 over the best candidate's,
    cosine between the worst and best), ``cosine`` (BM25 over the best's, the raw cosine),
    ``minmax`` (both between the worst and best) or ``rrf`` (each by its place:
    ``(rrf_k + 1) / (rrf_k + place)``). Candidates without any cosine (keyword search) are
    scored as ``ratio``. On the tuning split with MiniLM (hybrid recall@5): zscore 0.953,
    ratio 0.948, cosine 0.951, minmax 0.946, rrf 0.904-0.935; with the guard below, zscore
    0.960 and ratio 0.953."""
    rrf_k: int = 60
    """Reciprocal rank fusion's constant (``fusion="rrf"``): larger flattens the places."""
    validity: float = 0.1
    """Weight of valid-time recency when the query asks about the present ..."""
    validity_band: float = 0.1
    """... among the candidates scoring within this share of the best (the same fact's versions and
    rivals, not everything recent)."""
    text_weight: float = 1.0
    key_weight: float = 1.0
    meta_weight: float = 1.0
    """BM25 weights of the entry's text, its key and its metadata values (the FTS columns)."""
    guard: int = 1
    """In hybrid search, the keyword retriever's this many best hits keep a place among the first
    ``guard_at`` (0: off) ..."""
    guard_at: int = 3
    """... taking its last places when the fused order put them lower: the cosine of one
    person's entries differs little, so the entry that holds the asked word ("What is Dana's
    hobby?") could fall below its neighbours. Tuning split with MiniLM: zscore 0.953 to 0.960
    (``guard_at=5``: 0.957); with StaticEmbedder 0.881 to 0.877 (see docs/memory.md)."""
    unnamed: float = 0.3
    """In hybrid search of a query that names someone ("Which animal lives with Jana Novak?"), the
    weight of each candidate's cosine to the query without its names ("Which animal lives with?"),
    as a z-score beside the other two (``fusion="zscore"`` only): among one person's entries the
    name makes every cosine alike, and what is asked of them decides. That vector comes from a
    second text embedded in the same call as the query, or from the query's own encode
    (``unnamed_from``); 0: off. Grouped cross-validation on the tuning split (each
    question template left out in turn, MiniLM): hybrid recall@5 0.960 to 0.973, the only
    candidate that cleared +0.01 (see docs/memory.md)."""
    unnamed_from: str = "auto"
    """Where the vector of the query without its names comes from: ``tokens`` (from the query's own
    encode, :class:`~tether.memory.SpanEmbedder`: the mean of the other tokens' outputs, pushed away
    from the names' by ``unnamed_push``; an embedder without ``embed_spans`` falls back to ``text``),
    ``text`` (the query with its names cut out, embedded as a second text in the same call) or
    ``auto`` (``tokens`` without a push where that is exactly ``text``'s vector: an embedder whose
    ``spans_exact`` is true, a bag of tokens such as ``StaticEmbedder``; else ``text``). Grouped
    cross-validation on the tuning split with MiniLM (hybrid recall@5 by template): ``text`` 0.973,
    ``tokens`` 0.964 (push and weight chosen inside it; 0.955 without a push), so MiniLM embeds the
    second text by default; ``tokens`` saves it that second text (about 4 ms of CPU a query)."""
    unnamed_push: float = 1.0
    """``unnamed_from="tokens"``: the mean of the names' tokens' outputs (unit length) taken this many
    times from the other tokens' mean (unit length) before it is normalised again. A contextual
    encoder mixes the name into every token's output, and this pushes it out (tuning split, MiniLM,
    ``unnamed=0.3``: push 0 0.960, 0.5 0.964, 1 0.973, 2 0.973)."""
    entity: float = 0.3
    """In hybrid and keyword search, a candidate whose text names what the query names (two or more
    capitalised words: "Carl Novak") scores this share of the best candidate's score more (among
    look-alike names, "Ann Fischer" over "Anna Fischer"). Adopted with ``expand_similar`` in session 11:
    grouped cross-validation on the tuning split with its added multi-hop questions, MiniLM, hybrid
    recall@5 by template 0.861 (before) to 0.910 with both, 0.894 with ``expand_similar`` alone (see
    docs/memory.md); 0: off."""
    expand: bool = True
    """Multi-hop expansion: the new names the best hits bring are searched for in a second hop (see
    ``MemoryReads._second_hop``). On: on the tuning split it raised hybrid recall@5 from 0.899 to
    0.935 (multi-hop 0.50 to 0.91; MRR 0.847 to 0.845), above the 0.01 fixed before measuring."""
    expand_at: int = 4
    """The first hop keeps the places above this rank; the second hop's entries go in from here."""
    expand_from: int = 3
    """How many of the first hop's best hits may bring names to search in the second hop ..."""
    expand_slots: int = 2
    """... and how many of those names get a place (their best entry each)."""
    expand_evidence: bool = True
    """A hit brings names to the second hop only when it also holds a word the query asks about
    besides its names, in its text, key or metadata ("manages" or a key ``ann/manager`` for
    "Ann's manager"), so a question about the person is not sent to whoever their hits name.
    On: tuning split 0.935 to 0.948 (paraphrase 0.830 to 0.868); held-out 0.884 to 0.879
    (paraphrase 0.750 to 0.800, multi-hop 0.826 to 0.565: docs/memory.md). A shared word is one
    kind of evidence; ``expand_similar`` is the other (a word that means alike)."""
    expand_similar: float | None = None
    """In hybrid search, a hit that fails the evidence rule's shared word still brings its names when
    one of the query's content words and one of the hit's own (its text, key and metadata besides the
    names) have embeddings at least this similar (cosine of the single words, each embedded once and
    cached, see ``expand_words``): "supervisor" for the key ``ann/manager`` (MiniLM 0.67), where no
    word is shared; 0: off. The words that matched are left out of the second question and its pick.
    None (the default): the threshold of the embedder that embeds the words (its ``words_similar``;
    0.55 without one). MiniLM 0.55: grouped cross-validation on the tuning split by template 0.861 to
    0.894 (0.45-0.65 tried). The static table's words (``StaticEmbedder``, and
    ``AsymmetricEmbedder``'s document side) are less alike: 0.35, chosen by the same cross-validation
    with ``AsymmetricEmbedder`` (0.857 to 0.875; docs/memory.md)."""
    expand_words: str = "documents"
    """How the semantic test embeds its single words: ``documents`` by the embedder's document side
    (``embed``: for :class:`~tether.memory.AsymmetricEmbedder` the static table, a look-up, not
    MiniLM), ``queries`` as queries are (``embed_queries`` for a query embedder). The same for an
    embedder with one side (MiniLM, the static table)."""
    expand_deep: int = 20
    """With ``expand_similar``, how many of the first hop's best hits the semantic test looks through
    for a hit that bridges (at least ``expand_from``); such a hit found below the first hop's kept
    places goes just above the entry its name brings."""
    expand_embed: bool = True
    """In hybrid mode, embed each second-hop question ("Where does Ben Berg live?") and search it
    in both retrievers (one batched embedding for all of them); else keyword only."""
    expand_fusion: str = "places"
    """How the second hop's entries join the first hop's: ``places`` (the first hop keeps the places
    above ``expand_at``, each name's best entry takes the next ones) or ``score`` (every second-hop
    entry that names the new name scores ``expand_discount`` times its bridging hit's score times
    its own score in the second hop, each normalised to its hop's best, and all are sorted
    together)."""
    expand_discount: float = 0.8
    """``expand_fusion="score"``: what a second-hop entry's score is worth against the first hop's."""
    expand_query: str = "swap"
    """The second question: ``swap`` (the query with "<name>'s <relation>" replaced by the new name,
    or the new name and the query's remaining words when it has no possessive) or ``rest`` (the new
    name and the query's words its bridging hit does not hold in its text, key or metadata)."""

    late: float = 1.0
    """In hybrid search with an embedder that gives token vectors (:class:`~tether.memory.LateEmbedder`:
    ``StaticEmbedder``, ``AsymmetricEmbedder``; MiniLM and remote embedders do not), the weight of each
    candidate's late-interaction score as a z-score beside the others (``fusion="zscore"`` only): the mean
    over the query's tokens (``late_tokens``) of each one's best cosine among the candidate's tokens
    (MaxSim; the candidate's tokens are the static table's rows, the query's MiniLM's token outputs
    projected into the table's space for ``AsymmetricEmbedder``, its table rows for ``StaticEmbedder``);
    0: off. Grouped cross-validation on the tuning split (session 12, 36 settings of these four fields),
    hybrid recall@5 by template: asymmetric 0.877 to 0.901 (by kind 0.883), static 0.819 to 0.839 (by
    kind 0.848); this setting is the asymmetric pair's best on the whole tuning split (docs/memory.md)."""
    late_tokens: str = "all"
    """Which query tokens late interaction averages over: ``all``, ``content`` (the content words' tokens:
    no stopwords or punctuation) or ``asked`` (those of the content words that are not the query's names)."""
    late_sif: bool = True
    """Weigh each query token by its SIF weight (rare tokens count more) instead of equally."""
    late_fields: str = "all"
    """The candidate's tokens late interaction reads: its ``text``, or ``all`` (its text, key and metadata,
    the fields keyword search reads: the key ``ann-borg/city`` holds what "Which town...?" asks)."""

    model: tuple[float, ...] | None = None
    """A linear re-ranking model (the bias, then one weight per :data:`FEATURES`) that re-orders the
    first ``model_top`` candidates after both hops; None: off."""
    model_top: int = 30
    """How many of the best candidates the model re-orders."""
    def __post_init__(self) -> None:
        if self.model is not None and len(self.model) != len(FEATURES) + 1:
            raise ValueError(f"Ranking.model must hold {len(FEATURES) + 1} numbers (the bias, then one weight per "
                             f"feature of tether.memory._rank.FEATURES), got {len(self.model)}")
        if self.expand_fusion not in ("places", "score"):
            raise ValueError(f"Ranking.expand_fusion must be 'places' or 'score', got {self.expand_fusion!r}")
        if self.unnamed_from not in ("auto", "tokens", "text"):
            raise ValueError(f"Ranking.unnamed_from must be 'auto', 'tokens' or 'text', got {self.unnamed_from!r}")
        if isinstance(self.unnamed_push, bool) or not isinstance(self.unnamed_push, int | float) \
                or not 0 <= self.unnamed_push < math.inf:
            raise ValueError(f"Ranking.unnamed_push must be a number >= 0, got {self.unnamed_push!r}")
        if self.late_fields not in ("text", "all"):
            raise ValueError(f"Ranking.late_fields must be 'text' or 'all', got {self.late_fields!r}")
        if self.late_tokens not in ("all", "content", "asked"):
            raise ValueError(f"Ranking.late_tokens must be 'all', 'content' or 'asked', got {self.late_tokens!r}")
        if isinstance(self.late, bool) or not isinstance(self.late, int | float) or not 0 <= self.late < math.inf:
            raise ValueError(f"Ranking.late must be a number >= 0, got {self.late!r}")
        if self.expand_words not in ("documents", "queries"):
            raise ValueError(f"Ranking.expand_words must be 'documents' or 'queries', got {self.expand_words!r}")
        if self.expand_query not in ("swap", "rest"):
            raise ValueError(f"Ranking.expand_query must be 'swap' or 'rest', got {self.expand_query!r}")
        if self.fusion not in ("zscore", "ratio", "cosine", "minmax", "rrf"):
            raise ValueError(f"Ranking.fusion must be 'zscore', 'ratio', 'cosine', 'minmax' or 'rrf', "
                             f"got {self.fusion!r}")
        if self.expand_similar is not None and (isinstance(self.expand_similar, bool) or not isinstance(
                self.expand_similar, int | float) or not 0 <= self.expand_similar <= 1):
            raise ValueError(f"Ranking.expand_similar must be a number from 0 to 1 or None (the embedder's), "
                             f"got {self.expand_similar!r}")
        for name in ("guard", "guard_at", "model_top", "expand_deep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Ranking.{name} must be an int >= 0, got {value!r}")
        if isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, int) or self.rrf_k < 0:
            raise ValueError(f"Ranking.rrf_k must be an int >= 0, got {self.rrf_k!r}")


@dataclass(slots=True)
class Candidate:
    """One entry's scores as hybrid search gathered them (None: that retriever did not return it)."""

    bm25: float | None
    cosine: float | None
    valid: float
    """The entry's valid time (its ``valid_from``, else when it was written), epoch seconds."""
    unnamed: float | None = None
    """Its cosine similarity to the query with the query's names left out (``Ranking.unnamed``)."""
    late: float | None = None
    """Its late-interaction score against the query's tokens (``Ranking.late``)."""


def _ranks(values: Sequence[float | None]) -> list[int | None]:
    """Each value's place among the present ones, best (highest) first, from 1."""
    order = sorted((i for i, v in enumerate(values) if v is not None), key=lambda i: -(values[i] or 0.0))
    out: list[int | None] = [None] * len(values)
    for place, i in enumerate(order, start=1):
        out[i] = place
    return out


def _zscores(values: Sequence[float | None]) -> list[float]:
    """Each value's distance from the present values' mean in standard deviations (a missing one
    counts as the lowest present value)."""
    present = [v for v in values if v is not None]
    if not present:
        return [0.0] * len(values)
    mean = sum(present) / len(present)
    sd = math.sqrt(sum((v - mean) ** 2 for v in present) / len(present)) or 1.0
    low = min(present)
    return [((v if v is not None else low) - mean) / sd for v in values]


def guard(order: Sequence[K], keyword_first: Sequence[K], *, top: int, at: int) -> list[K]:
    """``order`` with the keyword retriever's ``top`` best (``keyword_first``) kept among its first
    ``at`` places: those below move up to the last places of the ``at``, in their keyword order."""
    if top <= 0 or at <= 0:
        return list(order)
    head = set(order[:at])
    lifted = [p for p in keyword_first[:top] if p not in head]
    if not lifted:
        return list(order)
    rest = [p for p in order if p not in lifted]
    cut = max(at - len(lifted), 0)
    return [*rest[:cut], *lifted, *rest[cut:]]


def fuse(candidates: Sequence[Candidate], ranking: Ranking, *, present: bool) -> list[float]:
    """The hybrid score of each candidate (see :class:`Ranking`)."""
    cosines = [c.cosine for c in candidates if c.cosine is not None]
    lo, hi = (min(cosines), max(cosines)) if cosines else (0.0, 1.0)
    span = (hi - lo) or 1.0
    out = []
    if ranking.fusion == "rrf":
        k = ranking.rrf_k
        by_bm, by_cos = _ranks([c.bm25 for c in candidates]), _ranks([c.cosine for c in candidates])
        for a, b in zip(by_bm, by_cos, strict=True):
            out.append((ranking.keyword * (k + 1) / (k + a) if a else 0.0)
                       + (ranking.semantic * (k + 1) / (k + b) if b else 0.0))
    elif ranking.fusion == "zscore" and cosines:
        bz, cz = _zscores([c.bm25 for c in candidates]), _zscores([c.cosine for c in candidates])
        out = [ranking.keyword * a + ranking.semantic * b for a, b in zip(bz, cz, strict=True)]
        if ranking.unnamed and any(c.unnamed is not None for c in candidates):
            uz = _zscores([c.unnamed for c in candidates])
            out = [s + ranking.unnamed * u for s, u in zip(out, uz, strict=True)]
        if ranking.late and any(c.late is not None for c in candidates):
            lz = _zscores([c.late for c in candidates])
            out = [s + ranking.late * x for s, x in zip(out, lz, strict=True)]
        low = min(out)
        out = [s - low for s in out]  # the worst candidate at 0: recency and validity scale what is above it
    elif ranking.fusion == "cosine":
        bms = [c.bm25 for c in candidates if c.bm25 is not None]
        best_bm = max(bms, default=0.0) or 1.0
        out = [ranking.keyword * ((c.bm25 or 0.0) / best_bm) + ranking.semantic * (c.cosine or 0.0)
               for c in candidates]
    else:
        bms = [c.bm25 for c in candidates if c.bm25 is not None]
        best_bm = max(bms, default=0.0) or 1.0
        floor = min(bms) if bms and ranking.fusion == "minmax" else 0.0
        bm_span = (best_bm - floor) or 1.0
        for c in candidates:
            score = ranking.keyword * (((c.bm25 - floor) / bm_span) if c.bm25 is not None else 0.0)
            score += ranking.semantic * (((c.cosine - lo) / span) if c.cosine is not None else 0.0)
            out.append(score)
    if present and out:
        floor = max(out) * (1.0 - ranking.validity_band)
        times = sorted({c.valid for c, s in zip(candidates, out, strict=True) if s >= floor})
        rank = {t: i / max(1, len(times) - 1) for i, t in enumerate(times)}
        out = [s + ranking.validity * rank[c.valid] if s >= floor else s
               for c, s in zip(candidates, out, strict=True)]
    return out


_PRESENT = re.compile(r"\b(now|nowadays|current(ly)?|latest|newest|most recent|these days|at the moment|today|"
                      r"at present|presently)\b", re.IGNORECASE)
_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_name) if m}
_MONTHS.update({m.lower(): i for i, m in enumerate(calendar.month_abbr) if m})
_BEFORE = re.compile(r"\b(?:before|until|prior to|till)\s+(?:(?:the\s+)?(\d{1,2})(?:st|nd|rd|th)?\s+)?"
                     r"([A-Za-z]{3,9})\.?(?:\s+(\d{4}))?\b|\b(?:before|until|prior to|in)\s+(\d{4})\b",
                     re.IGNORECASE)


def temporal(query: str, now: float) -> tuple[datetime | None, bool]:
    """What a query says about time: the moment it asks about ("before March": the last instant
    before the latest 1 March not after ``now``; "before 2025": the end of 2024), and whether it
    asks about the present ("now", "latest", "currently")."""
    at: datetime | None = None
    today = datetime.fromtimestamp(now, UTC)
    for found in _BEFORE.finditer(query):
        day, month, year, only_year = found.groups()
        if only_year:
            at = datetime(int(only_year), 1, 1, tzinfo=UTC)
            break
        number = _MONTHS.get((month or "").lower())
        if number is None:
            continue
        when = datetime(int(year) if year else today.year, number, int(day) if day else 1, tzinfo=UTC)
        if not year and when > today:
            when = when.replace(year=today.year - 1)
        at = when
        break
    if at is not None:
        at = datetime.fromtimestamp(at.timestamp() - 1e-3, UTC)
    return at, at is None and _PRESENT.search(query) is not None


FEATURES = ("fused", "place", "bm25_z", "cosine_z", "cosine", "keyword", "keyword_place", "semantic_place",
            "text_cover", "key_cover", "meta_cover", "recency", "valid_rank", "present_valid", "hop2", "hop2_only",
            "names_asked", "names_other")
"""What the re-ranking model weighs for each of the top candidates (:func:`features`)."""


@dataclass(slots=True)
class Features:
    """What one candidate brings to the re-ranking model, as search gathered it."""

    bm25: float | None
    cosine: float | None
    keyword_place: int | None
    semantic_place: int | None
    valid: float
    recency: float
    text: str
    key: str
    meta: str
    fused: float | None
    """Its first-hop score over the best's (None: only the second hop found it)."""
    hop2: float | None
    """Its second-hop score (discounted, over the first hop's best), None if the second hop did not bring it."""


def _cover(asked: frozenset[str], text: str) -> float:
    if not asked:
        return 0.0
    return len(asked & {stem(w) for w in words(text)}) / len(asked)


def features(query_words: Sequence[str], asked_names: Sequence[str], present: bool,
             candidates: Sequence[Features]) -> list[list[float]]:
    """Each candidate's feature vector (see :data:`FEATURES`): its scores, where each retriever placed
    it, the share of the query's words its text, key and metadata hold, recency and valid time, the
    second hop's score, and whether it names the query's names or other ones. Generic features only:
    nothing names a template's words."""
    own = {w for name in asked_names for w in words(name)}
    asked = frozenset(stem(w) for w in query_words if w not in STOPWORDS and w not in own and len(w) > 1)
    lowered = [n.lower() for n in asked_names]
    bz = _zscores([c.bm25 for c in candidates])
    cz = _zscores([c.cosine for c in candidates]) if any(c.cosine is not None for c in candidates) \
        else [0.0] * len(candidates)
    times = sorted({c.valid for c in candidates})
    valid_rank = {t: i / max(1, len(times) - 1) for i, t in enumerate(times)}
    out = []
    for place, c in enumerate(candidates, start=1):
        text = c.text.lower()
        named = bool(lowered) and any(n in text for n in lowered)
        others = any(n.lower() not in lowered for n in names(c.text))
        out.append([
            c.fused or 0.0, 1.0 / place, bz[place - 1], cz[place - 1], c.cosine or 0.0, float(c.bm25 is not None),
            1.0 / c.keyword_place if c.keyword_place else 0.0, 1.0 / c.semantic_place if c.semantic_place else 0.0,
            _cover(asked, c.text), _cover(asked, c.key.replace("/", " ").replace("-", " ")), _cover(asked, c.meta),
            c.recency, valid_rank[c.valid], valid_rank[c.valid] if present else 0.0,
            c.hop2 or 0.0, float(c.fused is None), float(named), float(others)])
    return out


_NAME = re.compile(r"\b[A-Z][\w'-]*[a-z][\w'-]*(?:\s+[A-Z][\w-]*[a-z][\w-]*)+")
_NOT_NAMES = frozenset(m.lower() for m in (*calendar.month_name, *calendar.month_abbr) if m) | STOPWORDS


def names(text: str) -> list[str]:
    """Two or more capitalised words in a row ("Ann Fischer's" -> "Ann Fischer"), leaving out
    stopwords and months ("Since March 2026 Ann Borg" -> "Ann Borg")."""
    out = []
    for found in _NAME.findall(text):
        parts = [w for w in re.sub(r"'s$", "", found).split() if w.lower() not in _NOT_NAMES]
        if len(parts) >= 2:
            out.append(" ".join(parts))
    return list(dict.fromkeys(out))


def content_words(text: str, leave_out: Iterable[str] = ()) -> list[str]:
    """The words of a text that can say what it is about: not stopwords, digits or ``leave_out``
    (a query's or a hit's names), three letters or more, once each, in order."""
    out = set(leave_out)
    return list(dict.fromkeys(w for w in words(text) if w not in STOPWORDS and w not in out and len(w) > 2
                              and not w.isdigit()))


def similar_words(asked: Mapping[str, Sequence[float]], held: Mapping[str, Sequence[float]], at: float
                  ) -> frozenset[str]:
    """The words of both sides in a pair whose (unit) vectors have a cosine of at least ``at``:
    a query's words and a hit's that mean alike ("supervisor", "manager"); empty: none."""
    out: set[str] = set()
    for a, u in asked.items():
        for b, v in held.items():
            if sum(x * y for x, y in zip(u, v, strict=True)) >= at:
                out.update((a, b))
    return frozenset(out)


def score(model: Sequence[float], rows: Sequence[Sequence[float]]) -> list[float]:
    """A linear model's score of each feature vector (``model``: the bias, then one weight per feature)."""
    return [model[0] + sum(w * x for w, x in zip(model[1:], row, strict=True)) for row in rows]
